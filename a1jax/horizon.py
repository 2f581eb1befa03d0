r"""Horizon versus parameters, in miniature: train models on the same number of tokens that
differ only in the horizons of their training trajectories (or only in size), then measure
success on held-out tasks at horizons up to beyond the longest trained one.

    python -m a1jax.horizon --workdir runs/horizon [--budget-tokens 5000000] [--seeds 3] \
        [--conditions short,curriculum,mixed,short_large] [--domains calculator] \
        [--eval-horizons 1,2,4,8,16,32] [--eval-n 8] [--eval-runs 3] [--smoke]

The conditions are experiments/horizon/study.py's. Each (condition, training seed) is a cell:
its parts trained in order (WORKDIR/cells/COND/seed-S/part-K, `a1jax.train`'s workdirs), then its
final weights evaluated by `a1jax.eval` at each horizon H (WORKDIR/eval/COND/seed-S/hH; tasks
from the held-out task seeds, sampled with the release settings, `--eval-runs` runs per task,
at most 2H + 6 turns). Rerunning the same command after any interruption (kill -9 included)
skips what is finished and resumes the rest; a rerun with other settings is refused.

Writes WORKDIR/horizon.csv (one row per condition and evaluation horizon: the mean success over
training seeds, a 95% t-interval over those seeds, each seed's value), horizon.md (the table)
and horizon.png (success against evaluation horizon, one line per condition, intervals shaded).
A seed's success at a horizon is its mean over domains of Avg@runs; the interval is over seeds
only, so it measures how much training varies, not how noisy one model's evaluation is.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from typing import Any, Sequence

import numpy as np

from a1jax import cli
from a1jax.curriculum import REPO, load_experiment
from a1jax.errors import A1Error

STUDY_FILE = os.path.join(REPO, "experiments", "horizon", "study.py")
MAX_CONTEXT = 8192  # the evaluation's cache: a horizon-32 episode of any domain fits
MAX_TURN_TOKENS = 160  # a reference turn is under 100 tokens


def max_turns(horizon: int) -> int:
    """The evaluation's turn budget at `horizon`: room for every step's call, retries and the
    answer (a reference trajectory takes at most 1.7 H + 3 turns)."""
    return 2 * horizon + 6


def _study_module():
    import importlib.util

    from a1jax.experiment_flags import add_experiments_to_path
    add_experiments_to_path(["--config", STUDY_FILE])
    spec = importlib.util.spec_from_file_location("a1jax_horizon_study", STUDY_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The study's settings, checked; what a rerun must repeat."""
    study = _study_module()
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = [c for c in conditions if c not in study.CONDITIONS]
    if not conditions or unknown:
        raise A1Error(f"--conditions {args.conditions!r}: known conditions are "
                      f"{', '.join(study.CONDITIONS)}")
    from a1jax import experiment
    domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    bad = [d for d in domains if d not in experiment.DOMAINS]
    if not domains or bad:
        raise A1Error(f"--domains {args.domains!r}: known domains are "
                      f"{', '.join(experiment.DOMAINS)}")
    from a1jax.eval import _ints
    horizons = _ints(args.eval_horizons, "--eval-horizons")
    if args.seeds < 2:
        raise A1Error(f"--seeds {args.seeds}: an interval over training seeds needs at least 2")
    if args.budget_tokens < 1 or args.eval_n < 1 or args.eval_runs < 1:
        raise A1Error("--budget-tokens, --eval-n and --eval-runs must be >= 1")
    return {"conditions": conditions, "seeds": list(range(args.seeds)),
            "budget_tokens": args.budget_tokens, "domains": domains,
            "eval_horizons": horizons, "eval_n": args.eval_n, "eval_runs": args.eval_runs,
            "eval_seed": 0, "smoke": args.smoke}


def cell_configs(condition: str, seed: int, settings: dict[str, Any], workdir: str) -> list:
    """The training parts of one cell, in order, each (after the first) starting from the
    previous part's final parameters."""
    study = _study_module()
    out = []
    for part in range(len(study.parts(condition))):
        arg = (f"condition={condition},part={part},seed={seed},"
               f"budget={settings['budget_tokens']},domains={'+'.join(settings['domains'])},"
               f"smoke={settings['smoke']}")
        c = load_experiment(STUDY_FILE, arg)
        if part:
            c.init_from = part_dir(workdir, condition, seed, part - 1)
        out.append(c)
    return out


def part_dir(workdir: str, condition: str, seed: int, part: int) -> str:
    return os.path.join(workdir, "cells", condition, f"seed-{seed}", f"part-{part}")


def eval_dir(workdir: str, condition: str, seed: int, horizon: int) -> str:
    return os.path.join(workdir, "eval", condition, f"seed-{seed}", f"h{horizon}")


def configs_digest(settings: dict[str, Any]) -> str:
    """A digest of every training config of the study and of the evaluation's budgets: an
    edit of experiments/horizon/study.py (a learning rate, a schedule) changes it."""
    import hashlib

    configs = []
    for cond in settings["conditions"]:
        for seed in settings["seeds"]:
            for c in cell_configs(cond, seed, settings, ""):
                configs.append(json.loads(c.to_json()))
    evaluation = {"max_context": MAX_CONTEXT, "max_turn_tokens": MAX_TURN_TOKENS,
                  "max_turns": [max_turns(h) for h in settings["eval_horizons"]]}
    text = json.dumps([configs, evaluation], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _claim_settings(workdir: str, settings: dict[str, Any]) -> None:
    """Records the study's settings in WORKDIR/study.json, or checks them against the ones
    there: a study resumes only with the settings it was started with. A setting the file does
    not have (written before a1jax recorded it) is added."""
    settings = dict(settings, configs=configs_digest(settings))
    path = os.path.join(workdir, "study.json")
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        changed = sorted(k for k in before if before[k] != settings.get(k))
        if changed:
            k = changed[0]
            what = ("experiments/horizon/study.py's training configs or the evaluation budgets"
                    if k == "configs" else f"{k}={before[k]!r}, not {settings.get(k)!r}")
            raise A1Error(f"{workdir} holds a study with other settings ({what}): use another "
                          "--workdir or the same settings")
        if set(settings) - set(before):
            cli.write_json(path, settings)
        return
    os.makedirs(workdir, exist_ok=True)
    cli.write_json(path, settings)


class Clock:
    """Seconds spent on each piece of work that finished in one go, kept in
    WORKDIR/timings.json so that the total survives interruptions (a piece interrupted and
    resumed counts from its resumption)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "timings.json")
        self.spent: dict[str, float] = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.spent = json.load(f)

    def add(self, key: str, seconds: float) -> None:
        self.spent[key] = self.spent.get(key, 0.0) + seconds
        cli.write_json(self.path, self.spent)

    def total(self) -> float:
        return sum(self.spent.values())


def evaluate(model_dir: str, out: str, horizon: int, settings: dict[str, Any]) -> None:
    """`a1jax.eval` of `model_dir` at one horizon into `out` (resumes from its episodes)."""
    from a1jax import eval as eval_cli

    eval_cli.main(["--model", model_dir, "--out", out, "--domains", ",".join(settings["domains"]),
                   "--horizons", str(horizon), "--n", str(settings["eval_n"]),
                   "--runs", str(settings["eval_runs"]), "--seed", str(settings["eval_seed"]),
                   "--batch", str(settings["eval_n"] * len(settings["domains"])),
                   "--max-turns", str(max_turns(horizon)),
                   "--max-turn-tokens", str(MAX_TURN_TOKENS),
                   "--max-context", str(MAX_CONTEXT)])


def run_cells(workdir: str, settings: dict[str, Any]) -> Clock:
    """Trains and evaluates every cell not yet done."""
    from a1jax.train import runner

    cells = [(cond, seed) for seed in settings["seeds"] for cond in settings["conditions"]]
    configs = {cell: cell_configs(*cell, settings, workdir) for cell in cells}
    for (cond, seed), parts in configs.items():  # every config, before the first compile
        for k, c in enumerate(parts):
            runner.check(c, part_dir(workdir, cond, seed, k), check_init=k == 0)
    clock = Clock(workdir)
    for n, (cond, seed) in enumerate(cells, 1):
        parts = configs[(cond, seed)]
        for k, c in enumerate(parts):
            where = part_dir(workdir, cond, seed, k)
            print(f"\n== [{n}/{len(cells)}] {cond}, seed {seed}, part {k + 1} of {len(parts)} "
                  f"(horizons {c.data.horizon_min}-{c.data.horizon_max}): {where}", flush=True)
            if k:
                _check_source(where, part_dir(workdir, cond, seed, k - 1))
            start = time.perf_counter()
            summary = runner.run(c, where)
            if summary["status"] == "preempted":
                raise A1Error(f"{cond} seed {seed} part {k + 1} stopped at step "
                              f"{summary['steps']} (checkpoint written); rerun the same command "
                              "to resume")
            if summary["status"] != "already finished":
                clock.add(f"train/{cond}/seed-{seed}/part-{k}", time.perf_counter() - start)
        final = part_dir(workdir, cond, seed, len(parts) - 1)
        for horizon in settings["eval_horizons"]:
            out = eval_dir(workdir, cond, seed, horizon)
            if os.path.exists(os.path.join(out, "results.json")):
                _check_source(out, final)
                print(f"== {cond}, seed {seed}, horizon {horizon}: evaluated, skipped")
                continue
            print(f"\n== [{n}/{len(cells)}] {cond}, seed {seed}: evaluating at horizon "
                  f"{horizon}: {out}", flush=True)
            _check_source(out, final)
            start = time.perf_counter()
            evaluate(final, out, horizon, settings)
            clock.add(f"eval/{cond}/seed-{seed}/h{horizon}", time.perf_counter() - start)
    return clock


def _check_source(where: str, source: str) -> None:
    """`where` is built on the finished run `source` (a part on the part before it, an
    evaluation on the cell's last part): the first time, record which run it was (its
    summary); later, refuse when `source` has been trained again since, which would leave
    `where` built on weights that no longer exist."""
    with open(os.path.join(source, "summary.json")) as f:
        summary = json.load(f)
    mark = {k: summary.get(k) for k in ("checkpoint", "fingerprint", "seconds", "train_loss")}
    path = os.path.join(where, "source.json")
    if os.path.exists(path):
        with open(path) as f:
            if json.load(f) != mark:
                raise A1Error(f"{where} was made from an earlier run of {source}, which has been "
                              f"trained again since: remove {where} and rerun")
        return
    os.makedirs(where, exist_ok=True)
    cli.write_json(path, mark)


def seed_success(workdir: str, settings: dict[str, Any]
                 ) -> dict[tuple[str, int, int], tuple[float, float]]:
    """(condition, seed, horizon) -> that seed's success (the mean over domains of Avg@runs)
    and its mean turns per episode (over domains too)."""
    out = {}
    for cond in settings["conditions"]:
        for seed in settings["seeds"]:
            for horizon in settings["eval_horizons"]:
                with open(os.path.join(eval_dir(workdir, cond, seed, horizon),
                                       "results.json")) as f:
                    results = json.load(f)
                key = f"avg@{results['runs']}"
                values = [r[key] for r in results["rows"] if r["horizon"] == horizon]
                if len(values) != len(settings["domains"]):
                    raise A1Error(f"{eval_dir(workdir, cond, seed, horizon)}: results for "
                                  f"{len(values)} domains, expected {len(settings['domains'])}")
                turns = [r["turns"] for r in results["rows"] if r["horizon"] == horizon]
                out[(cond, seed, horizon)] = (float(np.mean(values)), float(np.mean(turns)))
    return out


def reference_turns(settings: dict[str, Any]) -> dict[int, float]:
    """Horizon -> mean assistant turns of the reference trajectories of the evaluated tasks:
    what a model that carries every task through takes."""
    from a1jax.agent.environment import make_task
    from a1jax.eval import eval_seed

    out = {}
    for h in settings["eval_horizons"]:
        counts = [sum(m["role"] == "assistant" for m in make_task(
            d, h, eval_seed(settings["eval_seed"]), i).reference["messages"])
                  for d in settings["domains"] for i in range(settings["eval_n"])]
        out[h] = float(np.mean(counts))
    return out


def interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided t-interval of the mean of independent values (one per training
    seed), clipped to [0, 1]."""
    from scipy import stats

    x = np.asarray(values, np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def train_tokens(condition: str, settings: dict[str, Any]) -> int:
    """Token slots a cell of `condition` trains on: whole steps of batch x seq_len per part."""
    from a1jax import experiment
    return sum(experiment.num_steps(c) * c.batch_size * c.seq_len
               for c in cell_configs(condition, 0, settings, ""))


def rows(success: dict[tuple[str, int, int], tuple[float, float]], settings: dict[str, Any]
         ) -> list[dict[str, Any]]:
    study = _study_module()
    out = []
    for cond in settings["conditions"]:
        size, parts = study.CONDITIONS[cond]
        trained = max(hi for _, hi, _ in parts)
        tokens = train_tokens(cond, settings)
        for horizon in settings["eval_horizons"]:
            values = [success[(cond, seed, horizon)][0] for seed in settings["seeds"]]
            turns = [success[(cond, seed, horizon)][1] for seed in settings["seeds"]]
            mean, lo, hi = interval(values)
            out.append({"condition": cond, "model": size,
                        "training_horizons": "; ".join(f"{a}-{b}" for a, b, _ in parts),
                        "train_tokens": tokens,
                        "eval_horizon": horizon, "beyond_training": horizon > trained,
                        "seeds": len(values), "mean": round(mean, 4), "ci95_low": round(lo, 4),
                        "ci95_high": round(hi, 4),
                        "per_seed": " ".join(f"{v:.4f}" for v in values),
                        "turns": round(float(np.mean(turns)), 2)})
    return out


def write_csv(table: list[dict[str, Any]], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)


def markdown(table: list[dict[str, Any]], settings: dict[str, Any], header: str) -> str:
    study = _study_module()
    horizons = settings["eval_horizons"]
    lines = [header, "", "| condition | trained on | " + " | ".join(f"h{h}" for h in horizons)
             + " |", "|---|---|" + "---|" * len(horizons)]
    for cond in settings["conditions"]:
        cells = {r["eval_horizon"]: r for r in table if r["condition"] == cond}
        lines.append(f"| {cond} | {study.DESCRIPTIONS[cond]} | " + " | ".join(
            f"{cells[h]['mean']:.2f} [{cells[h]['ci95_low']:.2f}, {cells[h]['ci95_high']:.2f}]"
            for h in horizons) + " |")
    # How far each model carries a task, solved or not: its turns against the references'.
    lines += ["", "Mean turns per episode (over tasks, runs and seeds); a turn is one model reply:",
              "", "| condition | " + " | ".join(f"h{h}" for h in horizons) + " |",
              "|---|" + "---|" * len(horizons)]
    for cond in settings["conditions"]:
        cells = {r["eval_horizon"]: r for r in table if r["condition"] == cond}
        lines.append(f"| {cond} | " + " | ".join(f"{cells[h]['turns']:.1f}" for h in horizons)
                     + " |")
    reference = reference_turns(settings)
    lines.append("| (reference trajectories) | " + " | ".join(
        f"{reference[h]:.1f}" for h in horizons) + " |")
    return "\n".join(lines) + "\n"


def plot(table: list[dict[str, Any]], settings: dict[str, Any], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for cond in settings["conditions"]:
        r = [x for x in table if x["condition"] == cond]
        h = [x["eval_horizon"] for x in r]
        line, = ax.plot(h, [x["mean"] for x in r], marker="o", label=cond)
        ax.fill_between(h, [x["ci95_low"] for x in r], [x["ci95_high"] for x in r],
                        color=line.get_color(), alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xticks(settings["eval_horizons"], [str(h) for h in settings["eval_horizons"]])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("evaluation horizon (tool-call steps)")
    ax.set_ylabel("success (mean over training seeds)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report(workdir: str, settings: dict[str, Any], command: str, seconds: float) -> str:
    table = rows(seed_success(workdir, settings), settings)
    write_csv(table, os.path.join(workdir, "horizon.csv"))
    header = (f"Success on held-out tasks ({', '.join(settings['domains'])}; "
              f"{settings['eval_n']} tasks x {settings['eval_runs']} runs per domain and horizon "
              f"and seed), mean [95% interval] over {len(settings['seeds'])} training seeds; "
              f"{min(r['train_tokens'] for r in table):,} to "
              f"{max(r['train_tokens'] for r in table):,} training token slots per cell "
              f"(budget {settings['budget_tokens']:,}, whole steps per part). `{command}` at "
              f"commit {_commit()}; {seconds / 60:.0f} min of training and evaluation.")
    text = markdown(table, settings, header)
    with open(os.path.join(workdir, "horizon.md"), "w") as f:
        f.write(text)
    plot(table, settings, os.path.join(workdir, "horizon.png"),
         f"{settings['budget_tokens']:,} tokens per condition, {len(settings['seeds'])} seeds")
    return text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m a1jax.horizon", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--budget-tokens", type=int, default=None,
                   help="training token slots per condition (default: the study file's)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per condition: 0..N-1")
    p.add_argument("--conditions", default="short,curriculum,mixed,short_large",
                   help="of experiments/horizon/study.py (also: medium)")
    p.add_argument("--domains", default="calculator", help="comma-separated")
    p.add_argument("--eval-horizons", default="1,2,4,8,16,32")
    p.add_argument("--eval-n", type=int, default=8, help="tasks per domain and horizon")
    p.add_argument("--eval-runs", type=int, default=3, help="runs per task")
    p.add_argument("--smoke", action="store_true",
                   help="a few steps per part and a small evaluation: minutes, for checks")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds, args.eval_n, args.eval_runs = min(args.seeds, 2), 1, 1
        if args.eval_horizons == p.get_default("eval_horizons"):
            args.eval_horizons = "1,2"
    if args.budget_tokens is None:
        args.budget_tokens = _study_module().BUDGET
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from_args(args)
    workdir = os.path.abspath(args.workdir)
    _claim_settings(workdir, settings)
    from absl import logging

    import jax
    logging.set_verbosity(logging.WARNING)
    # Every cell compiles the same few programs (one model, one window): XLA's persistent cache
    # compiles each once for the whole study.
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, ".xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    clock = run_cells(workdir, settings)
    command = "python -m a1jax.horizon " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(workdir, settings, command, clock.total())
    print("\n" + text)
    print(f"wrote {workdir}/horizon.md, horizon.csv, horizon.png")
    return 0


if __name__ == "__main__":
    cli.run(main)
