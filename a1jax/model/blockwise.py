"""Blockwise (flash-style) attention in plain JAX: an online softmax over key/value blocks.

Never builds a [t, s] score matrix: the forward keeps, per query block, a running max, a running
normaliser and an output accumulator while it walks the key/value blocks; the backward (a
`custom_vjp`, so autodiff does not save every block's probabilities) recomputes each tile's
probabilities from the saved log-sum-exp. Peak memory per tile is [b, heads, block, block].

Masking is by token, not by layout: query i sees key j when they are in the same run (packed
segment) and `kv_index[j] <= q_index[i]`, where the indices are the tokens' places in the
original sequence. That one rule serves the unsharded model (indices 0..t-1) and context
parallelism (local queries in a load-balanced order against gathered keys). A tile whose keys
are all later than its queries, or all in earlier segments, is skipped, and a tile where every
pair may attend is computed without the mask (`lax.switch`), so causal and packed rows cost
roughly half and "sum of squared segment lengths" of the dense work.

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
    g = h // n
    bq = min(block_size, t)
    pad_q = (-t) % bq
    # Query padding gets index -1 (sees nothing); runs are edge-padded so the per-block run
    # ranges used for skipping stay tight.
    q_idx = jnp.pad(q_index_bt.astype(jnp.int32), ((0, 0), (0, pad_q)), constant_values=-1)
    q_runs = jnp.pad(q_runs_bt.astype(jnp.int32), ((0, 0), (0, pad_q)), mode="edge")
    # Head-major, with the g query heads of a KV head as consecutive rows of each token: a tile
    # is then (b x kv heads) products of [block * g, k] x [k, block], rather than b x heads
    # products of [block, k] with the head axes between the rows (on a CPU the small strided
    # form ran at a quarter of the matmul rate, plus a layout copy of every tile).
    rows = lambda a: jnp.repeat(a, g, axis=1)  # per token -> per (token, head) row
    q = jnp.pad(q_bthk, ((0, 0), (0, pad_q), (0, 0), (0, 0))).reshape(b, t + pad_q, n, g, k)
    q_bnrk = jnp.moveaxis(q, 2, 1).reshape(b, n, (t + pad_q) * g, k)
    out = _flash(q_bnrk, k_bsnk, v_bsnk, rows(q_runs), kv_runs_bs.astype(jnp.int32),
                 rows(q_idx), kv_index_bs.astype(jnp.int32), bq * g, block_size, gather_axis)
    out = jnp.moveaxis(out.reshape(b, n, t + pad_q, g, k), 1, 2)
    return out.reshape(b, t + pad_q, h, k)[:, :t]


def _loop(lower: int, upper: int, body, init):
    """`lax.fori_loop(lower, upper, body, init)` as a while loop. With static bounds fori_loop
    is a scan, and inside another scan (the decoder's, under `scan_layers`) JAX's partial
    evaluation linearised these loops although the custom_vjp never needs them, stacking every
    tile's intermediates as residuals: at 131K tokens, 320 GiB per device. A while loop cannot
    be linearised, so only the residuals of the hand-written backward remain."""
    def step(carry):
        i, value = carry
        return i + 1, body(i, value)
    return jax.lax.while_loop(lambda carry: carry[0] < upper, step,
                              (jnp.asarray(lower, jnp.int32), init))[1]


def _keys(k, v, kv_runs, kv_idx, block_size, axis):
    """The whole key side, gathered over `axis` if given, padded to whole blocks, K and V
    head-major ([b, n, s, k]): key padding gets index _FAR, later than every query, so nobody
    sees it."""
    if axis is not None:
        gather = lambda a: jax.lax.all_gather(a, axis, axis=1, tiled=True)
        k, v, kv_runs, kv_idx = gather(k), gather(v), gather(kv_runs), gather(kv_idx)
    s = k.shape[1]
    bk = min(block_size, s)
    pad = (-s) % bk
    heads_first = lambda a: jnp.moveaxis(jnp.pad(a, ((0, 0), (0, pad), (0, 0), (0, 0))), 2, 1)
    return (heads_first(k), heads_first(v), jnp.pad(kv_runs, ((0, 0), (0, pad)), mode="edge"),
            jnp.pad(kv_idx, ((0, 0), (0, pad)), constant_values=_FAR), bk)


def _slice(a, i, size, axis=1):
    return jax.lax.dynamic_slice_in_dim(a, i * size, size, axis=axis)


SKIP, MASKED, FULL = 0, 1, 2  # what a tile needs: nothing, the mask, or no mask at all


def _tile_kinds(q_runs, q_idx, kv_runs, kv_idx, bq, bk):
    """[nq, nk] int32, per tile: SKIP when no pair in it may attend, FULL when every pair may
    (all keys no later than every query, one run throughout, in every row), else MASKED. Both
    tests are conservative; a FULL tile skips building and applying the mask, the most common
    kind in long causal rows."""
    per_block = lambda a, size, f: f(a.reshape(a.shape[0], -1, size), axis=(0, 2))
    kv_min, kv_max = per_block(kv_idx, bk, jnp.min), per_block(kv_idx, bk, jnp.max)
    q_min, q_max = per_block(q_idx, bq, jnp.min), per_block(q_idx, bq, jnp.max)
    kr_min, kr_max = per_block(kv_runs, bk, jnp.min), per_block(kv_runs, bk, jnp.max)
    qr_min, qr_max = per_block(q_runs, bq, jnp.min), per_block(q_runs, bq, jnp.max)
    live = ((kv_min[None, :] <= q_max[:, None])
            & (kr_max[None, :] >= qr_min[:, None]) & (kr_min[None, :] <= qr_max[:, None]))
    one_run = ((kr_min == kr_max)[None, :] & (qr_min == qr_max)[:, None]
               & (kr_min[None, :] == qr_min[:, None]))
    full = (kv_max[None, :] <= q_min[:, None]) & one_run
    return jnp.where(live, jnp.where(full, FULL, MASKED), SKIP).astype(jnp.int32)


def _by_kind(kind, compute, carry):
    """`compute(carry, masked)` for a MASKED or FULL tile; a SKIP tile passes carry through."""
    return jax.lax.switch(kind, [lambda c: c, functools.partial(compute, masked=True),
                                 functools.partial(compute, masked=False)], carry)


def _tile_mask(qr_bq, qi_bq, kr_bs, ki_bs):
    """[b, 1, q, s]: same run and not in the future."""
    mask = (qr_bq[:, :, None] == kr_bs[:, None, :]) & (ki_bs[:, None, :] <= qi_bq[:, :, None])
    return mask[:, None]


def _scores(q_bnqk, k_bnsk):
    scale = q_bnqk.shape[-1] ** -0.5
    return jnp.einsum("bnqk,bnsk->bnqs", q_bnqk, k_bnsk,
                      preferred_element_type=accum_dtype(q_bnqk, k_bnsk)) * scale


def _forward(q, k, v, q_runs, kv_runs, q_idx, kv_idx, bq, bk):
    """q [b, n, rows, k], k and v [b, n, s, k], rows and keys in blocks of bq and bk. Returns
    (out [b, n, rows, k] in v's dtype, lse [b, n, rows] fp32 (or wider))."""
    b, n, t, dk = q.shape
    f32 = accum_dtype(q, k, v)
    nq, nk = t // bq, k.shape[2] // bk
    kinds = _tile_kinds(q_runs, q_idx, kv_runs, kv_idx, bq, bk)

    def query_block(i, carry):
        out, lse = carry
        q_i, qr_i, qi_i = _slice(q, i, bq, 2), _slice(q_runs, i, bq), _slice(q_idx, i, bq)

        def tile(j, carry):
            def compute(carry, masked):
                m, l, acc = carry
                k_j, v_j = _slice(k, j, bk, 2), _slice(v, j, bk, 2)
                s = _scores(q_i, k_j)
                if masked:
                    mask = _tile_mask(qr_i, qi_i, _slice(kv_runs, j, bk), _slice(kv_idx, j, bk))
                    s = jnp.where(mask, s, _NEG)
                m_new = jnp.maximum(m, jnp.max(s, axis=-1))
                p = jnp.exp(s - m_new[..., None])
                if masked:
                    p = jnp.where(mask, p, 0.0)
                alpha = jnp.exp(m - m_new)
                pv = jnp.einsum("bnqs,bnsk->bnqk", p.astype(v_j.dtype), v_j,
                                preferred_element_type=f32)
                return m_new, l * alpha + jnp.sum(p, axis=-1), acc * alpha[..., None] + pv

            return _by_kind(kinds[i, j], compute, carry)

        init = (jnp.full((b, n, bq), _NEG, f32), jnp.zeros((b, n, bq), f32),
                jnp.zeros((b, n, bq, dk), f32))
        m, l, acc = _loop(0, nk, tile, init)
        seen = l > 0  # only block padding sees nothing (every real token sees itself)
        out_i = (acc / jnp.where(seen, l, 1.0)[..., None]).astype(out.dtype)
        lse_i = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)
        return (jax.lax.dynamic_update_slice_in_dim(out, out_i, i * bq, axis=2),
                jax.lax.dynamic_update_slice_in_dim(lse, lse_i, i * bq, axis=2))

    init = (jnp.zeros((b, n, t, dk), v.dtype), jnp.zeros((b, n, t), f32))
    return _loop(0, nq, query_block, init)


def _backward(q, k, v, q_runs, kv_runs, q_idx, kv_idx, out, lse, d_out, bq, bk):
    """Flash-attention backward, in `_forward`'s layout: for each key block, walk the query
    blocks; dK/dV of the key block accumulate in the inner carry, dQ across the outer loop.
    All in fp32 (or wider)."""
    b, n, t, dk = q.shape
    f32 = accum_dtype(q, k, v, d_out)
    nq, nk = t // bq, k.shape[2] // bk
    kinds = _tile_kinds(q_runs, q_idx, kv_runs, kv_idx, bq, bk)
    # D_i = sum_k dO_ik O_ik: the softmax Jacobian's diagonal term, per query row.
    delta = jnp.einsum("bnqk,bnqk->bnq", d_out.astype(f32), out.astype(f32))
    scale = dk ** -0.5

    def key_block(j, carry):
        dq, dk_all, dv_all = carry
        k_j, v_j = _slice(k, j, bk, 2), _slice(v, j, bk, 2)
        kr_j, ki_j = _slice(kv_runs, j, bk), _slice(kv_idx, j, bk)

        def tile(i, carry):
            def compute(carry, masked):
                dk_j, dv_j, dq = carry
                q_i, do_i = _slice(q, i, bq, 2), _slice(d_out, i, bq, 2)
                lse_i, delta_i = _slice(lse, i, bq, 2), _slice(delta, i, bq, 2)
                p = jnp.exp(_scores(q_i, k_j) - lse_i[..., None])
                if masked:
                    mask = _tile_mask(_slice(q_runs, i, bq), _slice(q_idx, i, bq), kr_j, ki_j)
                    p = jnp.where(mask, p, 0.0)
                dv_j = dv_j + jnp.einsum("bnqs,bnqk->bnsk", p.astype(do_i.dtype), do_i,
                                         preferred_element_type=f32)
                dp = jnp.einsum("bnqk,bnsk->bnqs", do_i, v_j, preferred_element_type=f32)
                ds = p * (dp - delta_i[..., None]) * scale
                dq_i = _slice(dq, i, bq, 2) + jnp.einsum("bnqs,bnsk->bnqk", ds, k_j.astype(f32))
                dk_j = dk_j + jnp.einsum("bnqs,bnqk->bnsk", ds, q_i.astype(f32))
                return dk_j, dv_j, jax.lax.dynamic_update_slice_in_dim(dq, dq_i, i * bq, axis=2)

            return _by_kind(kinds[i, j], compute, carry)

        zeros = jnp.zeros(k_j.shape, f32)
        dk_j, dv_j, dq = _loop(0, nq, tile, (zeros, zeros, dq))
        update = lambda a, a_j: jax.lax.dynamic_update_slice_in_dim(a, a_j, j * bk, axis=2)
        return dq, update(dk_all, dk_j), update(dv_all, dv_j)

    init = (jnp.zeros(q.shape, f32), jnp.zeros(k.shape, f32), jnp.zeros(v.shape, f32))
    return _loop(0, nk, key_block, init)


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
    dk, dv = jnp.moveaxis(dk, 1, 2)[:, :s_all], jnp.moveaxis(dv, 1, 2)[:, :s_all]
    if axis is not None:
        scatter = lambda a: jax.lax.psum_scatter(a, axis, scatter_dimension=1, tiled=True)
        dk, dv = scatter(dk), scatter(dv)
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)
