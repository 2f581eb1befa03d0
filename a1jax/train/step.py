"""The training step as pure functions: state init, loss, and one optimizer update.

A batch is a dict of int32 [batch, time] arrays:
    tokens       input token ids
    targets      the token to predict at each position (the next token of the same segment)
    loss_mask    1 where `targets` is trained (assistant tokens), else 0
    segment_ids  packed trajectory of each token, 0 for padding
    positions    position within the token's own segment
The cross-entropy is summed over trained targets and divided by the number of trained targets in
the whole global batch, so neither packing nor gradient accumulation changes it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from a1jax.model import ModelConfig, Transformer
from a1jax.model.base import accum_dtype, project
from a1jax.model.moe import RouterStats
from a1jax.model.transformer import convert_layers

BATCH_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any


def init_params(key: jax.Array, model_config: ModelConfig) -> Any:
    """Boxed (logically named) parameters; `nn.meta.unbox` gives the arrays."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    # Dispatch does not change the parameters; a one-token init cannot be split over a mesh.
    config = model_config.replace(moe_dispatch="dropless")
    if not config.scan_layers:
        return Transformer(config).init(key, tokens)["params"]
    # The same values as without scan_layers, stacked, so that a run's numbers do not depend on
    # the setting (nn.scan's own init would draw each repeat's weights from other keys).
    boxes = jax.eval_shape(Transformer(config).init, key, tokens)["params"]
    flat = nn.meta.unbox(Transformer(config.replace(scan_layers=False)).init(key, tokens))
    values = convert_layers(flat["params"], config, stacked=True)
    return jax.tree.map(lambda box, value: box.replace_boxed(value), boxes, values,
                        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def init_state(key: jax.Array, model_config: ModelConfig,
               optimizer: optax.GradientTransformation) -> TrainState:
    return state_from_params(nn.meta.unbox(init_params(key, model_config)), optimizer)


def state_from_params(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def load_balancing_loss(router: RouterStats) -> jax.Array:
    """Switch-style loss as Qwen trains with (transformers' `load_balancing_loss_func`): the
    assignment shares and mean probabilities pooled over layers, E * sum_e f_e * P_e."""
    num_experts = router.expert_fraction_e.shape[-1]
    f_e = jnp.mean(router.expert_fraction_e, axis=0)
    p_e = jnp.mean(router.router_prob_e, axis=0)
    return num_experts * jnp.sum(f_e * p_e)


def cross_entropy_sum(logits_btx: jax.Array, targets_bt: jax.Array,
                      mask_bt: jax.Array) -> jax.Array:
    logz = jax.nn.logsumexp(logits_btx, axis=-1)
    picked = jnp.take_along_axis(logits_btx, targets_bt[..., None], axis=-1)[..., 0]
    return jnp.sum((logz - picked) * mask_bt)


def chunked_cross_entropy_sum(x_btd: jax.Array, w_dx: jax.Array, targets_bt: jax.Array,
                              mask_bt: jax.Array, chunk: int) -> jax.Array:
    """cross_entropy_sum of the logits x_btd @ w_dx, computed `chunk` tokens of each row at a
    time and recomputed in the backward pass: only one chunk's logits ever exist.

    Chunk k takes tokens k, k + n, k + 2n, ... (n = t / chunk): strided, so that when the time
    axis is split over devices every device computes its share of every chunk. Rows that do not
    split evenly (or fit one chunk) take the plain path."""
    b, t, d = x_btd.shape
    f32 = accum_dtype(x_btd, w_dx)  # logits in fp32, or wider for wider inputs
    if chunk <= 0 or t <= chunk or t % chunk:
        logits_btx = project(x_btd, w_dx, 1, f32)
        return cross_entropy_sum(logits_btx, targets_bt, mask_bt)
    n = t // chunk
    split = lambda a: jnp.moveaxis(a.reshape(b, chunk, n, *a.shape[2:]), 2, 0)

    @jax.checkpoint
    def one(total, xs):
        x_bcd, targets_bc, mask_bc = xs
        logits_bcx = project(x_bcd, w_dx, 1, f32)
        return total + cross_entropy_sum(logits_bcx, targets_bc, mask_bc), None

    total, _ = jax.lax.scan(one, jnp.zeros((), f32),
                            (split(x_btd), split(targets_bt), split(mask_bt)))
    return total


def _ce_sum(params, batch: dict, model_config: ModelConfig):
    """(summed cross-entropy over trained targets, the model's Output)."""
    out = Transformer(model_config).apply({"params": params}, batch["tokens"],
                                          batch["segment_ids"], batch["positions"], head=False)
    mask = batch["loss_mask"].astype(jnp.float32)
    return chunked_cross_entropy_sum(out.hidden_btd, out.head_dx, batch["targets"], mask,
                                     model_config.loss_chunk_size), out


def loss_fn(params, batch: dict, model_config: ModelConfig, num_trained: jax.Array | None = None,
            num_micro: int = 1, z_loss_coef: float = 0.0) -> tuple[jax.Array, dict]:
    """(objective to differentiate, metrics) for one (micro)batch. `num_trained` is the number of
    trained targets in the whole global batch (this batch's own count when None); router losses
    are per microbatch and averaged over the `num_micro` microbatches."""
    if num_trained is None:
        num_trained = jnp.maximum(jnp.sum(batch["loss_mask"].astype(jnp.float32)), 1.0)
    ce_sum, out = _ce_sum(params, batch, model_config)
    ce = ce_sum / num_trained
    lb = load_balancing_loss(out.router)
    z = jnp.mean(out.router.z_loss)
    objective = ce + (model_config.router_aux_loss_coef * lb + z_loss_coef * z) / num_micro
    return objective, {"loss": ce, "router_loss": lb / num_micro, "z_loss": z / num_micro,
                       "expert_load": out.router.expert_fraction_e / num_micro,
                       "dropped": jnp.sum(out.router.dropped)}


def split_microbatches(batch: dict, num_micro: int) -> dict:
    """[b, t] -> [m, b/m, t], microbatch m taking rows m, m + num_micro, ...: each device's
    contiguous block of rows then holds an equal share of every microbatch."""
    return {k: v.reshape(v.shape[0] // num_micro, num_micro, *v.shape[1:]).swapaxes(0, 1)
            for k, v in batch.items()}


def accumulate_grads(params, batch: dict, model_config: ModelConfig, microbatches: int = 1,
                     z_loss_coef: float = 0.0) -> tuple[Any, dict]:
    """Gradients of the global batch's objective, summed over `microbatches` (a scan), and the
    metrics summed likewise."""
    num_trained = jnp.maximum(jnp.sum(batch["loss_mask"].astype(jnp.float32)), 1.0)
    grad_fn = jax.grad(loss_fn, has_aux=True)
    run = lambda micro: grad_fn(params, micro, model_config, num_trained, microbatches,
                                z_loss_coef)
    grads, metrics = sum_over_microbatches(run, batch, microbatches)
    return grads, dict(metrics, trained_tokens=num_trained)


def sum_over_microbatches(run, batch: dict, microbatches: int):
    """run(batch) when microbatches is 1, else the sum of run(microbatch) over the
    `split_microbatches` of the batch, in a scan (one microbatch's activations at a time)."""
    if microbatches == 1:
        return run(batch)
    micro = split_microbatches(batch, microbatches)
    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(run, first))

    def one(carry, micro):
        return jax.tree.map(jnp.add, carry, run(micro)), None

    return jax.lax.scan(one, zeros, micro)[0]


def train_step(state: TrainState, batch: dict, *, model_config: ModelConfig,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               microbatches: int = 1, z_loss_coef: float = 0.0) -> tuple[TrainState, dict]:
    """One optimizer update over the global batch. Returns the new state and the metrics."""
    grads, metrics = accumulate_grads(state.params, batch, model_config, microbatches,
                                      z_loss_coef)
    return apply_update(state, grads, metrics, metrics["loss"], optimizer=optimizer,
                        schedule=schedule)


def apply_update(state: TrainState, grads: Any, metrics: dict, loss: jax.Array, *,
                 optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                 apply: jax.Array | bool = True) -> tuple[TrainState, dict]:
    """The optimizer update of `state` with `grads` (the SFT step's and the RL learners').

    A step whose loss or gradient norm is not finite keeps the old parameters and optimizer
    state (metrics["skipped"] = 1), as does one with `apply` false (a batch with nothing to
    learn: metrics["skipped"] stays 0); `step` counts batches consumed either way, so a skipped
    batch is not retried. Whether to go on or stop is the runner's choice."""
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(params_and_opt_state):
        params, opt_state = params_and_opt_state
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    # A branch, not a select of new and old state: the select reads the old optimizer state
    # after the update has written the new one into its (donated) buffers, so XLA copies all
    # of it first, and on the CPU makes those copies at the start of the step (0.23 GiB of
    # the bench model's peak).
    params, opt_state = jax.lax.cond(finite & apply, update, lambda unchanged: unchanged,
                                     (state.params, state.opt_state))
    metrics = dict(metrics, grad_norm=grad_norm, learning_rate=schedule(state.step),
                   skipped=(~finite).astype(jnp.int32))
    return TrainState(state.step + 1, params, opt_state), metrics


def eval_step(params, batch: dict, *, model_config: ModelConfig) -> dict:
    """Summed cross-entropy over the trained targets and their count (mean = sum / count over
    every eval batch, whatever the packing)."""
    ce_sum, _ = _ce_sum(params, batch, model_config)
    return {"loss_sum": ce_sum, "count": jnp.sum(batch["loss_mask"].astype(jnp.float32))}
