"""python -m a1jax.train --config EXPERIMENT.py[:args] --workdir DIR [--config.KEY=VALUE ...]

Runs one experiment file (a curriculum stage, a layout ablation) in DIR, resuming from DIR's
latest complete checkpoint. Examples:

    python -m a1jax.train --config experiments/curriculum/stage1_foundation.py:model=tiny \
        --workdir runs/stage1
    python -m a1jax.train --config experiments/curriculum/stage1_foundation.py:model=tiny,smoke=True \
        --workdir /tmp/smoke --config.mesh.layout=expert --config.optim.learning_rate=1e-3

Exit status: 0 when finished or preempted (a checkpoint was written), 2 on a configuration error
(one line on stderr, before anything is compiled).
"""

from __future__ import annotations

import sys

from a1jax import experiment_flags

experiment_flags.add_experiments_to_path(sys.argv)

from absl import app, flags  # noqa: E402

from a1jax.errors import A1Error  # noqa: E402

CONFIG = experiment_flags.define_config()
WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, data)",
                              required=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # TFDS and orbax narrate every file at INFO
    from a1jax.train import runner
    try:
        summary = runner.run(CONFIG.value, WORKDIR.value)
    except A1Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{summary['stage']}: {summary['status']} at step {summary['steps']}; train loss "
          f"{summary['train_loss']}, eval loss {summary['eval_loss']}; checkpoints in "
          f"{summary['workdir']}/checkpoints")


if __name__ == "__main__":
    experiment_flags.run(main)
