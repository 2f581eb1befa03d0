"""a1jax against transformers on the same model, batch and AdamW step, side by side: rounds of
benchmarks/train_step.py (one device) and benchmarks/train_step_transformers.py, each in its own
process, alternating, then the ratio of tokens/s and the peak RSS of each.

    python benchmarks/compare_transformers.py --rounds 4            # bench, batch 4 x 1024
    python benchmarks/compare_transformers.py --rounds 2 --steps 3 --model tiny --seq 256

On a shared 2-core machine the speed of both moves by 20-40% from one minute to the next
(docs/performance.md), so only runs made close together compare: each round runs the two
back to back, in turn first, and the ratio is taken per round. The last line reads
`compare ratio_median=R ratio_min=M a1jax_peak_gib_max=A transformers_peak_gib_min=T`
(the highest a1jax peak RSS of the rounds and the lowest transformers one).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import statistics
import subprocess
import sys
from typing import Callable, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


@dataclasses.dataclass(frozen=True)
class Run:
    tokens_per_s: float
    peak_gib: float
    first_loss: float


def parse_a1jax(out: str) -> Run:
    """The run's figures from benchmarks/train_step.py's output (its last line, and the peak RSS
    on the line before it)."""
    last = re.search(r"^a1jax tokens_per_s=(\d+) mfu=[\d.]+ first_loss=(\S+)", out, re.M)
    peak = re.search(r"peak RSS ([\d.]+) GiB", out)
    if last is None or peak is None:
        raise ValueError(f"no a1jax result in its output:\n{out[-2000:]}")
    return Run(float(last.group(1)), float(peak.group(1)), float(last.group(2)))


def parse_transformers(out: str) -> Run:
    last = re.search(r"^transformers tokens_per_s=(\d+) peak_rss_gib=([\d.]+) loss=(\S+)$",
                     out, re.M)
    if last is None:
        raise ValueError(f"no transformers result in its output:\n{out[-2000:]}")
    return Run(float(last.group(1)), float(last.group(2)), float(last.group(3)))


def commands(args: argparse.Namespace) -> dict[str, list[str]]:
    shape = ["--model", args.model, "--batch", str(args.batch), "--seq", str(args.seq),
             "--steps", str(args.steps)]
    return {"a1jax": [sys.executable, os.path.join(HERE, "train_step.py"), *shape,
                      "--devices", "1"],
            "transformers": [sys.executable, os.path.join(HERE, "train_step_transformers.py"),
                             *shape]}


def run_process(cmd: Sequence[str]) -> str:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # train_step.py sets the device count itself
    env["JAX_PLATFORMS"] = "cpu"  # the peer runs on the CPU: so does a1jax, on the same cores
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n"
                           f"{result.stderr[-3000:]}")
    return result.stdout


def compare(args: argparse.Namespace, run: Callable[[Sequence[str]], str] = run_process,
            log: Callable[[str], None] = print) -> dict[str, float]:
    """Alternating rounds; a1jax first in odd rounds, transformers first in even ones."""
    cmds = commands(args)
    parse = {"a1jax": parse_a1jax, "transformers": parse_transformers}
    ratios, peaks = [], {"a1jax": [], "transformers": []}
    log("| round | a1jax tokens/s | transformers tokens/s | ratio | peak RSS a1jax / "
        "transformers (GiB) |")
    log("|---|---|---|---|---|")
    for i in range(args.rounds):
        order = ["a1jax", "transformers"] if i % 2 == 0 else ["transformers", "a1jax"]
        got = {name: parse[name](run(cmds[name])) for name in order}
        a, t = got["a1jax"], got["transformers"]
        ratios.append(a.tokens_per_s / t.tokens_per_s)
        for name in peaks:
            peaks[name].append(got[name].peak_gib)
        log(f"| {i + 1} | {a.tokens_per_s:,.0f} | {t.tokens_per_s:,.0f} | {ratios[-1]:.2f}x | "
            f"{a.peak_gib:.2f} / {t.peak_gib:.2f} |")
    summary = {"ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
               "a1jax_peak_gib_max": max(peaks["a1jax"]),
               "transformers_peak_gib_min": min(peaks["transformers"])}
    log(f"a1jax is {summary['ratio_median']:.2f}x transformers' tokens/s (median of "
        f"{args.rounds} rounds; lowest {summary['ratio_min']:.2f}x); peak RSS at most "
        f"{summary['a1jax_peak_gib_max']:.2f} GiB against at least "
        f"{summary['transformers_peak_gib_min']:.2f} GiB")
    log("compare " + " ".join(f"{k}={v:.2f}" for k, v in summary.items()))
    return summary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bench")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be at least 1")
    return args


if __name__ == "__main__":
    try:
        compare(parse_args())
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
