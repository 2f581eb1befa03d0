r"""A domain teacher: the full-domain SFT model trained further on its domain by GRPO.

The paper (its search teacher): lr 1e-6, 32 questions x 8 samples per step, clip [0.2, 0.28],
KL to the reference 0.001 (k3), entropy bonus 1e-4, responses up to 4,096 tokens, temperature
1.0; reward: correctness, a linear penalty for turns past a free budget, a repetition penalty and
a format reward. Here: correctness, the turn penalty, a penalty per malformed call and one per
tool call that repeats an earlier call (the penalties' sizes are ours). Dynamic
sampling drops groups whose rewards are equal.

    python -m a1jax.train --config experiments/paper/teacher_grpo.py:model=tiny,domain=kb_search \
        --workdir runs/recipe/teacher_kb_search --config.init_from=runs/recipe/sft_full_domain
"""

from a1jax import experiment
from experiments import models

# model -> (sequence length = episode context, prompts per step, samples per prompt, steps, lr)
# The toy context holds every reference solution of horizons 1-4 (kb_search's longest, about
# 1,650 tokens at horizon 4): in 1,024 none of kb_search's at horizons 3-4 fit, and GRPO there
# rewards only shorter solutions or guesses (docs/recipe.md, runs/recipe6).
SIZES = {
    "tiny": (2048, 2, 4, 20, 1e-4),
    "bench": (2048, 4, 8, 60, 3e-5),
    "agents_a1_35b": (32_768, 32, 8, 300, 1e-6),
}


def get_config(arg=None):
    args = experiment.parse_arg(arg, model="tiny", domain="kb_search", smoke=False)
    if args["domain"] not in experiment.DOMAINS:
        raise experiment.ExperimentError(f"domain {args['domain']!r}; known: "
                                         f"{', '.join(experiment.DOMAINS)}")
    c = experiment.base()
    c.stage = f"teacher_grpo_{args['domain']}"
    models.apply(c, args["model"])
    seq, prompts, group, c.steps, c.optim.learning_rate = SIZES[args["model"]]
    c.seq_len, c.batch_size = seq, prompts * group
    if args["model"] == "agents_a1_35b":
        c.microbatches = 32
    c.init_from = ""  # the full-domain SFT checkpoint: set by a1jax.recipe
    c.requires_init = True

    c.rl.algorithm = "grpo"
    c.rl.domains = args["domain"]
    c.rl.horizon_min, c.rl.horizon_max = 1, 4
    c.rl.group_size = group
    c.rl.temperature = 1.0
    c.rl.max_turns = 12
    c.rl.max_turn_tokens = 4096 if args["model"] == "agents_a1_35b" else 256
    c.rl.clip_low, c.rl.clip_high = 0.2, 0.28
    c.rl.kl_coef = 0.001
    c.rl.entropy_coef = 1e-4
    c.rl.free_turns, c.rl.turn_penalty = 8, 0.05
    c.rl.format_penalty = 0.1
    c.rl.repeat_penalty = 0.05  # per repeated tool call (our value)
    c.optim.warmup_fraction = 0.0
    c.optim.end_lr_fraction = 1.0  # constant
    c.optim.weight_decay = 0.0
    c.agent_eval.domains = args["domain"]
    c.checkpoint.every = 5
    if args["smoke"]:
        experiment.smoke(c)
        c.rl.max_turn_tokens = 32
        c.rl.max_turns = 2
    return c
