"""On-policy distillation's model side: the routed teacher's top-k per token, and the student's
SVA gradients over a batch of its own samples, microbatched, with the batch's domain weights
computed once so that shards and microbatches sum to the batch loss.

Neither side ever holds a [batch, time, vocabulary] array: logits are made `chunk` positions of
each row at a time from the final hidden states (as the SFT loss does), and only the teacher's
top-k ids and log-probabilities [b, t, k] leave its forward pass. Within a chunk the top-k runs
over the vocabulary as the logits are laid out; XLA partitions it when the vocabulary axis is
sharded.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from a1jax.model import ModelConfig, Transformer
from a1jax.model.base import accum_dtype, project
from a1jax.rl.losses import sva_token_losses, sva_token_weights
from a1jax.train.step import load_balancing_loss, sum_over_microbatches


def _hidden(params, batch: dict, model_config: ModelConfig):
    return Transformer(model_config).apply({"params": params}, batch["tokens"],
                                           batch["segment_ids"], batch["positions"], head=False)


def _chunks(t: int, chunk: int) -> int:
    """How many strided chunks the time axis is cut into (1: the plain path)."""
    return 1 if chunk <= 0 or t <= chunk or t % chunk else t // chunk


def teacher_topk(params, batch: dict, model_config: ModelConfig, k: int
                 ) -> tuple[jax.Array, jax.Array]:
    """The teacher's k most likely next tokens at every position of `batch` and their
    full-vocabulary log-probabilities: ([b, t, k] int32, [b, t, k] float32)."""
    out = _hidden(params, batch, model_config)
    x_btd, w_dx = out.hidden_btd, out.head_dx
    b, t, _ = x_btd.shape
    f32 = accum_dtype(x_btd, w_dx)
    n = _chunks(t, model_config.loss_chunk_size)

    def one(x_bcd):
        logits_bcx = project(x_bcd, w_dx, 1, f32)
        values_bck, ids_bck = jax.lax.top_k(logits_bcx, k)
        return ids_bck, values_bck - jax.nn.logsumexp(logits_bcx, -1, keepdims=True)

    if n == 1:
        return one(x_btd)
    # Chunk j takes positions j, j + n, ...: each sequence shard computes its share of each.
    x_nbcd = jnp.moveaxis(x_btd.reshape(b, t // n, n, -1), 2, 0)
    ids, logprobs = jax.lax.map(one, x_nbcd)
    unsplit = lambda a: jnp.moveaxis(a, 0, 2).reshape(b, t, k)  # noqa: E731
    return unsplit(ids), unsplit(logprobs)


def sva_sum(x_btd: jax.Array, w_dx: jax.Array, teacher_ids_btk: jax.Array,
            teacher_logprobs_btk: jax.Array, weights_bt: jax.Array, mask_bt: jax.Array,
            chunk: int, mode: str) -> tuple[jax.Array, dict[str, jax.Array]]:
    """sum_t weights_t * SVA_t of the student logits x_btd @ w_dx, a chunk at a time
    (recomputed in the backward pass), and the masked sums of the per-token statistics."""
    b, t, _ = x_btd.shape
    f32 = accum_dtype(x_btd, w_dx)
    n = _chunks(t, chunk)
    split = lambda a: jnp.moveaxis(a.reshape(b, t // n, n, *a.shape[2:]), 2, 0)  # noqa: E731

    @jax.checkpoint
    def one(carry, xs):
        x_bcd, ids_bck, lt_bck, w_bc, m_bc = xs
        kl_bc, stats = sva_token_losses(project(x_bcd, w_dx, 1, f32), ids_bck, lt_bck, mode)
        sums = {"reverse_kl": kl_bc, **stats}
        return jax.tree.map(jnp.add, carry, (jnp.sum(w_bc * kl_bc), {
            name: jnp.sum(v * m_bc) for name, v in sums.items()})), None

    zero = jnp.zeros((), f32)
    init = (zero, dict.fromkeys(("reverse_kl", "coverage", "teacher_mass", "student_entropy"),
                                zero))
    xs = (x_btd, teacher_ids_btk, teacher_logprobs_btk, weights_bt, mask_bt.astype(f32))
    (total, sums), _ = jax.lax.scan(one, init, jax.tree.map(split, xs))
    return total, sums


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
    for name in ("reverse_kl", "coverage", "teacher_mass", "student_entropy"):
        metrics[name] = metrics[name] / tokens
    return grads, metrics
