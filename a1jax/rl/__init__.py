"""The paper's recipe after SFT: GRPO domain teachers and multi-teacher on-policy distillation
with salient vocabulary alignment.

    losses.py   the losses and advantage estimators as pure functions (`sva_loss`, `grpo_loss`,
                `grpo`, `dr_grpo`, `rloo`), with per-token weights from the whole batch
    chunks.py   logits a chunk of positions at a time; the top-k of each device's own rows
    distill.py  the teacher's top-k and the student's OPD gradients on the model
    policy.py   log-probabilities of sampled tokens and GRPO's gradients on the model
    learner.py  rollout -> score -> update, checkpointed (experiments/paper/, a1jax.recipe)
"""

from a1jax.rl.losses import (ADVANTAGES, SVA_MODES, dr_grpo, groups_kept, grpo, grpo_loss,
                             grpo_token_terms, rloo, sva_loss, sva_token_losses,
                             sva_token_weights, token_mean_weights)

__all__ = ["ADVANTAGES", "SVA_MODES", "dr_grpo", "groups_kept", "grpo", "grpo_loss",
           "grpo_token_terms", "rloo", "sva_loss", "sva_token_losses", "sva_token_weights",
           "token_mean_weights"]
