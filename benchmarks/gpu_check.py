"""One GPU, one command, under ten minutes: does a1jax run there as planned? (launch/gpu/check.sh)

    python benchmarks/gpu_check.py [--gpu h200-141gb] [--cases losses,bench,slice] [--out DIR]

Each case runs benchmarks/train_step.py in its own process:
- losses: `tiny` in fp32 (matmuls at full precision), 3 optimizer steps on a fixed batch, on
  this machine's CPU and on the GPU: the same losses to within --tolerance (relative).
- bench: the `bench` model's train step in bf16 on the GPU: tokens/s, MFU against the GPU's
  dense bf16 rate (a1jax.targets), the real peak device memory, beside XLA:GPU's plan for the
  same program compiled without a GPU (`train_step.py --target`, JAX on the CPU).
- slice: the 35B at full width cut to its first 4 layers (one of each layer pattern's period),
  bf16, full remat, one 16,384-token sequence: the same figures.
The report (a table) goes to stdout and DIR/gpu_check.md. Exit 1 if a case failed.
`--device-platform cpu` runs the "GPU" side on the CPU too (what the tests do: argument
handling and the CPU reference, with no GPU).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "train_step.py")
CASES = {
    "losses": ["--model", "tiny", "--dtype", "float32", "--batch", "2", "--seq", "256",
               "--steps", "3", "--precision", "highest"],
    "bench": ["--model", "bench", "--dtype", "bfloat16", "--batch", "8", "--seq", "4096",
              "--steps", "5"],
    "slice": ["--model", "agents_a1_35b", "--layers", "4", "--dtype", "bfloat16", "--remat",
              "full", "--batch", "1", "--seq", "16384", "--steps", "3"],
}


class CheckError(Exception):
    pass


def parse_result(stdout: str) -> dict[str, str]:
    """The `a1jax k=v ...` line a train_step.py run ends with."""
    lines = [line for line in stdout.splitlines() if line.startswith("a1jax ")]
    if not lines:
        raise CheckError("no result line (a1jax k=v ...) in the run's output")
    return dict(kv.split("=", 1) for kv in lines[-1].split()[1:])


def compare_losses(reference: list[float], other: list[float], tolerance: float) -> float:
    """Largest relative difference; raises CheckError past `tolerance` or on unequal counts."""
    if len(reference) != len(other) or not reference:
        raise CheckError(f"{len(reference)} reference losses against {len(other)}")
    worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(reference, other))
    if worst > tolerance:
        raise CheckError(f"losses differ by {worst:.2e} (relative) > {tolerance:.0e}: "
                         f"{reference} vs {other}")
    return worst


def run(args: list[str], platform: str, timeout: float) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS=platform, TF_CPP_MIN_LOG_LEVEL="2")
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=timeout)
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise CheckError(f"train_step.py {' '.join(args)} on {platform} failed "
                         f"(exit {proc.returncode}):\n{tail}")
    out = parse_result(proc.stdout)
    out["seconds"] = f"{time.perf_counter() - began:.0f}"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpu", default="h200-141gb", help="the GPU's a1jax.targets name (its "
                   "datasheet rate for MFU, and the plan's target)")
    p.add_argument("--cases", default="losses,bench,slice")
    p.add_argument("--tolerance", type=float, default=2e-3)
    p.add_argument("--device-platform", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--timeout", type=float, default=300, help="seconds per run")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown or not cases:
        p.error(f"--cases: unknown {unknown}; choose from {', '.join(CASES)}")
    from a1jax import targets
    try:
        targets.get(args.gpu)
    except targets.TargetError as e:
        p.error(f"--gpu: {e}")

    lines, failed = [], 0
    for case in cases:
        print(f"[check] {case} ...", file=sys.stderr, flush=True)
        try:
            if case == "losses":
                cpu = run(CASES[case], "cpu", args.timeout)
                dev = run(CASES[case], args.device_platform, args.timeout)
                ref = [float(x) for x in cpu["losses"].split(",")]
                got = [float(x) for x in dev["losses"].split(",")]
                worst = compare_losses(ref, got, args.tolerance)
                lines.append(f"| losses (tiny fp32, {len(ref)} steps) | CPU "
                             f"{', '.join(f'{x:.5f}' for x in ref)} | {args.device_platform} "
                             f"{', '.join(f'{x:.5f}' for x in got)} | max relative difference "
                             f"{worst:.1e}: PASS |")
                continue
            dev = run(CASES[case] + ["--peak", args.gpu], args.device_platform, args.timeout)
            planned = run(CASES[case] + ["--target", args.gpu], "cpu", args.timeout)
            real, plan = int(dev["peak_bytes"]), int(planned["plan_peak_bytes"])
            lines.append(f"| {case} | {float(dev['tokens_per_s']):,.0f} tokens/s, MFU "
                         f"{float(dev['mfu']):.3f} of {args.gpu} bf16 | peak "
                         f"{real / 2**30:.2f} GiB (real) | {plan / 2**30:.2f} GiB (planned "
                         f"without a GPU), real/planned {real / max(plan, 1):.2f} |")
        except (CheckError, subprocess.TimeoutExpired) as e:
            failed += 1
            lines.append(f"| {case} | FAILED: {str(e).splitlines()[0]} | | |")
            print(str(e), file=sys.stderr)
    report = "\n".join(["| case | result | | |", "|---|---|---|---|", *lines])
    print(report)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
            f.write(report + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
