r"""Layout ablation: stage 1's step under each named layout of one 8-GPU node, to compare step time
and memory on the real hardware after the planner (python -m a1jax.plan) has ranked them.

    python -m a1jax.sweep --config experiments/layouts/ablate_35b.py:model=agents_a1_35b \
        --workdir /ckpt/a1/layouts                # prints one launch/gpu/node.sh command per point
    python -m a1jax.sweep --config experiments/layouts/ablate_35b.py:model=tiny,smoke=True \
        --workdir /tmp/layouts --run              # runs them here, one after another

A short run from the base checkpoint: enough steps to time the step, not a curriculum stage.
"""

from a1jax import experiment
from experiments.curriculum import stage1_foundation


def get_config(arg=None):
    args = experiment.parse_arg(arg, model="tiny", smoke=False)
    c = stage1_foundation.get_config(f"model={args['model']},smoke={args['smoke']}")
    c.stage = "layout_ablation"
    c.steps = min(c.steps, 20)
    c.eval_every = c.steps
    c.checkpoint.every = c.steps
    if args["model"] == "agents_a1_35b":
        c.seq_len = 131_072  # the length the layouts differ at
        c.batch_size = 8
        c.microbatches = 1
    c.mesh.axes = ""  # each point names a whole layout
    return c


def sweep():
    """The points: each a dict of config overrides."""
    for layout in ("fsdp", "expert", "expert_sequence", "sequence", "data_expert_sequence"):
        yield {"mesh.layout": layout}
