r"""The paper's first post-training stage: full-domain SFT, one run over every domain.

Agents-A1 trains one model on trajectories of all its domains before it trains domain teachers
from it (experiments/paper/teacher_grpo.py) and distils them back into it
(experiments/paper/opd_multi_teacher.py); `python -m a1jax.recipe` runs the three in order. The
SFT recipe is the curriculum's: AdamW, cosine decay, 5% warmup, weight decay 0.1.

    python -m a1jax.train --config experiments/paper/sft_full_domain.py:model=tiny \
        --workdir runs/recipe/sft_full_domain
"""

from a1jax import experiment
from experiments import models

# model -> (sequence length, sequences per step, steps, learning rate)
SIZES = {
    "tiny": (1024, 8, 60, 3e-3),
    "bench": (1024, 8, 300, 1e-3),
    "agents_a1_35b": (32_768, 32, 1_500, 1e-5),
}


def get_config(arg=None):
    args = experiment.parse_arg(arg, model="tiny", smoke=False)
    c = experiment.base()
    c.stage = "sft_full_domain"
    models.apply(c, args["model"])
    c.seq_len, c.batch_size, c.steps, c.optim.learning_rate = SIZES[args["model"]]
    if args["model"] == "agents_a1_35b":
        c.microbatches = 4
    c.data.mixture = {d: 1.0 / len(experiment.DOMAINS) for d in experiment.DOMAINS}
    c.data.horizon_min, c.data.horizon_max = 1, 4
    c.data.synthetic_per_domain = 256
    c.optim.warmup_fraction = 0.05
    c.optim.weight_decay = 0.1
    if args["smoke"]:
        experiment.smoke(c)
    return c
