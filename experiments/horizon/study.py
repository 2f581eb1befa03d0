r"""Horizon versus parameters: models trained on the same number of tokens that differ only in
the horizons (tool-call steps) of their training trajectories, or only in their size.

    python -m a1jax.horizon --workdir runs/horizon          # the whole study (docs/horizon.md)
    python -m a1jax.train --config experiments/horizon/study.py:condition=short,seed=0 \
        --workdir runs/horizon/cells/short/seed-0/part-0    # one training run of it
    python -m a1jax.sweep --config experiments/horizon/study.py:condition=mixed \
        --workdir runs/horizon/sweep --run                  # one condition, every seed

A condition is a list of parts trained one after another, each from the previous part's final
parameters with a fresh optimizer (as `a1jax.curriculum` chains its stages); a part has a model,
a horizon range and a share of the token budget. Only `curriculum` has more than one part:
`a1jax.horizon` chains them (part K's `init_from` is part K-1's workdir); `sweep()` covers the
one-part conditions.

Every condition sees the same number of token slots, `budget` (steps x batch x seq_len, rounded
up to whole steps per part), of the same domains, in windows of the same length; the trajectories
of a part are drawn from its seed and horizon range, and evaluation tasks come from seeds no
training run may use (`a1jax.data.synth.EVAL_SEED_BASE`).
"""

from a1jax import experiment
from experiments import models

# The model the size axis compares against `tiny`: the same layer pattern, 2x wider and 2x
# deeper: 3.6M parameters against 0.95M (3.8x), 2.6M against 0.43M (6.1x) without the
# 4,096-token embedding and head (`python -m a1jax.model_info`).
LARGE = ("hidden_size=128,num_hidden_layers=8,layer_types=null,"
         "moe_intermediate_size=64,shared_expert_intermediate_size=64")

# condition -> (model size, [(horizon_min, horizon_max, share of the token budget), ...])
CONDITIONS = {
    "short": ("tiny", [(1, 2, 1.0)]),
    "medium": ("tiny", [(1, 6, 1.0)]),
    "curriculum": ("tiny", [(1, 2, 1 / 3), (3, 6, 1 / 3), (7, 12, 1 / 3)]),
    "mixed": ("tiny", [(1, 12, 1.0)]),
    "short_large": ("large", [(1, 2, 1.0)]),
}
DESCRIPTIONS = {
    "short": "horizons 1-2 only",
    "medium": "horizons 1-6, shuffled",
    "curriculum": "1-2, then 3-6, then 7-12 (a third of the tokens each, in order)",
    "mixed": "horizons 1-12, shuffled (no curriculum order)",
    "short_large": "horizons 1-2 only, a 4x larger model",
}
# Windows of 2,048 tokens: a calculator trajectory of horizon 12 fits (at most ~1,750 tokens),
# and on this CPU a step of 4 x 2,048 runs 1.4x faster than one of 2 x 4,096 (attention).
# Longer trajectories of other domains (--domains) are dropped, not truncated.
SEQ_LEN = 2048
BATCH = 4
BUDGET = 5_000_000  # token slots per condition: 611 steps of 4 x 2,048
LEARNING_RATE = {"tiny": 3e-3, "large": 2e-3}


def parts(condition: str) -> list[tuple[int, int, float]]:
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")
    return CONDITIONS[condition][1]


def get_config(arg=None):
    args = experiment.parse_arg(arg, condition="short", part=0, seed=0, budget=BUDGET,
                                domains="calculator", smoke=False)
    size, condition_parts = CONDITIONS.get(args["condition"], (None, None))
    if size is None:
        raise experiment.ExperimentError(
            f"unknown condition {args['condition']!r}; known: {', '.join(CONDITIONS)}")
    if not 0 <= args["part"] < len(condition_parts):
        raise experiment.ExperimentError(
            f"condition {args['condition']} has parts 0-{len(condition_parts) - 1}, "
            f"not {args['part']}")
    lo, hi, share = condition_parts[args["part"]]
    c = experiment.base()
    c.stage = f"horizon_{args['condition']}_part{args['part']}"
    models.apply(c, "tiny")
    if size == "large":
        c.model.extra = LARGE
    # One CPU device: at this size the step is too small to gain from splitting it.
    c.mesh.layout, c.mesh.axes, c.mesh.num_devices = "fsdp", "", 1
    c.model.moe_dispatch = "dropless"
    c.seed = args["seed"]
    c.seq_len, c.batch_size = SEQ_LEN, BATCH
    c.token_budget = max(1, round(args["budget"] * share))
    c.optim.learning_rate = LEARNING_RATE[size]
    c.optim.warmup_fraction = 0.05
    # Cosine to half the peak, not to zero: a tiny model learns to copy numbers from its
    # context (what every calculator step needs) late, after 3-5M tokens at ~2e-3, and a
    # schedule that has decayed to nothing by then stops it short. Measured on horizons 1-2,
    # seed 0, before this choice: cosine to zero over 5M tokens, 0.13 greedy success at
    # horizon 1; the first half of a cosine-to-zero schedule over twice the tokens (which
    # ends, as this one does, at half the peak) 0.88 of horizons 1-2, and all at 6.5M.
    c.optim.end_lr_fraction = 0.5
    c.optim.weight_decay = 0.1
    domains = [d for d in args["domains"].split("+") if d]
    c.data.mixture = {d: 1.0 / len(domains) for d in domains}
    c.data.horizon_min, c.data.horizon_max = lo, hi
    c.data.synthetic_per_domain = 3000
    c.data.length_policy = "drop"
    c.requires_init = args["part"] > 0  # set by a1jax.horizon: the previous part's workdir
    c.log_every = 50
    c.eval_every = 10_000  # the loss on held-out trajectories at the end only
    c.checkpoint.every = 200
    if args["smoke"]:
        experiment.smoke(c)
        c.seq_len = SEQ_LEN  # the same windows as the study
        c.data.synthetic_per_domain = 30  # one domain: enough for a held-out split
    return c


def sweep():
    """Three training seeds of a one-part condition (`...study.py:condition=mixed`)."""
    for seed in range(3):
        yield {"seed": seed}
