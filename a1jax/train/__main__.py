r"""python -m a1jax.train --config EXPERIMENT.py[:args] --workdir DIR [--config.KEY=VALUE ...]

Runs one experiment file (a curriculum stage, a layout ablation) in DIR, resuming from DIR's
latest complete checkpoint. Examples:

    python -m a1jax.train --config experiments/curriculum/stage1_foundation.py:model=tiny \
        --workdir runs/stage1
    python -m a1jax.train --config experiments/curriculum/stage1_foundation.py:model=tiny,smoke=True \
        --workdir /tmp/smoke --config.mesh.layout=expert --config.optim.learning_rate=1e-3

Multi-process (several hosts, or one process per GPU): every process runs this same command and
they join through `jax.distributed` before anything else touches JAX, from

    A1JAX_COORDINATOR=host:port A1JAX_NUM_PROCESSES=N A1JAX_PROCESS_ID=i   (any launcher; set by
        launch/cpu_multiprocess.sh and launch/k8s/), or
    SLURM's own variables under `srun` (SLURM_NTASKS > 1; launch/slurm/train.sbatch).

Each process then reads only the batch rows its devices hold, and Orbax writes each array shard
from the process that owns it (metadata, metrics and summaries from process 0).

Exit status: 0 when finished or preempted (a checkpoint was written), 2 on a configuration error
(one line on stderr, before anything is compiled).
"""

from __future__ import annotations

import os
import sys

from a1jax import experiment_flags

experiment_flags.add_experiments_to_path(sys.argv)

from absl import app, flags  # noqa: E402

from a1jax.errors import A1Error  # noqa: E402

CONFIG = experiment_flags.define_config()
WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, data)",
                              required=True)


def distributed_env(env=os.environ) -> dict | None:
    """`jax.distributed.initialize` arguments from the environment; None for a single process.
    Raises A1Error for a partial or inconsistent setting."""
    names = ("A1JAX_COORDINATOR", "A1JAX_NUM_PROCESSES", "A1JAX_PROCESS_ID")
    given = [n for n in names if env.get(n)]
    if given:
        if len(given) < len(names):
            missing = ", ".join(n for n in names if n not in given)
            raise A1Error(f"multi-process run: {', '.join(given)} set but not {missing}")
        try:
            count, index = int(env["A1JAX_NUM_PROCESSES"]), int(env["A1JAX_PROCESS_ID"])
        except ValueError:
            raise A1Error("A1JAX_NUM_PROCESSES and A1JAX_PROCESS_ID must be integers") from None
        if count < 1 or not 0 <= index < count:
            raise A1Error(f"A1JAX_PROCESS_ID={index} is not in [0, A1JAX_NUM_PROCESSES={count})")
        if count == 1:
            return None
        return {"coordinator_address": env["A1JAX_COORDINATOR"], "num_processes": count,
                "process_id": index}
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_STEP_NODELIST" in env:
        return {}  # jax's SLURM cluster detection reads the rest (coordinator: first node)
    return None


def init_distributed() -> None:
    """Joins the other processes (before any other use of JAX), and checks that they agree on
    the number of processes the launcher promised."""
    args = distributed_env()
    if args is None:
        return
    import jax
    jax.distributed.initialize(**args)
    expected = args.get("num_processes") or int(os.environ["SLURM_NTASKS"])
    if jax.process_count() != expected:
        raise A1Error(f"{jax.process_count()} processes joined, {expected} expected")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        if distributed_env() is None:
            from a1jax import devices, experiment
            devices.simulate_cpu_devices(experiment.devices_needed(CONFIG.value))
        init_distributed()
    except A1Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # TFDS and orbax narrate every file at INFO
    from a1jax.train import runner
    try:
        summary = runner.run(CONFIG.value, WORKDIR.value)
    except A1Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if "algorithm" in summary:  # a GRPO or OPD learner's
        print(f"{summary['stage']}: {summary['status']} at step {summary['steps']}; "
              f"{summary['episodes']} episodes, recent training success "
              f"{summary['train_success']}, held-out success {summary['held_out_success']}; "
              f"checkpoints in {summary['workdir']}/checkpoints")
        return
    print(f"{summary['stage']}: {summary['status']} at step {summary['steps']}; train loss "
          f"{summary['train_loss']}, eval loss {summary['eval_loss']}; checkpoints in "
          f"{summary['workdir']}/checkpoints")


if __name__ == "__main__":
    experiment_flags.run(main)
