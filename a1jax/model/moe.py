"""The sparse MoE block: softmax top-k router (renormalised), routed SwiGLU experts, and a
sigmoid-gated shared expert. Expert dispatch strategies live in `a1jax.model.dispatch`."""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from a1jax.model import dispatch
from a1jax.model.base import accum_dtype, normal, param
from a1jax.model.config import ModelConfig
from a1jax.model.context import flatten_tokens, over_tokens, sequence_shards, unflatten_tokens
from jax.sharding import PartitionSpec as P
from a1jax.model.expert_parallel import expert_parallel

DISPATCH = {"dense": dispatch.dense, "dropless": dispatch.dropless, "batched": dispatch.batched,
            "expert_parallel": expert_parallel}


class Routing(NamedTuple):
    weights_tk: jax.Array  # renormalised top-k probabilities, fp32
    experts_tk: jax.Array  # int32 expert ids
    probs_te: jax.Array  # full softmax, fp32 (for the load-balancing loss)
    logits_te: jax.Array  # fp32 (for the z-loss)


def route(x_td: jax.Array, w_router_de: jax.Array, top_k: int) -> Routing:
    """Softmax over all experts in fp32 (or wider: `accum_dtype`), keep the top k, renormalise
    them to sum to one."""
    x_td = x_td.astype(accum_dtype(x_td, w_router_de))
    logits_te = jnp.einsum("td,de->te", x_td, w_router_de, precision=jax.lax.Precision.HIGHEST)
    probs_te = jax.nn.softmax(logits_te, axis=-1)
    top_tk, experts_tk = jax.lax.top_k(probs_te, top_k)
    return Routing(top_tk / jnp.sum(top_tk, axis=-1, keepdims=True), experts_tk, probs_te,
                   logits_te)


class RouterStats(NamedTuple):
    """Per-layer routing statistics over valid tokens: what the load-balancing loss and the
    expert-load metrics need."""

    expert_fraction_e: jax.Array  # share of top-k assignments per expert (sums to top_k)
    router_prob_e: jax.Array  # mean router probability per expert (sums to 1)
    z_loss: jax.Array  # mean squared logsumexp of the router logits
    dropped: jax.Array  # assignments dropped for capacity (expert_parallel with a capacity)


def router_stats(routing: Routing, valid_t: jax.Array, num_experts: int,
                 dropped: jax.Array) -> RouterStats:
    f32 = routing.probs_te.dtype
    valid = valid_t.astype(f32)
    count = jnp.maximum(jnp.sum(valid), 1.0)
    onehot_te = jnp.sum(jax.nn.one_hot(routing.experts_tk, num_experts, dtype=f32), axis=1)
    z_t = jnp.square(jax.nn.logsumexp(routing.logits_te, axis=-1))
    return RouterStats(jnp.sum(onehot_te * valid[:, None], axis=0) / count,
                       jnp.sum(routing.probs_te * valid[:, None], axis=0) / count,
                       jnp.sum(z_t * valid) / count, dropped)


def _axis_size(name: str) -> int:
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else mesh.shape.get(name, 1)


def _batch_split() -> tuple[jax.sharding.AbstractMesh, tuple[str, ...]] | None:
    """(mesh, axes) when the active rules split whole rows (`act_batch`) over devices, else
    None. Rows are whole on each device there, so flattening [b, t] keeps tokens in place."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    entry = nn.logical_to_mesh_axes(("act_batch",))[0]
    names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    axes = tuple(a for a in names if mesh.shape[a] > 1)
    return (mesh, axes) if axes else None


class SparseMoeBlock(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x_btd: jax.Array, valid_bt: jax.Array) -> tuple[jax.Array, RouterStats]:
        c = self.config
        dtype = jnp.dtype(c.dtype)
        d, e, f, fs = (c.hidden_size, c.num_experts, c.moe_intermediate_size,
                       c.shared_expert_intermediate_size)
        init = normal(c.initializer_range)
        w_router = param(self, "gate", (d, e), ("embed", "router"), init)
        experts = {
            "gate_proj": param(self, "experts_gate_proj", (e, d, f), ("exp", "embed", "mlp_moe"), init),
            "up_proj": param(self, "experts_up_proj", (e, d, f), ("exp", "embed", "mlp_moe"), init),
            "down_proj": param(self, "experts_down_proj", (e, f, d), ("exp", "mlp_moe", "embed"), init),
        }
        w_sg = param(self, "shared_gate_proj", (d, fs), ("embed", "mlp"), init)
        w_su = param(self, "shared_up_proj", (d, fs), ("embed", "mlp"), init)
        w_sd = param(self, "shared_down_proj", (fs, d), ("mlp", "embed"), init)
        w_sgate = param(self, "shared_expert_gate", (d, 1), ("embed", None), init)

        b, t, _ = x_btd.shape
        shards = None if self.is_initializing() else sequence_shards(c, t)
        if shards is None:
            flat = lambda a: a.reshape(b * t, *a.shape[2:])
            unflat = lambda a: a.reshape(b, t, *a.shape[1:])
        else:  # keep tokens on their devices when time is split (see flatten_tokens)
            flat = lambda a: flatten_tokens(shards, a)
            unflat = lambda a: unflatten_tokens(shards, a, b, t)
        x_td = nn.with_logical_constraint(flat(x_btd).astype(dtype), ("act_tokens", "act_embed"))
        routing = route(x_td, w_router, c.num_experts_per_tok)
        experts = {name: jnp.asarray(w, dtype) for name, w in experts.items()}
        strategy = c.moe_dispatch
        if strategy == "expert_parallel" and _axis_size("expert") == 1:
            # No expert axis to exchange tokens over: dispatch each device's own tokens (below)
            # rather than one global sort that every device would repeat for all tokens.
            strategy = "dropless"
        if strategy == "expert_parallel":
            routed_td, dropped = expert_parallel(x_td, routing.weights_tk, routing.experts_tk,
                                                 **experts, capacity_factor=c.moe_capacity_factor)
        elif shards is not None:
            # Each device dispatches its own tokens: XLA would replicate the global sort.
            names = ("gate_proj", "up_proj", "down_proj")
            local = lambda x, w, i, *ws: DISPATCH[strategy](x, w, i, **dict(zip(names, ws)))
            routed_td, dropped = over_tokens(shards, local,
                                             [x_td, routing.weights_tk, routing.experts_tk],
                                             [experts[n] for n in names])
        elif (strategy == "dropless" and not self.is_initializing()
              and (split := _batch_split()) is not None):
            # Rows split over devices: each device sorts its own tokens, with the expert
            # weights gathered whole (FSDP). A global sort would make XLA reshuffle tokens and
            # activations across devices (all-to-alls) for work that is per token.
            mesh, axes = split
            names = ("gate_proj", "up_proj", "down_proj")

            def local(x, w, i, *ws):
                out, dropped = DISPATCH["dropless"](x, w, i, **dict(zip(names, ws)))
                return out, jax.lax.psum(dropped, axes)

            routed_td, dropped = jax.shard_map(
                local, mesh=mesh, in_specs=(P(axes),) * 3 + (P(),) * 3,
                out_specs=(P(axes), P()), check_vma=False)(
                    x_td, routing.weights_tk, routing.experts_tk, *[experts[n] for n in names])
        else:
            routed_td, dropped = DISPATCH[strategy](
                x_td, routing.weights_tk, routing.experts_tk, **experts)

        hidden_tf = jax.nn.silu(x_td @ w_sg.astype(dtype)) * (x_td @ w_su.astype(dtype))
        shared_td = (hidden_tf @ w_sd.astype(dtype)) * jax.nn.sigmoid(x_td @ w_sgate.astype(dtype))
        out_td = routed_td.astype(dtype) + shared_td
        stats = router_stats(routing, flat(valid_bt), e, dropped)
        return unflat(out_td), stats
