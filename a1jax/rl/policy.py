"""GRPO's model side: the policy's log-probabilities of sampled tokens, and the gradients of
GRPO's loss over a batch of rollouts, microbatched, with the batch's token-mean weights computed
once (so shards and microbatches sum to the batch loss).

As for the SFT loss, logits exist only `chunk` positions of each row at a time. batch: tokens,
segment_ids, positions, targets (the next token at each position), loss_mask (1 where that
token is the policy's), old_logprobs [b, t], advantages [b]; optionally ref_logprobs and
sampler_logprobs [b, t].
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from a1jax.model import ModelConfig, Transformer
from a1jax.model.base import accum_dtype, project
from a1jax.rl.losses import grpo_token_terms, token_mean_weights
from a1jax.train.step import load_balancing_loss, sum_over_microbatches

OPTIONAL = ("ref_logprobs", "sampler_logprobs")


def _strided(t: int, chunk: int) -> int:
    return 1 if chunk <= 0 or t <= chunk or t % chunk else t // chunk


def _per_chunk(fn, x_btd: jax.Array, w_dx: jax.Array, xs: dict, chunk: int, init):
    """Scans fn(carry, logits_bcx, xs_chunk) over strided chunks of positions (position j goes
    to chunk j mod n, so a sequence shard computes its share of each), recomputing the logits
    in the backward pass."""
    b, t, _ = x_btd.shape
    f32 = accum_dtype(x_btd, w_dx)
    n = _strided(t, chunk)
    split = lambda a: jnp.moveaxis(a.reshape(b, t // n, n, *a.shape[2:]), 2, 0)  # noqa: E731

    @jax.checkpoint
    def one(carry, chunk_xs):
        x_bcd, rest = chunk_xs
        return fn(carry, project(x_bcd, w_dx, 1, f32), rest), None

    return jax.lax.scan(one, init, jax.tree.map(split, (x_btd, xs)))[0]


def _logprob_entropy(logits_bcx: jax.Array, targets_bc: jax.Array):
    logp_bcx = jax.nn.log_softmax(logits_bcx, -1)
    picked = jnp.take_along_axis(logp_bcx, targets_bc[..., None], -1)[..., 0]
    return picked, -jnp.sum(jnp.exp(logp_bcx) * logp_bcx, -1)


def token_logprobs(params, batch: dict, model_config: ModelConfig) -> jax.Array:
    """log pi(targets | prefix) at every position [b, t] (the old or the reference policy's)."""
    out = Transformer(model_config).apply({"params": params}, batch["tokens"],
                                          batch["segment_ids"], batch["positions"], head=False)
    b, t = batch["targets"].shape
    n = _strided(t, model_config.loss_chunk_size)
    f32 = accum_dtype(out.hidden_btd, out.head_dx)
    split = lambda a: jnp.moveaxis(a.reshape(b, t // n, n, *a.shape[2:]), 2, 0)  # noqa: E731
    lp = jax.lax.map(lambda xs: _logprob_entropy(project(xs[0], out.head_dx, 1, f32), xs[1])[0],
                     (split(out.hidden_btd), split(batch["targets"])))
    return jnp.moveaxis(lp, 0, 2).reshape(b, t)


def grpo_loss_fn(params, batch: dict, model_config: ModelConfig, num_micro: int = 1,
                 **options) -> tuple[jax.Array, dict]:
    """(objective, metrics) for one (micro)batch: its share of GRPO's loss (batch["weights"]
    from the whole batch) plus the router's load-balancing loss. options: clip, kl_coef,
    entropy_coef, importance_cap (grpo_token_terms)."""
    out = Transformer(model_config).apply({"params": params}, batch["tokens"],
                                          batch["segment_ids"], batch["positions"], head=False)
    b, t = batch["targets"].shape
    xs = {"targets": batch["targets"], "weights": batch["weights"], "old": batch["old_logprobs"],
          "adv": jnp.broadcast_to(batch["advantages"][:, None], (b, t)).astype(jnp.float32),
          **{k: batch[k] for k in OPTIONAL if k in batch}}
    names = ["policy_loss", "clip_fraction", "entropy"] + [
        {"ref_logprobs": "kl", "sampler_logprobs": "importance_weight"}[k]
        for k in OPTIONAL if k in batch]

    def one(carry, logits_bcx, c):
        logprobs, entropy = _logprob_entropy(logits_bcx, c["targets"])
        per_token, terms = grpo_token_terms(
            logprobs, c["old"], c["adv"], ref_logprobs=c.get("ref_logprobs"), entropy=entropy,
            sampler_logprobs=c.get("sampler_logprobs"), **options)
        total, sums = carry
        return total + jnp.sum(per_token * c["weights"]), {
            k: sums[k] + jnp.sum(terms[k] * c["weights"]) for k in names}

    zero = jnp.zeros((), jnp.float32)
    loss, sums = _per_chunk(one, out.hidden_btd, out.head_dx, xs, model_config.loss_chunk_size,
                            (zero, dict.fromkeys(names, zero)))
    lb = load_balancing_loss(out.router)
    objective = loss + model_config.router_aux_loss_coef * lb / num_micro
    return objective, {"grpo_loss": loss, "router_loss": lb / num_micro, **sums}


def grpo_grads(params, batch: dict, model_config: ModelConfig, microbatches: int = 1,
               **options) -> tuple[Any, dict]:
    """Gradients of GRPO's objective over the batch (token-mean over every policy token of it),
    summed over `microbatches`; metrics are token means over the batch."""
    batch = dict(batch, weights=token_mean_weights(batch["loss_mask"]))
    grad_fn = jax.grad(grpo_loss_fn, has_aux=True)
    run = lambda micro: grad_fn(params, micro, model_config, microbatches,  # noqa: E731
                                **options)
    return sum_over_microbatches(run, batch, microbatches)
