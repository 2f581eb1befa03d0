r"""Expands an experiment file's `sweep()` into one training command per point.

    python -m a1jax.sweep --config experiments/layouts/ablate_35b.py:model=agents_a1_35b \
        --workdir /ckpt/layouts [--launcher launch/gpu/node.sh | --launcher python] [--run]

Each point (a dict of config overrides, `yield {"mesh.layout": "fsdp"}`) becomes a command in
its own workdir, WORKDIR/<key>=<value>,...; every point's config is built and checked first
(unknown keys, layouts that do not fit, ...), so a bad sweep fails before anything runs. Without
`--run` the commands are printed, one a line, for a scheduler or a shell loop; with `--run`
they run here one after another (the first failure stops the sweep).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import subprocess
import sys
from typing import Any, Sequence

from a1jax import cli
from a1jax.errors import A1Error


def points(path: str) -> list[dict[str, Any]]:
    """The file's sweep points; an error when it defines no `sweep()`."""
    if not os.path.isfile(path):
        raise A1Error(f"no experiment file {path}")
    from a1jax.experiment_flags import add_experiments_to_path
    add_experiments_to_path(["--config", path])
    spec = importlib.util.spec_from_file_location("a1jax_sweep_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "sweep"):
        raise A1Error(f"{path} has no sweep(): nothing to expand")
    out = [dict(p) for p in module.sweep()]
    if not out:
        raise A1Error(f"{path}: sweep() yields no points")
    return out


def point_name(point: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items()).replace("/", "_") or "base"


def commands(config: str, workdir: str, launcher: str = "python",
             extra: Sequence[str] = ()) -> list[list[str]]:
    """One argv per point. `launcher`: "python" (python -m a1jax.train) or a script taking
    EXPERIMENT WORKDIR FLAGS... (launch/gpu/node.sh, launch/slurm/train.sbatch)."""
    from a1jax import curriculum
    path, _, arg = config.partition(":")
    out = []
    for point in points(path):
        c = curriculum.load_experiment(path, arg or None)
        flags = [f"--config.{k}={v}" for k, v in point.items()] + list(extra)
        for flag in flags:  # every override must parse before anything runs
            if not flag.startswith("--config."):
                raise A1Error(f"{flag}: sweep passes only --config.KEY=VALUE overrides")
            curriculum.override(c, flag[len("--config."):])
        from a1jax import experiment
        experiment.validate(c)
        run_dir = os.path.join(workdir, point_name(point))
        if launcher == "python":
            out.append([sys.executable, "-m", "a1jax.train", "--config", config,
                        "--workdir", run_dir, *flags])
        else:
            out.append([launcher, config, run_dir, *flags])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m a1jax.sweep", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="experiment file with sweep(), FILE.py[:args]")
    p.add_argument("--workdir", required=True, help="one subdirectory per point")
    p.add_argument("--launcher", default="python")
    p.add_argument("--run", action="store_true", help="run the points here, in order")
    p.add_argument("flags", nargs="*", help="--config.KEY=VALUE for every point (after --)")
    args = p.parse_args(argv)
    cmds = commands(args.config, args.workdir, args.launcher, args.flags)
    for cmd in cmds:
        print(shlex.join(cmd), flush=True)
        if args.run:
            status = subprocess.run(cmd).returncode
            if status:
                return status
    return 0


if __name__ == "__main__":
    cli.run(main)
