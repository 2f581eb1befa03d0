r"""Stage 1, foundation: instruction tuning and short task completions.

Short trajectories (one or two tool calls, then the answer) at short sequence length, so the
model learns the chat and tool-call format and the basic call-observe-answer loop before long
horizons. Starts from the base checkpoint (Qwen3.5-35B-A3B for the real run; a random model for
`tiny`). The paper's SFT recipe: AdamW, lr 1e-5, cosine decay, 5% warmup, weight decay 0.1.

    python -m a1jax.train --config experiments/curriculum/stage1_foundation.py:model=tiny \
        --workdir runs/curriculum/stage1_foundation
    # the real run, on one 8x H200 node (launch/gpu/node.sh wraps this):
    python -m a1jax.train --config experiments/curriculum/stage1_foundation.py:model=agents_a1_35b \
        --workdir /ckpt/a1/stage1_foundation --config.init_from=/models/Qwen3.5-35B-A3B
"""

from a1jax import experiment
from experiments import models

# model -> (sequence length, sequences per step, steps, learning rate)
SIZES = {
    "tiny": (1024, 8, 40, 3e-3),
    "bench": (512, 8, 100, 1e-3),
    "agents_a1_35b": (32_768, 32, 1_500, 1e-5),
}


def get_config(arg=None):
    args = experiment.parse_arg(arg, model="tiny", smoke=False)
    c = experiment.base()
    c.stage = "stage1_foundation"
    models.apply(c, args["model"])
    c.seq_len, c.batch_size, c.steps, c.optim.learning_rate = SIZES[args["model"]]
    if args["model"] == "agents_a1_35b":
        c.microbatches = 4

    # Data: short tasks in every domain.
    c.data.mixture = {"kb_search": 0.4, "calculator": 0.4, "files": 0.2}
    c.data.horizon_min, c.data.horizon_max = 1, 2

    c.optim.warmup_fraction = 0.05
    c.optim.weight_decay = 0.1
    if args["smoke"]:
        experiment.smoke(c)
    return c
