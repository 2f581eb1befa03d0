"""Gated full attention: q/k RMSNorm per head, partial RoPE, GQA, and a sigmoid output gate.

Kernels (`ModelConfig.attention_impl`): `reference_attention` materialises the [t, t] scores and
is what the others are tested against; `blockwise_attention` (a1jax.model.blockwise) is the
flash-style default for every backend; "cudnn" is cuDNN's fused attention on GPUs. With the
sequence split over a mesh axis, `context_parallel_attention` runs instead, whatever the kernel.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from a1jax.model.base import RMSNorm, accum_dtype, normal, param, project
from a1jax.model.blockwise import blockwise_attention
from a1jax.model.cache import AttentionCache
from a1jax.model.config import ConfigError, ModelConfig
from a1jax.model.context import SequenceShards, over_sequence, sequence_shards
from a1jax.model.platform import kernel_platform
from a1jax.model.rope import apply_rope


def reference_attention(q_bthk: jax.Array, k_bsnk: jax.Array, v_bsnk: jax.Array,
                        runs_bt: jax.Array) -> jax.Array:
    """Causal softmax attention within segments, materialising the [t, s] score matrix.

    The slow, obvious reference every faster kernel is tested against. Query head h reads KV
    head h // (heads / kv_heads). Scores and softmax in fp32 (or wider: `accum_dtype`)."""
    b, t, h, k = q_bthk.shape
    n = k_bsnk.shape[2]
    q_btngk = q_bthk.reshape(b, t, n, h // n, k)
    scores = jnp.einsum("btngk,bsnk->bngts", q_btngk, k_bsnk,
                        preferred_element_type=accum_dtype(q_bthk, k_bsnk)) * (k ** -0.5)
    idx = jnp.arange(t)
    causal_ts = idx[:, None] >= idx[None, :]
    same_bts = runs_bt[:, :, None] == runs_bt[:, None, :]
    mask = (causal_ts[None] & same_bts)[:, None, None]
    scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_bsnk.dtype)
    out = jnp.einsum("bngts,bsnk->btngk", probs, v_bsnk)
    return out.reshape(b, t, h, k)


def cudnn_attention(q_bthk: jax.Array, k_bsnk: jax.Array, v_bsnk: jax.Array,
                    runs_bt: jax.Array) -> jax.Array:
    """cuDNN's fused attention through `jax.nn.dot_product_attention` (GPU, bf16/fp16).

    jax.nn exposes no segment ids, so packed rows pass as a [b, 1, t, t] boolean mask on top of
    the causal mask: that mask is t x t per row, which makes this kernel a choice for moderate
    lengths; the blockwise kernel is the long-context one."""
    if kernel_platform() != "gpu":
        raise ConfigError("attention_impl='cudnn' needs a GPU; use 'blockwise' elsewhere")
    same_b1ts = (runs_bt[:, :, None] == runs_bt[:, None, :])[:, None]
    return jax.nn.dot_product_attention(q_bthk, k_bsnk, v_bsnk, mask=same_b1ts, is_causal=True,
                                        implementation="cudnn")


def context_parallel_attention(shards: SequenceShards, q_bthk: jax.Array, k_btnk: jax.Array,
                               v_btnk: jax.Array, runs_bt: jax.Array, index_bt: jax.Array,
                               block_size: int) -> jax.Array:
    """Attention with time split over `shards.axis`: each shard all-gathers K, V, their runs and
    original indices (2 KV heads: cheap) and attends with its own queries; the mask is by
    original index, so any token order (the zigzag one) is causal and packing-correct."""
    def local(q, k, v, runs, index):
        return blockwise_attention(q, k, v, runs, runs, index, index, block_size,
                                   gather_axis=shards.axis)

    return over_sequence(shards, local, [q_bthk, k_btnk, v_btnk, runs_bt, index_bt])


def attend(config: ModelConfig, shards: SequenceShards | None, q_bthk: jax.Array,
           k_btnk: jax.Array, v_btnk: jax.Array, runs_bt: jax.Array,
           index_bt: jax.Array) -> jax.Array:
    """Causal attention within runs by the configured kernel, context-parallel over `shards`
    when given."""
    if shards is not None:
        return context_parallel_attention(shards, q_bthk, k_btnk, v_btnk, runs_bt, index_bt,
                                          config.attention_block_size)
    t = q_bthk.shape[1]
    # One tile covers a short sequence: the dense form is then the same computation, unrolled.
    if config.attention_impl == "reference" or (config.attention_impl == "blockwise"
                                                and t <= config.attention_block_size):
        return reference_attention(q_bthk, k_btnk, v_btnk, runs_bt)
    if config.attention_impl == "cudnn":
        return cudnn_attention(q_bthk, k_btnk, v_btnk, runs_bt)
    return blockwise_attention(q_bthk, k_btnk, v_btnk, runs_bt, runs_bt, index_bt, index_bt,
                               config.attention_block_size)


def cached_attention(config: ModelConfig, cache: AttentionCache, q_bthk: jax.Array,
                     k_btnk: jax.Array, v_btnk: jax.Array, positions_bt: jax.Array,
                     valid_bt: jax.Array) -> tuple[jax.Array, AttentionCache]:
    """Attention of new tokens at `positions_bt` over a row's cached K/V and their own.

    Each valid token's K/V is written at its position (invalid ones, a ragged batch's padding,
    write nothing: their slot index is out of range and the scatter drops it), then queries
    attend to every slot at or before their position. Slots past a row's length may hold stale
    values; no valid query reaches them, since every slot up to its position has been written."""
    b, _, n, _ = k_btnk.shape
    s = cache.k_bsnk.shape[1]
    slot_bt = jnp.where(valid_bt, positions_bt, s)
    rows_b1 = jnp.arange(b)[:, None]
    write = lambda buf, new: buf.at[rows_b1, slot_bt].set(new.astype(buf.dtype), mode="drop")
    cache = AttentionCache(write(cache.k_bsnk, k_btnk), write(cache.v_bsnk, v_btnk))
    if q_bthk.shape[1] == 1:
        return decode_attention(q_bthk, cache.k_bsnk, cache.v_bsnk, positions_bt), cache
    # One run per row; the blockwise kernel masks by index (slot <= position) and skips the
    # key blocks past every query's position.
    same_bt = jnp.zeros(positions_bt.shape, jnp.int32)
    same_bs = jnp.zeros((b, s), jnp.int32)
    slots_bs = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    out = blockwise_attention(q_bthk, cache.k_bsnk.astype(q_bthk.dtype),
                              cache.v_bsnk.astype(q_bthk.dtype), same_bt, same_bs,
                              positions_bt.astype(jnp.int32), slots_bs,
                              config.attention_block_size)
    return out, cache


def decode_attention(q_b1hk: jax.Array, k_bsnk: jax.Array, v_bsnk: jax.Array,
                     positions_b1: jax.Array) -> jax.Array:
    """One query per row against its cache: slots up to the row's position, fp32 softmax.

    Each row's queries are laid out block-diagonally against its K/V as stored ([s, kv heads x
    dim], no transpose): scores are one [s, n*k] x [n*k, h] product per row and the output one
    [h, s] x [s, n*k] product whose diagonal blocks are kept. Written the obvious way, each
    product is a [g, k] x [k, s] sliver per (row, KV head), which XLA's CPU backend ran at a
    tiny fraction of its matmul rate (the bench model's two attention layers took 14 of a 19 ms
    decode step); this costs n times the products' FLOPs, still far below reading the cache."""
    b, _, h, k = q_b1hk.shape
    s, n = k_bsnk.shape[1], k_bsnk.shape[2]
    wide = accum_dtype(q_b1hk, k_bsnk)
    owner_hn = (jnp.arange(h)[:, None] // (h // n)) == jnp.arange(n)[None, :]  # head h reads n
    q_bhk = q_b1hk[:, 0].astype(wide) * (k ** -0.5)
    q_bnkh = jnp.where(owner_hn.T[None, :, None, :], jnp.moveaxis(q_bhk, 1, 2)[:, None], 0.0)
    scores_bsh = jnp.einsum("bsc,bch->bsh", k_bsnk.reshape(b, s, n * k).astype(wide),
                            q_bnkh.reshape(b, n * k, h))
    visible_bs = jnp.arange(s)[None, :] <= positions_b1
    scores_bsh = jnp.where(visible_bs[:, :, None], scores_bsh, jnp.finfo(wide).min)
    probs_bsh = jax.nn.softmax(scores_bsh, axis=1)
    out_bhnk = jnp.einsum("bsh,bsc->bhc", probs_bsh,
                          v_bsnk.reshape(b, s, n * k).astype(wide)).reshape(b, h, n, k)
    out_bhk = jnp.sum(jnp.where(owner_hn[None, :, :, None], out_bhnk, 0.0), axis=2)
    return out_bhk[:, None].astype(q_b1hk.dtype)


class GatedAttention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x_btd: jax.Array, positions_bt: jax.Array, runs_bt: jax.Array,
                 index_bt: jax.Array | None = None, cache: AttentionCache | None = None,
                 valid_bt: jax.Array | None = None):
        """`index_bt`: each token's place in the original sequence (default: in order).

        With `cache` (decoding): the tokens are appended to it at `positions_bt` (`valid_bt`
        marks the real ones) and attend to everything before them; returns (out, new cache)."""
        c = self.config
        dtype = jnp.dtype(c.dtype)
        d, h, n, k = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
        init = normal(c.initializer_range)
        # Each head's q_proj rows are [query (k) | gate (k)], as in the Hugging Face weight.
        w_q = param(self, "q_proj", (d, h, 2 * k), ("embed", "heads", "head_dim"), init)
        w_k = param(self, "k_proj", (d, n, k), ("embed", "kv_heads", "head_dim"), init)
        w_v = param(self, "v_proj", (d, n, k), ("embed", "kv_heads", "head_dim"), init)
        w_o = param(self, "o_proj", (h, k, d), ("heads", "head_dim", "embed"), init)

        x = x_btd.astype(dtype)
        qg_bthk = project(x, w_q.astype(dtype))
        q_bthk, gate_bthk = qg_bthk[..., :k], qg_bthk[..., k:]
        k_btnk = project(x, w_k.astype(dtype))
        v_btnk = project(x, w_v.astype(dtype))
        q_bthk = RMSNorm(c.rms_norm_eps, axis="head_dim", name="q_norm")(q_bthk)
        k_btnk = RMSNorm(c.rms_norm_eps, axis="head_dim", name="k_norm")(k_btnk)
        q_bthk = apply_rope(q_bthk, positions_bt, c)
        k_btnk = apply_rope(k_btnk, positions_bt, c)

        if cache is not None:
            out_bthk, cache = cached_attention(c, cache, q_bthk, k_btnk, v_btnk, positions_bt,
                                               valid_bt)
            out_bthk = out_bthk * jax.nn.sigmoid(gate_bthk)
            return project(out_bthk, w_o.astype(dtype), 2), cache
        if index_bt is None:
            index_bt = jnp.broadcast_to(jnp.arange(x_btd.shape[1], dtype=jnp.int32),
                                        x_btd.shape[:2])
        shards = None if self.is_initializing() else sequence_shards(c, x_btd.shape[1])
        out_bthk = attend(c, shards, q_bthk, k_btnk, v_btnk, runs_bt, index_bt)
        out_bthk = out_bthk * jax.nn.sigmoid(gate_bthk)
        return project(out_bthk, w_o.astype(dtype), 2)
