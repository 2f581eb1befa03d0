"""Rewards a random model's episodes vary under, for the learner's tests (rl.reward)."""


def first_token_even(episode) -> float:
    """1 when the episode's first sampled token id is even: half of a random policy's samples,
    and a preference GRPO can teach in a few steps."""
    first = episode.model_mask.index(1)
    return float(episode.tokens[first] % 2 == 0)
