r"""Runs the three curriculum stages in order, each from the previous stage's final weights.

    python -m a1jax.curriculum --workdir runs/curriculum --model tiny \
        [--mesh data=2,expert=2,sequence=2 | --layout NAME] [--smoke] [--set KEY=VALUE ...]

Stage k runs `experiments/curriculum/<stage>.py:model=MODEL` in WORKDIR/<stage>, with
`init_from` set to WORKDIR/<stage k-1> (its final checkpoint: parameters only, fresh optimizer).
A finished stage is skipped, an interrupted one resumes from its latest checkpoint, so rerunning
the same command after any interruption continues where it stopped. `--set` overrides a config
key in every stage (`--set data.tokenizer=DIR --set checkpoint.every=10`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any, Sequence

import ml_collections

from a1jax import cli
from a1jax.errors import A1Error

STAGES = ("stage1_foundation", "stage2_trajectory_extension", "stage3_frontier_hardening")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_experiment(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of an experiment file, as `--config FILE:arg` would load it."""
    if not os.path.isfile(path):
        raise A1Error(f"no experiment file {path}")
    from a1jax.experiment_flags import add_experiments_to_path
    add_experiments_to_path(["--config", path])
    name = "a1jax_experiment_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    config.lock()
    return config


def stage_file(stage: str, experiments_dir: str | None = None) -> str:
    return os.path.join(experiments_dir or os.path.join(REPO, "experiments"), "curriculum",
                        f"{stage}.py")


def override(config: ml_collections.ConfigDict, assignment: str) -> None:
    """`KEY=VALUE` onto a locked config, VALUE typed like the key's current value."""
    key, sep, text = assignment.partition("=")
    if not sep:
        raise A1Error(f"--set {assignment!r}: expected KEY=VALUE")
    *parents, leaf = key.split(".")
    node = config
    try:
        for part in parents:
            node = node[part]
        kind = node.get_type(leaf)
    except (KeyError, AttributeError):
        raise A1Error(f"--set: unknown config key {key!r}") from None
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            value: Any = text.lower() in ("true", "1")
        else:
            value = kind(text)
    except ValueError:
        raise A1Error(f"--set {key}: {text!r} is not a {kind.__name__}") from None
    node[leaf] = value


def _mesh_overrides(config: ml_collections.ConfigDict, mesh: str | None,
                    layout: str | None) -> None:
    if layout is not None:
        config.mesh.layout, config.mesh.axes = layout, ""
    if mesh is not None:
        config.mesh.layout, config.mesh.axes = "", mesh


def configs(model: str, *, smoke: bool = False, mesh: str | None = None,
            layout: str | None = None, sets: Sequence[str] = (), workdir: str = "",
            experiments_dir: str | None = None) -> list[ml_collections.ConfigDict]:
    """The stages' configs as the curriculum runs them (init_from chained through `workdir`)."""
    out = []
    for k, stage in enumerate(STAGES):
        config = load_experiment(stage_file(stage, experiments_dir),
                                 f"model={model},smoke={smoke}")
        _mesh_overrides(config, mesh, layout)
        if k > 0:
            config.init_from = os.path.join(workdir, STAGES[k - 1])
        for assignment in sets:
            override(config, assignment)
        out.append(config)
    return out


def table(summaries: Sequence[dict[str, Any]]) -> list[str]:
    rows = [f"{'stage':<30}{'steps':>6}{'tokens':>11}{'train loss':>12}{'eval loss':>11}"
            f"{'eval@0':>9}{'time':>8}"]
    for s in summaries:
        fmt = lambda v: "-" if v is None else f"{v:.3f}"
        rows.append(f"{s['stage']:<30}{s['steps']:>6}{s['tokens']:>11,}{fmt(s['train_loss']):>12}"
                    f"{fmt(s['eval_loss']):>11}{fmt(s.get('eval_loss_start')):>9}"
                    f"{s['seconds']:>7.0f}s")
    return rows


def run(model: str, workdir: str, **kwargs) -> list[dict[str, Any]]:
    from a1jax.train import metrics, runner

    workdir = os.path.abspath(workdir)
    stages = configs(model, workdir=workdir, **kwargs)
    for k, config in enumerate(stages):  # every stage's config, before the first compiles
        runner.check(config, os.path.join(workdir, config.stage), check_init=k == 0)
    summaries = []
    for config in stages:
        stage_dir = os.path.join(workdir, config.stage)
        print(f"\n== {config.stage} ({stage_dir})", flush=True)
        summary = runner.run(config, stage_dir)
        evals = [r for r in metrics.read(stage_dir) if r["kind"] == "eval" and r["step"] == 0]
        summary["eval_loss_start"] = evals[0]["loss"] if evals else None
        summaries.append(summary)
        if summary["status"] == "preempted":
            print(f"{config.stage} stopped at step {summary['steps']} (checkpoint written); "
                  "rerun the same command to resume", flush=True)
            break
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m a1jax.curriculum",
                                description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--model", default="tiny")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--mesh", help="axis sizes, e.g. data=2,expert=2,sequence=2")
    where.add_argument("--layout", help="a named layout (a1jax.sharding.layouts)")
    p.add_argument("--smoke", action="store_true", help="a handful of steps per stage")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    from absl import logging

    from a1jax import devices, experiment
    logging.set_verbosity(logging.WARNING)
    stages = configs(args.model, smoke=args.smoke, mesh=args.mesh, layout=args.layout,
                     sets=args.set, workdir=args.workdir)
    devices.simulate_cpu_devices(max(experiment.devices_needed(c) for c in stages))
    summaries = run(args.model, args.workdir, smoke=args.smoke, mesh=args.mesh,
                    layout=args.layout, sets=args.set)
    print()
    for line in table(summaries):
        print(line)
    return 0


if __name__ == "__main__":
    cli.run(main)
