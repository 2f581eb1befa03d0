"""Blockwise (flash-style) attention in plain JAX: an online softmax over key/value blocks.

Never builds a [t, s] score matrix: the forward keeps, per query block, a running max, a running
normaliser and an output accumulator while it walks the key/value blocks; the backward (a
`custom_vjp`, so autodiff does not save every block's probabilities) recomputes each tile's
probabilities from the saved log-sum-exp. Peak memory per tile is [b, heads, block, block].

Masking is by token, not by layout: query i sees key j when they are in the same run (packed
segment) and `kv_index[j] <= q_index[i]`, where the indices are the tokens' places in the
original sequence. That one rule serves the unsharded model (indices 0..t-1) and context
parallelism (local queries in a load-balanced order against gathered keys). A tile whose keys
are all later than its queries, or all in earlier segments, is skipped (`lax.cond`), so causal
and packed rows cost roughly half and "sum of squared segment lengths" of the dense work.

Blocks are read with dynamic slices and gradients written with dynamic updates, so no blocked
copy of K, V or their gradients exists. With `gather_axis` (inside shard_map) K and V arrive as
local shards and are all-gathered inside the kernel, in the forward and again in the backward:
the gathered copy is never kept between them, and dK/dV leave as a reduce-scatter.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from a1jax.model.base import accum_dtype

_NEG = -1e30  # finite "minus infinity": a masked score; exp(_NEG - m) underflows to 0
_FAR = 2 ** 30  # index given to key padding: later than every query, so always masked


def blockwise_attention(q_bthk: jax.Array, k_bsnk: jax.Array, v_bsnk: jax.Array,
                        q_runs_bt: jax.Array, kv_runs_bs: jax.Array,
                        q_index_bt: jax.Array | None = None,
                        kv_index_bs: jax.Array | None = None,
                        block_size: int = 512, gather_axis: str | None = None) -> jax.Array:
    """Causal softmax attention within runs, a block at a time; same function as
    `reference_attention` (query head h reads KV head h // (heads / kv_heads), scale k^-0.5,
    scores and softmax in fp32, or wider for wider inputs). Lengths need not be multiples of
    `block_size`.

    Without indices, queries and keys are the same tokens in order (self-attention). With
    `gather_axis`, the key-side arguments are this device's shard along time and the keys are
    all of them, gathered over that mesh axis in shard order."""
    b, t, h, k = q_bthk.shape
    n = k_bsnk.shape[2]
    if q_index_bt is None:
        q_index_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if kv_index_bs is None:
        kv_index_bs = jnp.broadcast_to(jnp.arange(k_bsnk.shape[1], dtype=jnp.int32),
                                       k_bsnk.shape[:2])
    bq = min(block_size, t)
    pad_q = (-t) % bq
    # Query padding gets index -1 (sees nothing); runs are edge-padded so the per-block run
    # ranges used for skipping stay tight.
    q_idx = jnp.pad(q_index_bt.astype(jnp.int32), ((0, 0), (0, pad_q)), constant_values=-1)
    q_runs = jnp.pad(q_runs_bt.astype(jnp.int32), ((0, 0), (0, pad_q)), mode="edge")
    q = jnp.pad(q_bthk, ((0, 0), (0, pad_q), (0, 0), (0, 0))).reshape(b, t + pad_q, n, h // n, k)
    out = _flash(q, k_bsnk, v_bsnk, q_runs, kv_runs_bs.astype(jnp.int32),
                 q_idx, kv_index_bs.astype(jnp.int32), bq, block_size, gather_axis)
    return out.reshape(b, t + pad_q, h, k)[:, :t]


def _keys(k, v, kv_runs, kv_idx, block_size, axis):
    """The whole key side, gathered over `axis` if given, padded to whole blocks: key padding
    gets index _FAR, later than every query, so nobody sees it."""
    if axis is not None:
        gather = lambda a: jax.lax.all_gather(a, axis, axis=1, tiled=True)
        k, v, kv_runs, kv_idx = gather(k), gather(v), gather(kv_runs), gather(kv_idx)
    s = k.shape[1]
    bk = min(block_size, s)
    pad = (-s) % bk
    pad4 = ((0, 0), (0, pad), (0, 0), (0, 0))
    return (jnp.pad(k, pad4), jnp.pad(v, pad4), jnp.pad(kv_runs, ((0, 0), (0, pad)), mode="edge"),
            jnp.pad(kv_idx, ((0, 0), (0, pad)), constant_values=_FAR), bk)


def _slice(a, i, size, axis=1):
    return jax.lax.dynamic_slice_in_dim(a, i * size, size, axis=axis)


def _live(q_runs, q_idx, kv_runs, kv_idx, bq, bk):
    """[nq, nk] bool: the tile has at least one pair that may attend (conservative)."""
    per_block = lambda a, size, f: f(a.reshape(a.shape[0], -1, size), axis=(0, 2))
    causal = (per_block(kv_idx, bk, jnp.min)[None, :]
              <= per_block(q_idx, bq, jnp.max)[:, None])
    overlap = ((per_block(kv_runs, bk, jnp.max)[None, :]
                >= per_block(q_runs, bq, jnp.min)[:, None])
               & (per_block(kv_runs, bk, jnp.min)[None, :]
                  <= per_block(q_runs, bq, jnp.max)[:, None]))
    return causal & overlap


def _tile_mask(qr_bq, qi_bq, kr_bs, ki_bs):
    """[b, 1, 1, q, s]: same run and not in the future."""
    mask = (qr_bq[:, :, None] == kr_bs[:, None, :]) & (ki_bs[:, None, :] <= qi_bq[:, :, None])
    return mask[:, None, None]


def _scores(q_bqngk, k_bsnk):
    scale = q_bqngk.shape[-1] ** -0.5
    return jnp.einsum("bqngk,bsnk->bngqs", q_bqngk, k_bsnk,
                      preferred_element_type=accum_dtype(q_bqngk, k_bsnk)) * scale


def _forward(q, k, v, q_runs, kv_runs, q_idx, kv_idx, bq, bk):
    """Returns (out [b, t, n, g, k] in v's dtype, lse [b, n, g, t] fp32 (or wider))."""
    b, t, n, g, dk = q.shape
    f32 = accum_dtype(q, k, v)
    nq, nk = t // bq, k.shape[1] // bk
    live_qk = _live(q_runs, q_idx, kv_runs, kv_idx, bq, bk)

    def query_block(i, carry):
        out, lse = carry
        q_i, qr_i, qi_i = _slice(q, i, bq), _slice(q_runs, i, bq), _slice(q_idx, i, bq)

        def tile(j, carry):
            def compute(carry):
                m, l, acc = carry
                k_j, v_j = _slice(k, j, bk), _slice(v, j, bk)
                mask = _tile_mask(qr_i, qi_i, _slice(kv_runs, j, bk), _slice(kv_idx, j, bk))
                s = jnp.where(mask, _scores(q_i, k_j), _NEG)
                m_new = jnp.maximum(m, jnp.max(s, axis=-1))
                p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
                alpha = jnp.exp(m - m_new)
                pv = jnp.einsum("bngqs,bsnk->bngqk", p.astype(v_j.dtype), v_j,
                                preferred_element_type=f32)
                return m_new, l * alpha + jnp.sum(p, axis=-1), acc * alpha[..., None] + pv

            return jax.lax.cond(live_qk[i, j], compute, lambda c: c, carry)

        init = (jnp.full((b, n, g, bq), _NEG, f32), jnp.zeros((b, n, g, bq), f32),
                jnp.zeros((b, n, g, bq, dk), f32))
        m, l, acc = jax.lax.fori_loop(0, nk, tile, init)
        seen = l > 0  # only block padding sees nothing (every real token sees itself)
        out_i = jnp.moveaxis(acc / jnp.where(seen, l, 1.0)[..., None], 3, 1).astype(out.dtype)
        lse_i = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)
        return (jax.lax.dynamic_update_slice_in_dim(out, out_i, i * bq, axis=1),
                jax.lax.dynamic_update_slice_in_dim(lse, lse_i, i * bq, axis=3))

    init = (jnp.zeros((b, t, n, g, dk), v.dtype), jnp.zeros((b, n, g, t), f32))
    return jax.lax.fori_loop(0, nq, query_block, init)


def _backward(q, k, v, q_runs, kv_runs, q_idx, kv_idx, out, lse, d_out, bq, bk):
    """Flash-attention backward: for each key block, walk the query blocks; dK/dV of the key
    block accumulate in the inner carry, dQ across the outer loop. All in fp32 (or wider)."""
    b, t, n, g, dk = q.shape
    f32 = accum_dtype(q, k, v, d_out)
    nq, nk = t // bq, k.shape[1] // bk
    live_qk = _live(q_runs, q_idx, kv_runs, kv_idx, bq, bk)
    # D_i = sum_k dO_ik O_ik: the softmax Jacobian's diagonal term, per query and head.
    delta = jnp.einsum("btngk,btngk->bngt", d_out.astype(f32), out.astype(f32))
    scale = dk ** -0.5

    def key_block(j, carry):
        dq, dk_all, dv_all = carry
        k_j, v_j = _slice(k, j, bk), _slice(v, j, bk)
        kr_j, ki_j = _slice(kv_runs, j, bk), _slice(kv_idx, j, bk)

        def tile(i, carry):
            def compute(carry):
                dk_j, dv_j, dq = carry
                q_i, do_i = _slice(q, i, bq), _slice(d_out, i, bq)
                mask = _tile_mask(_slice(q_runs, i, bq), _slice(q_idx, i, bq), kr_j, ki_j)
                lse_i, delta_i = _slice(lse, i, bq, 3), _slice(delta, i, bq, 3)
                p = jnp.where(mask, jnp.exp(_scores(q_i, k_j) - lse_i[..., None]), 0.0)
                dv_j = dv_j + jnp.einsum("bngqs,bqngk->bsnk", p.astype(do_i.dtype), do_i,
                                         preferred_element_type=f32)
                dp = jnp.einsum("bqngk,bsnk->bngqs", do_i, v_j,
                                preferred_element_type=f32)
                ds = p * (dp - delta_i[..., None]) * scale
                dq_i = _slice(dq, i, bq) + jnp.einsum("bngqs,bsnk->bqngk", ds,
                                                      k_j.astype(f32))
                dk_j = dk_j + jnp.einsum("bngqs,bqngk->bsnk", ds, q_i.astype(f32))
                return dk_j, dv_j, jax.lax.dynamic_update_slice_in_dim(dq, dq_i, i * bq, axis=1)

            return jax.lax.cond(live_qk[i, j], compute, lambda c: c, carry)

        zeros = jnp.zeros(k_j.shape, f32)
        dk_j, dv_j, dq = jax.lax.fori_loop(0, nq, tile, (zeros, zeros, dq))
        update = lambda a, a_j: jax.lax.dynamic_update_slice_in_dim(a, a_j, j * bk, axis=1)
        return dq, update(dk_all, dk_j), update(dv_all, dv_j)

    init = (jnp.zeros(q.shape, f32), jnp.zeros(k.shape, f32),
            jnp.zeros(v.shape, f32))
    return jax.lax.fori_loop(0, nk, key_block, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def _flash(q, k, v, q_runs, kv_runs, q_idx, kv_idx, bq, block_size, axis):
    return _flash_fwd(q, k, v, q_runs, kv_runs, q_idx, kv_idx, bq, block_size, axis)[0]


def _flash_fwd(q, k, v, q_runs, kv_runs, q_idx, kv_idx, bq, block_size, axis):
    kk, vv, kr, ki, bk = _keys(k, v, kv_runs, kv_idx, block_size, axis)
    out, lse = _forward(q, kk, vv, q_runs, kr, q_idx, ki, bq, bk)
    # Only this device's keys are kept; the backward gathers them again.
    return out, (q, k, v, q_runs, kv_runs, q_idx, kv_idx, out, lse)


def _flash_bwd(bq, block_size, axis, residuals, d_out):
    q, k, v, q_runs, kv_runs, q_idx, kv_idx, out, lse = residuals
    kk, vv, kr, ki, bk = _keys(k, v, kv_runs, kv_idx, block_size, axis)
    dq, dk, dv = _backward(q, kk, vv, q_runs, kr, q_idx, ki, out, lse, d_out, bq, bk)
    s_all = k.shape[1] if axis is None else k.shape[1] * jax.lax.axis_size(axis)
    dk, dv = dk[:, :s_all], dv[:, :s_all]
    if axis is not None:
        scatter = lambda a: jax.lax.psum_scatter(a, axis, scatter_dimension=1, tiled=True)
        dk, dv = scatter(dk), scatter(dv)
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)
