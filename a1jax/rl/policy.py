"""GRPO's model side: the policy's log-probabilities of sampled tokens, and the gradients of
GRPO's loss over a batch of rollouts, microbatched, with the batch's token-mean weights computed
once (so shards and microbatches sum to the batch loss).

As for the SFT loss, logits exist only `chunk` positions of each row at a time (`chunks.py`).
batch: tokens, segment_ids, positions, targets (the next token at each position), loss_mask (1
where that token is the policy's), old_logprobs [b, t], advantages [b]; optionally ref_logprobs
and sampler_logprobs [b, t].
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from a1jax.model import ModelConfig, Transformer
from a1jax.rl.chunks import map_chunks, scan_chunks
from a1jax.rl.losses import grpo_token_terms, token_mean_weights
from a1jax.train.step import load_balancing_loss, sum_over_microbatches

OPTIONAL = ("ref_logprobs", "sampler_logprobs")


def _logprob_entropy(logits_bcx: jax.Array, targets_bc: jax.Array):
    logp_bcx = jax.nn.log_softmax(logits_bcx, -1)
    picked = jnp.take_along_axis(logp_bcx, targets_bc[..., None], -1)[..., 0]
    return picked, -jnp.sum(jnp.exp(logp_bcx) * logp_bcx, -1)


def token_logprobs(params, batch: dict, model_config: ModelConfig) -> jax.Array:
    """log pi(targets | prefix) at every position [b, t] (the old or the reference policy's)."""
    out = Transformer(model_config).apply({"params": params}, batch["tokens"],
                                          batch["segment_ids"], batch["positions"], head=False)
    return map_chunks(lambda logits_bcv, targets_bc: _logprob_entropy(logits_bcv, targets_bc)[0],
                      out.hidden_btd, out.head_dx, batch["targets"], model_config.loss_chunk_size)


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
    loss, sums = scan_chunks(one, (zero, dict.fromkeys(names, zero)), out.hidden_btd,
                             out.head_dx, xs, model_config.loss_chunk_size)
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
