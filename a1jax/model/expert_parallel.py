"""Expert-parallel dispatch: tokens travel to the devices that hold their experts and back.

Inside `shard_map`, each device routes its own tokens: assignments are bucketed by the expert
shard that owns their expert, padded to a per-shard capacity, exchanged with an all-to-all over
the `expert` mesh axis, computed with the grouped matmul on the local experts, and sent back by a
second all-to-all. With `capacity_factor` 0 the capacity is the worst case (every local
assignment to one shard), so nothing is dropped; a smaller capacity drops the overflow, and the
dropped count is returned (it becomes a metric), never silent.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from a1jax.model.dispatch import DROPLESS_BLOCK, dropless, grouped_swiglu


def expert_parallel(x_td, weights_tk, experts_tk, gate_proj, up_proj, down_proj,
                    capacity_factor: float = 0.0, block: int = DROPLESS_BLOCK):
    """Same function as `dropless` (when nothing is dropped); needs a mesh with an `expert` axis
    in context (`jax.set_mesh`) and the logical rules (`nn.logical_axis_rules`)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.shape.get("expert", 1) == 1:
        return dropless(x_td, weights_tk, experts_tk, gate_proj, up_proj, down_proj, block)
    token_axes = nn.logical_to_mesh_axes(("act_tokens",))[0]
    token_axes = () if token_axes is None else (
        tuple(token_axes) if isinstance(token_axes, (tuple, list)) else (token_axes,))
    tokens = P(token_axes or None, None)
    local = functools.partial(_local, shards=mesh.shape["expert"],
                              capacity_factor=capacity_factor, block=block,
                              all_axes=tuple(mesh.axis_names))
    return jax.shard_map(
        local, mesh=mesh,
        in_specs=(tokens, tokens, tokens, P("expert"), P("expert"), P("expert")),
        out_specs=(tokens, P()), check_vma=False,
    )(x_td, weights_tk, experts_tk, gate_proj, up_proj, down_proj)


def _local(x_td, weights_tk, experts_tk, gate_proj, up_proj, down_proj, *, shards,
           capacity_factor, block, all_axes):
    t, k = experts_tk.shape
    d = x_td.shape[-1]
    local_experts = gate_proj.shape[0]
    a = t * k
    cap = a if capacity_factor <= 0 else max(1, math.ceil(a * capacity_factor / shards))
    flat_e = experts_tk.reshape(a)
    dest = flat_e // local_experts  # the expert shard that owns each assignment's expert
    order = jnp.argsort(dest, stable=True)
    sorted_dest = dest[order]
    counts = jnp.bincount(dest, length=shards)
    rank = jnp.arange(a) - (jnp.cumsum(counts) - counts)[sorted_dest]
    keep = rank < cap
    slot = jnp.where(keep, sorted_dest * cap + rank, shards * cap)  # out of range: dropped
    token_of = order // k

    def send(values, fill):
        buffer = jnp.full((shards * cap,) + values.shape[1:], fill, values.dtype)
        return buffer.at[slot].set(values, mode="drop")

    send_x = send(x_td[token_of], 0)
    send_e = send((flat_e % local_experts)[order], 0)
    send_valid = send(jnp.ones((a,), bool), False)
    exchange = lambda v: jax.lax.all_to_all(
        v.reshape((shards, cap) + v.shape[1:]), "expert", 0, 0).reshape(v.shape)
    recv_x, recv_e, recv_valid = exchange(send_x), exchange(send_e), exchange(send_valid)
    y = grouped_swiglu(recv_x, jnp.ones((shards * cap, 1), recv_x.dtype), recv_e[:, None],
                       gate_proj, up_proj, down_proj, block=block, valid_tk=recv_valid[:, None])
    back = exchange(y)
    y_a = jnp.where(keep[:, None], back[jnp.minimum(slot, shards * cap - 1)], 0)
    y_a = y_a * weights_tk.reshape(a)[order][:, None].astype(y_a.dtype)
    out = jnp.zeros((t, d), y_a.dtype).at[token_of].add(y_a)
    dropped = jax.lax.psum(jnp.sum(~keep).astype(jnp.int32), all_axes)
    return out, dropped
