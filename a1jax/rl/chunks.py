"""Logits a chunk of positions at a time, from the final hidden states and the head, for the
recipe's losses (as the SFT loss does): no [batch, time, vocabulary] array ever exists.

Chunk j of n takes positions j, j + n, j + 2n, ...: strided, so that when the time axis is split
over devices every device computes its share of every chunk. Rows that do not split evenly (or
fit one chunk) are one chunk.
"""

from __future__ import annotations

from typing import Any, Callable

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from a1jax.model.base import accum_dtype, project
from a1jax.model.context import _mesh_axes


def _split(tree: Any, t: int, chunk: int) -> tuple[Any, int]:
    n = 1 if chunk <= 0 or t <= chunk or t % chunk else t // chunk
    split = lambda a: jnp.moveaxis(a.reshape(a.shape[0], t // n, n, *a.shape[2:]), 2, 0)  # noqa
    return jax.tree.map(split, tree), n


def map_chunks(fn: Callable, x_btd: jax.Array, w_dx: jax.Array, xs: Any, chunk: int) -> Any:
    """fn(logits_bcv, xs_chunk) -> a tree of [b, c, ...] arrays, for every chunk, put back in
    position order: a tree of [b, t, ...] arrays (forward only)."""
    t = x_btd.shape[1]
    f32 = accum_dtype(x_btd, w_dx)
    (x, rest), _ = _split((x_btd, xs), t, chunk)
    out = jax.lax.map(lambda c: fn(project(c[0], w_dx, 1, f32), c[1]), (x, rest))
    return jax.tree.map(lambda a: jnp.moveaxis(a, 0, 2).reshape(a.shape[1], t, *a.shape[3:]),
                        out)


def scan_chunks(fn: Callable, init: Any, x_btd: jax.Array, w_dx: jax.Array, xs: Any,
                chunk: int) -> Any:
    """carry = fn(carry, logits_bcv, xs_chunk) over the chunks; each chunk's logits are made
    again in the backward pass (checkpointed), so only one chunk's exist at a time."""
    t = x_btd.shape[1]
    f32 = accum_dtype(x_btd, w_dx)

    @jax.checkpoint
    def one(carry, c):
        return fn(carry, project(c[0], w_dx, 1, f32), c[1]), None

    return jax.lax.scan(one, init, _split((x_btd, xs), t, chunk)[0])[0]


def local_top_k(logits_bcv: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """`jax.lax.top_k` of each row and position on the device that holds it. A chunk's logits
    are split over the activations' batch and sequence axes with the vocabulary whole (the head
    weight is gathered, FSDP-style), so each device's top-k is exact on its own; but XLA's SPMD
    partitioner does not split a top-k's operand and all-gathers it (the whole batch's chunk
    logits on every device, measured on `tiny` under fsdp). Under a mesh the top-k therefore runs
    in `shard_map`; without one, or when the chunk does not split evenly, as it is."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return jax.lax.top_k(logits_bcv, k)
    batch = _mesh_axes(nn.logical_to_mesh_axes(("act_batch",))[0])
    seq = _mesh_axes(nn.logical_to_mesh_axes(("act_seq",))[0])
    b, c = logits_bcv.shape[:2]
    if b % math.prod(mesh.shape[a] for a in batch) or c % math.prod(mesh.shape[a] for a in seq):
        return jax.lax.top_k(logits_bcv, k)
    spec = P(batch or None, seq or None, None)
    return jax.shard_map(lambda x: tuple(jax.lax.top_k(x, k)), mesh=mesh, in_specs=spec,
                         out_specs=(spec, spec), check_vma=False)(logits_bcv)
