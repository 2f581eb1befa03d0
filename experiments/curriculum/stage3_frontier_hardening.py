r"""Stage 3, frontier-task hardening: the longest and hardest tasks at the full sequence length.

Research- and problem-solving-length horizons (8 to 20 tool calls), the full 131,072-token
sequences of the paper's SFT for the real model, a lower learning rate. Starts from stage 2's
final parameters with a fresh optimizer.

    python -m a1jax.train --config experiments/curriculum/stage3_frontier_hardening.py:model=tiny \
        --workdir runs/curriculum/stage3_frontier_hardening \
        --config.init_from=runs/curriculum/stage2_trajectory_extension
"""

from a1jax import experiment
from experiments import models

SIZES = {
    "tiny": (4096, 4, 20, 1e-3),
    "bench": (4096, 8, 100, 3e-4),
    "agents_a1_35b": (131_072, 8, 500, 1e-5),
}


def get_config(arg=None):
    args = experiment.parse_arg(arg, model="tiny", smoke=False)
    c = experiment.base()
    c.stage = "stage3_frontier_hardening"
    models.apply(c, args["model"])
    c.seq_len, c.batch_size, c.steps, c.optim.learning_rate = SIZES[args["model"]]
    if args["model"] == "agents_a1_35b":
        # At 131K tokens and batch 8 the planner (docs/planner.md) puts the whole mesh on the
        # sequence, one sequence per microbatch: 16K tokens per device, the lowest peak memory.
        c.mesh.layout, c.mesh.axes, c.microbatches = "sequence", "", 8
        # XLA:GPU's pipelined collectives (launch/gpu/xla_flags.sh) start the next layer's
        # weight all-gathers during this one: on 8x H200 the planner's XLA:GPU compile puts
        # the step at 151.8 GiB per device with them and 118.1 GiB without (85% of an H200 is
        # 119.3). Within a layer, collectives still overlap compute (latency hiding scheduler).
        c.xla_options = ("xla_gpu_enable_pipelined_all_gather=false,"
                         "xla_gpu_enable_pipelined_reduce_scatter=false,"
                         "xla_gpu_enable_pipelined_all_reduce=false")
    c.init_from = ""  # the previous stage's final checkpoint: set by a1jax.curriculum
    c.requires_init = True
    c.model.rope_scaling = "yarn"  # only where seq_len exceeds the native context

    # Data: the longest horizons, mostly the research-like domains.
    c.data.mixture = {"kb_search": 0.5, "calculator": 0.1, "files": 0.4}
    c.data.horizon_min, c.data.horizon_max = 8, 20

    if args["smoke"]:
        experiment.smoke(c)
    return c
