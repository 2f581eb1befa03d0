"""The paper's recipe after SFT: losses for GRPO domain teachers and for multi-teacher on-policy
distillation with salient vocabulary alignment (`losses.py`).

Not yet here (issue #25): the learners (rollouts through `a1jax.agent`, teacher scoring with a
vocabulary-sharded top-k, updates, checkpoints), `experiments/paper/` and `python -m
a1jax.recipe`."""

from a1jax.rl.losses import (ADVANTAGES, SVA_MODES, dr_grpo, groups_kept, grpo, grpo_loss,
                             grpo_token_terms, rloo, sva_loss, sva_token_losses,
                             sva_token_weights, token_mean_weights)

__all__ = ["ADVANTAGES", "SVA_MODES", "dr_grpo", "groups_kept", "grpo", "grpo_loss",
           "grpo_token_terms", "rloo", "sva_loss", "sva_token_losses", "sva_token_weights",
           "token_mean_weights"]
