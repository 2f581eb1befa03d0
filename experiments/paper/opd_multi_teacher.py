r"""Multi-teacher on-policy distillation with salient vocabulary alignment (the paper's last
stage): the full-domain SFT student samples episodes in every domain, each episode is scored only
by its own domain's teacher (hard routing), and the student minimises the reverse KL to that
teacher over the teacher's top-k tokens, both renormalised there, averaged per episode, per
domain, and over the domains present (a1jax.rl.sva_loss).

The paper does not state k; distill.top_k is 64 here.

    python -m a1jax.train --config experiments/paper/opd_multi_teacher.py:model=tiny \
        --workdir runs/recipe/opd_multi_teacher --config.init_from=runs/recipe/sft_full_domain \
        --config.distill.teachers=kb_search=runs/recipe/teacher_grpo_kb_search,...
"""

from a1jax import experiment
from experiments import models

# model -> (sequence length = episode context, episodes per step, steps, learning rate)
SIZES = {  # the toy context: teacher_grpo.py's, which holds every reference of horizons 1-4
    "tiny": (2048, 8, 20, 1e-4),
    "bench": (2048, 16, 60, 3e-5),
    "agents_a1_35b": (32_768, 96, 300, 1e-6),
}


def get_config(arg=None):
    args = experiment.parse_arg(arg, model="tiny", smoke=False)
    c = experiment.base()
    c.stage = "opd_multi_teacher"
    models.apply(c, args["model"])
    c.seq_len, c.batch_size, c.steps, c.optim.learning_rate = SIZES[args["model"]]
    if args["model"] == "agents_a1_35b":
        c.microbatches = 12
    c.init_from = ""  # the full-domain SFT checkpoint: set by a1jax.recipe
    c.requires_init = True

    c.rl.algorithm = "opd"
    c.rl.domains = ",".join(experiment.DOMAINS)
    c.rl.horizon_min, c.rl.horizon_max = 1, 4
    c.rl.temperature = 1.0
    c.rl.max_turns = 12
    c.rl.max_turn_tokens = 4096 if args["model"] == "agents_a1_35b" else 256
    c.distill.teachers = ""  # one per domain: set by a1jax.recipe
    c.distill.top_k = 64
    c.distill.mode = "renormalised"
    c.optim.warmup_fraction = 0.0
    c.optim.end_lr_fraction = 1.0
    c.optim.weight_decay = 0.0
    c.checkpoint.every = 5
    if args["smoke"]:
        experiment.smoke(c)
        c.rl.max_turn_tokens = 32
        c.rl.max_turns = 2
    return c
