"""Context (sequence) parallelism: which mesh axis splits time, the load-balanced token order, and
`shard_map` over [batch, time, ...] activations.

When the logical rules map `act_seq` to a mesh axis of size P > 1 (and
`ModelConfig.context_parallel` is on), the Transformer engages this path by itself: it reads the
active mesh (`jax.set_mesh`) and rules (`nn.logical_axis_rules`) while tracing, as the
expert-parallel dispatch does; no caller flag is needed. (Rows too short to cut into 2P chunks
of at least the DeltaNet conv halo run the unsharded code, XLA gathering them.) Then:

- the sequence is cut into 2P chunks and shard i holds chunks i and 2P-1-i ("zigzag"), so each
  shard holds an early and a late part and causal attention costs every shard the same. The
  Transformer permutes its integer inputs into this order once (a fixed pattern of ppermutes, no
  gather), and the final hidden state back before the norm and head, so logits keep the caller's
  order;
- every token keeps its original place (`index_bt`) and its run id, so masks and the DeltaNet
  recurrence are defined by token, not by layout;
- full attention all-gathers K and V (a1jax.model.attention), DeltaNet passes its conv halo and
  recurrent state between shards (a1jax.model.deltanet_cp). Nothing else crosses shards.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from a1jax.model.config import ConfigError, ModelConfig


@dataclasses.dataclass(frozen=True)
class SequenceShards:
    """How the time axis is split: over mesh axis `axis` into `size` shards, with the batch
    split over `batch_axes` (the spec every [b, t, ...] activation has inside shard_map)."""

    axis: str
    size: int
    batch_axes: tuple[str, ...]
    mesh: Any

    @property
    def spec(self) -> P:
        return P(self.batch_axes or None, self.axis)


def _mesh_axes(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def sequence_shards(config: ModelConfig, t: int) -> SequenceShards | None:
    """The active split of a time axis of length t, or None when the layers should run
    unsharded code: no mesh, `act_seq` unmapped or of size 1, `context_parallel` off, or t too
    short to cut into 2P chunks of at least the conv halo (such short rows need no context
    parallelism; XLA then gathers them). Modules skip it while initialising: parameters do not
    depend on it."""
    if not config.context_parallel:
        return None
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    seq_axes = _mesh_axes(nn.logical_to_mesh_axes(("act_seq",))[0])
    size = math.prod(mesh.shape[a] for a in seq_axes)
    if size == 1:
        return None
    if len(seq_axes) != 1:
        raise ConfigError(f"context parallelism splits time over one mesh axis; the rules map "
                          f"act_seq to {seq_axes}")
    if t % (2 * size) or t // (2 * size) < min_chunk(config):
        return None
    batch_axes = _mesh_axes(nn.logical_to_mesh_axes(("act_batch",))[0])
    return SequenceShards(seq_axes[0], size, batch_axes, mesh)


def min_chunk(config: ModelConfig) -> int:
    """The shortest chunk context parallelism cuts: the DeltaNet conv halo comes from the one
    chunk before, so a chunk holds at least kernel - 1 tokens (and one)."""
    return max(config.linear_conv_kernel_dim - 1, 1)


def check_length(shards: SequenceShards, t: int, min_chunk: int = 1) -> int:
    """The chunk length t / (2P); raises if the sequence does not cut into 2P such chunks."""
    if t % (2 * shards.size) or t // (2 * shards.size) < min_chunk:
        raise ConfigError(f"context parallelism over {shards.size} shards needs a sequence length "
                          f"divisible by {2 * shards.size} into chunks of at least {min_chunk} "
                          f"tokens; got {t}")
    return t // (2 * shards.size)


def over_sequence(shards: SequenceShards, fn: Callable, seq_args: Sequence[jax.Array],
                  replicated_args: Sequence[jax.Array] = ()) -> Any:
    """fn(*local seq_args, *replicated_args) under shard_map: each [b, t, ...] argument and
    result is split over the batch axes and `shards.axis`; the others are whole on every
    device. Results must all be [b, t, ...]."""
    spec = shards.spec
    in_specs = (spec,) * len(seq_args) + (P(),) * len(replicated_args)
    return jax.shard_map(fn, mesh=shards.mesh, in_specs=in_specs, out_specs=spec,
                         check_vma=False)(*seq_args, *replicated_args)


# ---- the zigzag order --------------------------------------------------------------------
# Contiguous: shard j holds chunks 2j (slot 0) and 2j+1 (slot 1).
# Zigzag:     shard i holds chunks i (slot 0) and 2P-1-i (slot 1).

def _zigzag_place(chunk: int, size: int) -> tuple[int, int]:
    return (chunk, 0) if chunk < size else (2 * size - 1 - chunk, 1)


def _move_chunks(x_btx: jax.Array, axis: str, size: int, to_zigzag: bool) -> jax.Array:
    """Local [b, 2c, ...] -> local [b, 2c, ...] in the other order. Each of the four
    (source slot, destination slot) groups is one ppermute of half a shard, so every device
    sends and receives exactly its own tokens: no device ever holds the whole sequence."""
    b, tl = x_btx.shape[:2]
    halves = x_btx.reshape(b, 2, tl // 2, *x_btx.shape[2:])
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for chunk in range(2 * size):
        contiguous = (chunk // 2, chunk % 2)
        zigzag = _zigzag_place(chunk, size)
        (src, src_slot), (dst, dst_slot) = (contiguous, zigzag) if to_zigzag else (zigzag,
                                                                                   contiguous)
        groups.setdefault((src_slot, dst_slot), []).append((src, dst))
    out = [jnp.zeros_like(halves[:, 0]), jnp.zeros_like(halves[:, 0])]
    for (src_slot, dst_slot), perm in sorted(groups.items()):
        out[dst_slot] = out[dst_slot] + jax.lax.ppermute(halves[:, src_slot], axis, perm)
    return jnp.stack(out, axis=1).reshape(x_btx.shape)


def to_zigzag(shards: SequenceShards, *arrays_bt: jax.Array) -> list[jax.Array]:
    """Global [b, t, ...] arrays (time in order, split contiguously) -> the same arrays with
    time in zigzag order (still split contiguously: shard i's block is chunks i, 2P-1-i)."""
    move = lambda *xs: [_move_chunks(x, shards.axis, shards.size, True) for x in xs]
    return over_sequence(shards, move, arrays_bt)


def from_zigzag(shards: SequenceShards, x_btx: jax.Array) -> jax.Array:
    """The inverse of `to_zigzag` for one array."""
    move = lambda x: _move_chunks(x, shards.axis, shards.size, False)
    return over_sequence(shards, move, [x_btx])


def zigzag_index(t: int, size: int) -> jax.Array:
    """[t] int32: the original place of each token in zigzag order (a constant)."""
    chunk = t // (2 * size)
    order = [c for i in range(size) for c in (i, 2 * size - 1 - i)]
    return jnp.concatenate([jnp.arange(c * chunk, (c + 1) * chunk, dtype=jnp.int32)
                            for c in order])


def flatten_tokens(shards: SequenceShards, x_bt: jax.Array) -> jax.Array:
    """[b, t, ...] -> [b * t, ...] keeping every token on its device (the token axis split over
    the batch axes, then the sequence axis). A plain reshape would not: when a batch shard holds
    several rows, the tokens of one device are not contiguous in row-major order, and XLA
    replicates the whole activation to reshape it. Token order changes; per-token work (the MoE)
    and sums over tokens do not care."""
    spec = P(shards.batch_axes + (shards.axis,))
    flat = lambda x: x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    return jax.shard_map(flat, mesh=shards.mesh, in_specs=shards.spec, out_specs=spec,
                         check_vma=False)(x_bt)


def unflatten_tokens(shards: SequenceShards, x_n: jax.Array, b: int, t: int) -> jax.Array:
    """The inverse of `flatten_tokens`."""
    spec = P(shards.batch_axes + (shards.axis,))
    batch_shards = math.prod(shards.mesh.shape[a] for a in shards.batch_axes)
    local = lambda x: x.reshape(b // batch_shards, t // shards.size, *x.shape[1:])
    return jax.shard_map(local, mesh=shards.mesh, in_specs=spec, out_specs=shards.spec,
                         check_vma=False)(x_n)


def over_tokens(shards: SequenceShards, fn: Callable, token_args: Sequence[jax.Array],
                replicated_args: Sequence[jax.Array] = ()) -> tuple[jax.Array, jax.Array]:
    """fn(*local token_args, *replicated_args) -> (per-token result, scalar) under shard_map,
    tokens as `flatten_tokens` lays them out. For per-token work that XLA would otherwise
    replicate (a sort over all tokens, as in the dropless dispatch); the scalar is summed."""
    spec = P(shards.batch_axes + (shards.axis,))
    axes = shards.batch_axes + (shards.axis,)

    def local(*args):
        out, scalar = fn(*args)
        return out, jax.lax.psum(scalar, axes)

    in_specs = (spec,) * len(token_args) + (P(),) * len(replicated_args)
    return jax.shard_map(local, mesh=shards.mesh, in_specs=in_specs, out_specs=(spec, P()),
                         check_vma=False)(*token_args, *replicated_args)
