"""The decoding cache of the hybrid model: what each layer type keeps between calls.

Full-attention layers keep K and V for every position written so far; Gated DeltaNet layers keep
the last `conv_kernel - 1` inputs of their causal conv and the recurrent state (fp32 whatever
the compute dtype: the recurrence is computed in fp32). Rows are independent: `lengths_b` counts
the tokens each row holds, so rows of one batch may sit at different positions.

Layer by layer, `layers` has one entry per decoder layer; under `scan_layers` one per position
of the layer pattern, each leaf with a leading axis over the pattern's repeats (the same form
as the stacked parameters, so the decoder's scan reads and writes it in step).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from a1jax.model.config import FULL, ModelConfig


class AttentionCache(NamedTuple):
    k_bsnk: jax.Array  # [batch, max_len, kv_heads, head_dim], compute dtype
    v_bsnk: jax.Array


class DeltaNetCache(NamedTuple):
    conv_bwc: jax.Array  # [batch, conv_kernel - 1, conv channels]: the conv's last inputs
    state_bhkv: jax.Array  # [batch, value_heads, key_dim, value_dim], fp32


class Cache(NamedTuple):
    layers: tuple  # AttentionCache | DeltaNetCache per layer (or per pattern position, stacked)
    lengths_b: jax.Array  # int32: tokens held per row


def layer_cache_shapes(config: ModelConfig, layer_type: str, batch: int,
                       max_len: int) -> AttentionCache | DeltaNetCache:
    """ShapeDtypeStructs of one layer's cache."""
    c = config
    dtype = jnp.dtype(c.dtype)
    wide = jnp.promote_types(dtype, jnp.float32)
    if layer_type == FULL:
        kv = jax.ShapeDtypeStruct((batch, max_len, c.num_key_value_heads, c.head_dim), dtype)
        return AttentionCache(kv, kv)
    return DeltaNetCache(
        jax.ShapeDtypeStruct((batch, c.linear_conv_kernel_dim - 1, c.linear_conv_dim), dtype),
        jax.ShapeDtypeStruct((batch, c.linear_num_value_heads, c.linear_key_head_dim,
                              c.linear_value_head_dim), wide))


def cache_shapes(config: ModelConfig, batch: int, max_len: int) -> Cache:
    """ShapeDtypeStructs of an empty cache for `batch` rows of up to `max_len` tokens."""
    c = config
    if c.scan_layers:
        repeats = c.num_hidden_layers // c.layer_period
        stack = lambda s: jax.ShapeDtypeStruct((repeats,) + s.shape, s.dtype)
        layers = tuple(jax.tree.map(stack, layer_cache_shapes(c, t, batch, max_len))
                       for t in c.layer_types[:c.layer_period])
    else:
        layers = tuple(layer_cache_shapes(c, t, batch, max_len) for t in c.layer_types)
    return Cache(layers, jax.ShapeDtypeStruct((batch,), jnp.int32))


def init_cache(config: ModelConfig, batch: int, max_len: int) -> Cache:
    """An empty cache (zeros; every row at length 0)."""
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes(config, batch, max_len))


def cache_bytes(config: ModelConfig, batch: int, max_len: int) -> int:
    """Bytes of a cache, from its shapes."""
    return sum(s.size * s.dtype.itemsize
               for s in jax.tree.leaves(cache_shapes(config, batch, max_len)))
