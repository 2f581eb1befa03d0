"""On-policy distillation's model side: the routed teacher's top-k per token, and the student's
SVA gradients over a batch of its own samples, microbatched, with the batch's domain weights
computed once so that shards and microbatches sum to the batch loss.

Neither side ever holds a [batch, time, vocabulary] array: logits are made `chunk` positions of
each row at a time from the final hidden states (as the SFT loss does), and only the teacher's
top-k ids and log-probabilities [b, t, k] leave its forward pass. A chunk's logits lie split over
rows and positions with the whole vocabulary on each device (the head weight is all-gathered,
FSDP-style; no layout splits the logits' vocabulary), so each device's top-k is exact on its
own and nothing needs merging: `local_top_k` keeps XLA from gathering the chunk first.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from a1jax.model import ModelConfig, Transformer
from a1jax.rl.chunks import local_top_k, map_chunks, scan_chunks
from a1jax.rl.losses import sva_token_losses, sva_token_weights
from a1jax.train.step import load_balancing_loss, sum_over_microbatches


def _hidden(params, batch: dict, model_config: ModelConfig):
    return Transformer(model_config).apply({"params": params}, batch["tokens"],
                                           batch["segment_ids"], batch["positions"], head=False)


def teacher_topk(params, batch: dict, model_config: ModelConfig, k: int
                 ) -> tuple[jax.Array, jax.Array]:
    """The teacher's k most likely next tokens at every position of `batch` and their
    full-vocabulary log-probabilities: ([b, t, k] int32, [b, t, k] float32)."""
    out = _hidden(params, batch, model_config)

    def one(logits_bcv, _):
        values_bck, ids_bck = local_top_k(logits_bcv, k)
        return ids_bck, values_bck - jax.nn.logsumexp(logits_bcv, -1, keepdims=True)

    return map_chunks(one, out.hidden_btd, out.head_dx, (), model_config.loss_chunk_size)


STATS = ("reverse_kl", "coverage", "teacher_mass", "student_entropy")


def sva_sum(x_btd: jax.Array, w_dx: jax.Array, teacher_ids_btk: jax.Array,
            teacher_logprobs_btk: jax.Array, weights_bt: jax.Array, mask_bt: jax.Array,
            chunk: int, mode: str) -> tuple[jax.Array, dict[str, jax.Array]]:
    """sum_t weights_t * SVA_t of the student logits x_btd @ w_dx, a chunk at a time, and the
    masked sums of the per-token statistics."""
    def one(carry, logits_bcv, c):
        ids_bck, lt_bck, w_bc, m_bc = c
        kl_bc, stats = sva_token_losses(logits_bcv, ids_bck, lt_bck, mode)
        sums = {"reverse_kl": kl_bc, **stats}
        return jax.tree.map(jnp.add, carry, (jnp.sum(w_bc * kl_bc), {
            name: jnp.sum(v * m_bc) for name, v in sums.items()}))

    zero = jnp.zeros((), jnp.float32)
    xs = (teacher_ids_btk, teacher_logprobs_btk, weights_bt, mask_bt.astype(jnp.float32))
    return scan_chunks(one, (zero, dict.fromkeys(STATS, zero)), x_btd, w_dx, xs, chunk)


def opd_loss_fn(params, batch: dict, model_config: ModelConfig, num_micro: int = 1,
                mode: str = "renormalised") -> tuple[jax.Array, dict]:
    """(objective, metrics) for one (micro)batch: its share of the SVA loss (batch["weights"],
    from `sva_token_weights` of the whole batch) plus the router's load-balancing loss.
    batch: tokens, segment_ids, positions, loss_mask [b, t] (1 where the next token is the
    student's), teacher_ids / teacher_logprobs [b, t, k] (the routed teacher's, at the same
    positions), weights [b, t]."""
    out = _hidden(params, batch, model_config)
    sva, sums = sva_sum(out.hidden_btd, out.head_dx, batch["teacher_ids"],
                        batch["teacher_logprobs"], batch["weights"], batch["loss_mask"],
                        model_config.loss_chunk_size, mode)
    lb = load_balancing_loss(out.router)
    objective = sva + model_config.router_aux_loss_coef * lb / num_micro
    return objective, {"sva_loss": sva, "router_loss": lb / num_micro, **sums}


def opd_grads(params, batch: dict, model_config: ModelConfig, microbatches: int = 1,
              mode: str = "renormalised") -> tuple[Any, dict]:
    """Gradients of the batch's OPD objective, summed over `microbatches` (a scan). batch as
    for `opd_loss_fn` without `weights`, plus domains [b]. Metrics: sva_loss (the batch's L),
    router_loss, and reverse_kl / coverage / teacher_mass / student_entropy as means over the
    student's tokens."""
    batch = dict(batch)
    batch["weights"] = sva_token_weights(batch["loss_mask"], batch.pop("domains"))
    grad_fn = jax.grad(opd_loss_fn, has_aux=True)
    run = lambda micro: grad_fn(params, micro, model_config, microbatches, mode)  # noqa: E731
    grads, metrics = sum_over_microbatches(run, batch, microbatches)
    tokens = jnp.maximum(jnp.sum(batch["loss_mask"].astype(jnp.float32)), 1.0)
    for name in STATS:
        metrics[name] = metrics[name] / tokens
    return grads, metrics
