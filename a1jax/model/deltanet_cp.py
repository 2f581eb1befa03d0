"""Context-parallel Gated DeltaNet: the conv halo and the recurrent state cross sequence shards.

Time is in zigzag order (a1jax.model.context): shard i holds chunks i and 2P-1-i of the 2P
chunks. Each shard treats its two chunks as two rows and, per row:

1. conv halo: the `window - 1` pre-conv tokens before the chunk come from the chunk before it
   (chunk i-1 is on shard i-1, chunk 2P-2-i on shard i+1, or on this shard when i = P-1), by
   ppermute; their run ids come along, so a segment starting at the shard edge reads no halo;
2. state summary: the delta rule is affine in its incoming state, S_out = M S_in + B, and each
   output is o_t = o_t^0 + S_in^T q~_t. One chunked pass computes all of it: the state gets dk
   extra value columns that start as the identity and receive no values, so they carry M (and
   q~ comes out as their outputs); the real columns start at zero and give B and o^0. A segment
   start inside the chunk resets the extra columns too, so M is zero from there on;
3. the (M, B) summaries of all 2P chunks are all-gathered (2P small [dk, dk + dv] matrices per
   head) and folded in chunk order, S_c+1 = M_c (keep_c S_c) + B_c, where keep_c is 0 when
   chunk c starts a new segment; each shard takes the states entering its two chunks and adds
   S_in^T q~ to its outputs.

Communication per layer: two halo ppermutes and one small all-gather; no activation of full
length exists anywhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from a1jax.model.context import SequenceShards, check_length, over_sequence


def context_parallel_deltanet(shards: SequenceShards, qkv_btc: jax.Array, g_bth: jax.Array,
                              beta_bth: jax.Array, runs_bt: jax.Array, w_conv_wc: jax.Array,
                              mix) -> jax.Array:
    """The DeltaNet core with time split over `shards.axis` (zigzag order); returns o_bthv fp32.

    `mix(qkv_btc, runs_bt, halo_btc, halo_runs_bt, g_bth, beta_bth, w_conv_wc)` is the per-row
    core: conv with the halo as left context, then the delta rule on values widened by dk
    identity columns from the state [0 | I]; it returns (o_aug_bthv, final_state_aug). It runs
    on both local chunks at once, as two rows."""
    halo = max(w_conv_wc.shape[0] - 1, 1)
    check_length(shards, qkv_btc.shape[1], halo)
    axis, size = shards.axis, shards.size

    def local(qkv, g, beta, runs, w_conv):
        b, tl, ch = qkv.shape
        i = jax.lax.axis_index(axis)
        halves = lambda a: a.reshape(b, 2, tl // 2, *a.shape[2:])
        rows = lambda a: a.reshape(b * 2, *a.shape[2:])
        qkv_2, runs_2 = halves(qkv), halves(runs)

        # 1. Halo: the pre-conv tokens and their runs before each local chunk (at least one
        # token even for a window of 1: its run says whether the chunk continues a segment).
        tail_x, tail_r = qkv_2[:, :, tl // 2 - halo:], runs_2[:, :, tl // 2 - halo:]
        forward = [(j, j + 1) for j in range(size - 1)]
        backward = [(j + 1, j) for j in range(size - 1)]
        first, last = i == 0, i == size - 1
        early_x = jax.lax.ppermute(tail_x[:, 0], axis, forward)  # zeros on shard 0
        early_r = jnp.where(first, -1, jax.lax.ppermute(tail_r[:, 0], axis, forward))
        late_x = jnp.where(last, tail_x[:, 0], jax.lax.ppermute(tail_x[:, 1], axis, backward))
        late_r = jnp.where(last, tail_r[:, 0], jax.lax.ppermute(tail_r[:, 1], axis, backward))
        halo_x = jnp.stack([early_x, late_x], axis=1)  # [b, 2, halo, ch]
        halo_r = jnp.stack([early_r, late_r], axis=1)

        # 2. Per chunk: outputs from a zero state, and the affine summary (M, B, q~).
        o_aug, s_aug = mix(rows(qkv_2), rows(runs_2), rows(halo_x), rows(halo_r),
                           rows(halves(g)), rows(halves(beta)), w_conv)
        dv = o_aug.shape[-1] - s_aug.shape[-2]
        o0_rthv, q_tilde_rthk = o_aug[..., :dv], o_aug[..., dv:]
        b_rhkv, m_rhkk = s_aug[..., :dv], s_aug[..., dv:]
        keep_r = (runs_2[:, :, 0] == halo_r[:, :, -1]).reshape(b * 2).astype(m_rhkk.dtype)

        # 3. Fold all 2P summaries in chunk order.
        gather = lambda a: jax.lax.all_gather(a.reshape(b, 2, *a.shape[1:]), axis)
        m_all, b_all, keep_all = gather(m_rhkk), gather(b_rhkv), gather(keep_r)
        order = [(c, 0) for c in range(size)] + [(size - 1 - c, 1) for c in range(size)]
        pick = lambda a: jnp.stack([a[shard, :, slot] for shard, slot in order])
        m_all, b_all, keep_all = pick(m_all), pick(b_all), pick(keep_all)

        def fold(s_bhkv, xs):
            m_bhkk, b_bhkv, keep_b = xs
            s_in = s_bhkv * keep_b[:, None, None, None]
            s_out = jnp.einsum("bhkj,bhjv->bhkv", m_bhkk, s_in,
                               precision=jax.lax.Precision.HIGHEST) + b_bhkv
            return s_out, s_in

        _, s_in_all = jax.lax.scan(fold, jnp.zeros_like(b_all[0]), (m_all, b_all, keep_all))
        s_in_2 = jnp.stack([s_in_all[i], s_in_all[2 * size - 1 - i]], axis=1)
        correction = jnp.einsum("rthk,rhkv->rthv", q_tilde_rthk, rows(s_in_2),
                                precision=jax.lax.Precision.HIGHEST)
        o = o0_rthv + correction
        return o.reshape(b, tl, *o.shape[2:])

    return over_sequence(shards, local, [qkv_btc, g_bth, beta_bth, runs_bt], [w_conv_wc])
