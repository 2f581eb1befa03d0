r"""Runs the paper's post-training recipe in order: full-domain SFT, one GRPO teacher per
domain, then multi-teacher on-policy distillation into the SFT model.

    python -m a1jax.recipe --workdir runs/recipe --model tiny [--domains kb_search,calculator] \
        [--smoke] [--set KEY=VALUE ...] [--part-set PART:KEY=VALUE ...] \
        [--eval-n 16 --eval-runs 3 --eval-horizons 1,2]

    WORKDIR/sft_full_domain          experiments/paper/sft_full_domain.py
    WORKDIR/teacher_grpo_DOMAIN      experiments/paper/teacher_grpo.py:domain=DOMAIN, from the SFT
    WORKDIR/opd_multi_teacher        experiments/paper/opd_multi_teacher.py, the SFT student and
                                     the teachers above, one per domain
    WORKDIR/eval/STAGE/              with --eval-n: `a1jax.eval` of each stage's final weights on
                                     held-out tasks; WORKDIR/results.md compares them by domain

A finished part is skipped and an interrupted one resumes, so rerunning the same command after any
interruption continues where it stopped (evaluations resume from their episodes.jsonl). `--set`
overrides a config key in every part, `--part-set teacher_grpo:steps=40` in one (or every
teacher). `--only teacher_grpo_files` runs that part alone (what it starts from must have
finished): the teachers are independent, so each can train in its own process or on its own
node, and the full command then skips them. Every part's config is checked before the first
compiles.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Sequence

import ml_collections

from a1jax import cli
from a1jax.curriculum import REPO, _mesh_overrides, load_experiment, override
from a1jax.errors import A1Error

PAPER = os.path.join(REPO, "experiments", "paper")


def configs(model: str, workdir: str, *, domains: Sequence[str], smoke: bool = False,
            mesh: str | None = None, layout: str | None = None, sets: Sequence[str] = (),
            part_sets: Sequence[str] = ()) -> list[ml_collections.ConfigDict]:
    """The recipe's parts, in order, as it runs them (init_from and teachers chained through
    `workdir`). `part_sets`: "PART:KEY=VALUE" for one part only (PART: sft_full_domain,
    teacher_grpo, which is every teacher, teacher_grpo_DOMAIN, or opd_multi_teacher)."""
    arg = f"model={model},smoke={smoke}"
    sft = load_experiment(os.path.join(PAPER, "sft_full_domain.py"), arg)
    parts = [sft]
    teachers = {}
    for domain in domains:
        c = load_experiment(os.path.join(PAPER, "teacher_grpo.py"), f"{arg},domain={domain}")
        c.init_from = os.path.join(workdir, sft.stage)
        teachers[domain] = os.path.join(workdir, c.stage)
        parts.append(c)
    opd = load_experiment(os.path.join(PAPER, "opd_multi_teacher.py"), arg)
    opd.init_from = os.path.join(workdir, sft.stage)
    opd.rl.domains = ",".join(domains)
    opd.distill.teachers = ",".join(f"{d}={path}" for d, path in teachers.items())
    parts.append(opd)
    names = {c.stage for c in parts} | {"teacher_grpo"}
    for item in part_sets:
        part, sep, _ = item.partition(":")
        if not sep or part not in names:
            raise A1Error(f"--part-set {item!r}: expected PART:KEY=VALUE with PART one of "
                          f"{', '.join(sorted(names))}")
    for c in parts:
        _mesh_overrides(c, mesh, layout)
        for assignment in sets:
            override(c, assignment)
        for item in part_sets:
            part, _, assignment = item.partition(":")
            if c.stage == part or (part == "teacher_grpo" and c.rl.algorithm == "grpo"):
                override(c, assignment)
    return parts


def evaluate(stage_dir: str, out: str, args: argparse.Namespace, domains: Sequence[str],
             config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """`a1jax.eval` of a part's final weights (its rows, from results.json)."""
    from a1jax import eval as eval_cli

    argv = ["--model", stage_dir, "--out", out, "--domains", ",".join(domains),
            "--horizons", args.eval_horizons, "--n", str(args.eval_n),
            "--runs", str(args.eval_runs), "--seed", str(args.eval_seed),
            "--batch", str(args.eval_batch), "--max-turns", str(config.rl.max_turns),
            "--max-turn-tokens", str(config.rl.max_turn_tokens),
            "--max-context", str(config.seq_len)]
    if config.data.tokenizer:
        argv += ["--tokenizer", config.data.tokenizer]
    eval_cli.main(argv)
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)["rows"]


def comparison(results: dict[str, list[dict[str, Any]]], runs: int) -> str:
    """Markdown: per domain and horizon, avg@runs of the SFT model, of the domain's teacher, and
    of the distilled student, and the reference solutions' own success within the evaluations'
    budgets (the lowest of the three: a cell below 1 is capped for a model that imitates them)."""
    key = f"avg@{runs}"
    cell = {(stage, r["domain"], r["horizon"]): r[key] for stage, rows in results.items()
            for r in rows}
    ceiling: dict[tuple[str, int], float] = {}
    for rows in results.values():
        for r in rows:
            if "reference" in r:
                where = (r["domain"], r["horizon"])
                ceiling[where] = min(ceiling.get(where, 1.0), r["reference"])
    lines = [f"| domain | horizon | SFT {key} | teacher {key} | OPD student {key} | reference |",
             "|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for (stage, domain, horizon) in sorted(k for k in cell if k[0] == "sft_full_domain"):
        lines.append(f"| {domain} | {horizon} | {fmt(cell[(stage, domain, horizon)])} | "
                     f"{fmt(cell.get((f'teacher_grpo_{domain}', domain, horizon)))} | "
                     f"{fmt(cell.get(('opd_multi_teacher', domain, horizon)))} | "
                     f"{fmt(ceiling.get((domain, horizon)))} |")
    return "\n".join(lines) + "\n"


def selected(parts: list[ml_collections.ConfigDict], only: str,
             workdir: str) -> list[ml_collections.ConfigDict]:
    """The parts `--only` names (all of them when it is empty), each refused unless the parts it
    reads from (its init_from, its teachers) have finished or are named too (they run first, in
    the recipe's order): the teachers are independent, so they can train at once, one process
    or node each, and the full command then skips them."""
    if not only:
        return parts
    names = [n.strip() for n in only.split(",") if n.strip()]
    known = [c.stage for c in parts]
    if not names or any(n not in known for n in names):
        raise A1Error(f"--only {only!r}: expected parts among {', '.join(known)}")
    chosen = [c for c in parts if c.stage in names]
    for c in chosen:
        reads = {c.init_from} | {t.partition("=")[2] for t in c.distill.teachers.split(",")}
        missing = [p.stage for p in parts if os.path.join(workdir, p.stage) in reads
                   and p.stage not in names and not finished(os.path.join(workdir, p.stage))]
        if missing:
            raise A1Error(f"--only {c.stage}: first finish what it starts from: "
                          f"{', '.join(missing)}")
    return chosen


def finished(stage_dir: str) -> bool:
    try:
        with open(os.path.join(stage_dir, "summary.json")) as f:
            return json.load(f).get("status") == "finished"
    except FileNotFoundError:
        return False


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from a1jax.rl import learner
    from a1jax.train import runner

    workdir = os.path.abspath(args.workdir)
    domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    parts = configs(args.model, workdir, domains=domains, smoke=args.smoke, mesh=args.mesh,
                    layout=args.layout, sets=args.set, part_sets=args.part_set)
    chosen = selected(parts, args.only, workdir)
    for k, c in enumerate(parts):  # every part's config, before the first compiles
        runner.check(c, os.path.join(workdir, c.stage), check_init=k == 0)
    summaries, results = [], {}
    for c in chosen:
        stage_dir = os.path.join(workdir, c.stage)
        print(f"\n== {c.stage} ({stage_dir})", flush=True)
        if c.rl.algorithm != "sft":
            learner.check(c, stage_dir)  # the teachers exist now
        summary = runner.run(c, stage_dir)
        summaries.append(summary)
        if summary["status"] == "preempted":
            print(f"{c.stage} stopped at step {summary['steps']} (checkpoint written); rerun "
                  "the same command to resume", flush=True)
            return summaries
        if args.eval_n:
            own = [d for d in domains if c.stage == f"teacher_grpo_{d}"] or domains
            results[c.stage] = evaluate(stage_dir, os.path.join(workdir, "eval", c.stage), args,
                                        own, parts[-1])
    if args.eval_n and not args.only:  # with --only, the full run's table comes later
        table = comparison(results, args.eval_runs)
        header = (f"Held-out success (task seed offset {args.eval_seed}, {args.eval_n} tasks x "
                  f"{args.eval_runs} runs per cell, horizons {args.eval_horizons}) of the "
                  f"recipe's models, `python -m a1jax.recipe --model {args.model}`.\n\n")
        with open(os.path.join(workdir, "results.md"), "w") as f:
            f.write(header + table)
        print("\n" + table)
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m a1jax.recipe", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--model", default="tiny")
    p.add_argument("--domains", default="kb_search,calculator,files",
                   help="one teacher each; the student learns them all")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--mesh", help="axis sizes, e.g. data=2,expert=2,sequence=2")
    where.add_argument("--layout", help="a named layout (a1jax.sharding.layouts)")
    p.add_argument("--smoke", action="store_true", help="a handful of steps per part")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every part")
    p.add_argument("--part-set", action="append", default=[], metavar="PART:KEY=VALUE",
                   help="for one part: sft_full_domain, teacher_grpo (every teacher), "
                   "teacher_grpo_DOMAIN, opd_multi_teacher")
    p.add_argument("--only", default="", metavar="PART[,PART]",
                   help="run (and evaluate) only these parts, e.g. teacher_grpo_files; what "
                   "they start from must have finished")
    p.add_argument("--eval-n", type=int, default=0,
                   help="held-out tasks per domain and horizon to evaluate each part on (0: no "
                   "evaluation)")
    p.add_argument("--eval-runs", type=int, default=3)
    p.add_argument("--eval-horizons", default="1,2")
    p.add_argument("--eval-seed", type=int, default=0)
    p.add_argument("--eval-batch", type=int, default=8)
    args = p.parse_args(argv)
    from absl import logging

    from a1jax import devices, experiment
    logging.set_verbosity(logging.WARNING)
    domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    unknown = [d for d in domains if d not in experiment.DOMAINS]
    if not domains or unknown:
        raise A1Error(f"--domains {args.domains!r}; known: {', '.join(experiment.DOMAINS)}")
    if args.eval_n < 0 or args.eval_runs < 1:
        raise A1Error("--eval-n must be >= 0 and --eval-runs >= 1")
    parts = configs(args.model, args.workdir, domains=domains, smoke=args.smoke,
                    mesh=args.mesh, layout=args.layout, sets=args.set,
                    part_sets=args.part_set)
    devices.simulate_cpu_devices(max(experiment.devices_needed(c) for c in parts))
    summaries = run(args)
    print()
    for s in summaries:
        what = (f"train loss {s['train_loss']}, eval loss {s['eval_loss']}" if "algorithm"
                not in s else f"{s['episodes']} episodes, training success "
                f"{s['train_success']}")
        print(f"{s['stage']:<28} {s['status']:<18} step {s['steps']:>5}  {what}")
    return 0


if __name__ == "__main__":
    cli.run(main)
