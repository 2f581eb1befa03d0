r"""Stage 2, trajectory extension: progressively longer multi-step agentic trajectories.

Horizons of 3 to 8 tool calls with failed calls and recoveries, at 4x stage 1's sequence length
(65,536 tokens for the real model). Starts from stage 1's final parameters with a fresh
optimizer. Qwen3.5's native context is 262,144 tokens, so no RoPE scaling is needed at any stage
length; for a model with a shorter native context, YaRN scaling by seq_len / native applies
(`model.rope_scaling`).

    python -m a1jax.train --config experiments/curriculum/stage2_trajectory_extension.py:model=tiny \
        --workdir runs/curriculum/stage2_trajectory_extension \
        --config.init_from=runs/curriculum/stage1_foundation
"""

from a1jax import experiment
from experiments import models

SIZES = {
    "tiny": (2048, 4, 30, 2e-3),
    "bench": (2048, 8, 100, 5e-4),
    "agents_a1_35b": (65_536, 16, 1_000, 1e-5),
}


def get_config(arg=None):
    args = experiment.parse_arg(arg, model="tiny", smoke=False)
    c = experiment.base()
    c.stage = "stage2_trajectory_extension"
    models.apply(c, args["model"])
    c.seq_len, c.batch_size, c.steps, c.optim.learning_rate = SIZES[args["model"]]
    if args["model"] == "agents_a1_35b":
        c.microbatches = 2
    c.init_from = ""  # the previous stage's final checkpoint: set by a1jax.curriculum
    c.requires_init = True
    c.model.rope_scaling = "yarn"  # only where seq_len exceeds the native context

    # Data: longer horizons, weighted towards the multi-step domains.
    c.data.mixture = {"kb_search": 0.4, "calculator": 0.2, "files": 0.4}
    c.data.horizon_min, c.data.horizon_max = 3, 8

    if args["smoke"]:
        experiment.smoke(c)
    return c
