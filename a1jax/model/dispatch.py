"""Expert dispatch strategies: how routed tokens reach their experts' SwiGLU weights.

Each takes tokens x_td, the router's top-k weights and expert ids, and the experts' weights
gate_proj / up_proj [e, d, f] and down_proj [e, f, d]; each returns sum_k w_k * expert_k(x) [t, d].
They compute the same function and are tested against each other.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def dense(x_td, weights_tk, experts_tk, gate_proj, up_proj, down_proj):
    """Every token through every expert, weighted by its (mostly zero) combine weight: the slow,
    obvious reference (cost: all experts, not the routed ones)."""
    e = gate_proj.shape[0]
    combine_te = jnp.sum(jax.nn.one_hot(experts_tk, e, dtype=jnp.float32)
                         * weights_tk[..., None], axis=1)
    h_tef = (jax.nn.silu(jnp.einsum("td,edf->tef", x_td, gate_proj))
             * jnp.einsum("td,edf->tef", x_td, up_proj))
    h_tef = h_tef * combine_te.astype(h_tef.dtype)[..., None]
    return jnp.einsum("tef,efd->td", h_tef, down_proj)


DROPLESS_BLOCK = 64


def dropless(x_td, weights_tk, experts_tk, gate_proj, up_proj, down_proj,
             block: int = DROPLESS_BLOCK):
    """Dropless block-sparse grouped matmul: assignments sorted by expert, each expert's group
    padded to whole blocks of `block` rows, then one small matmul per block against that block's
    expert weights. Cost: the routed tokens plus at most e*(block-1) padding rows.

    Written by hand because `jax.lax.ragged_dot` lowers to a masked contraction over all experts on
    XLA's CPU backend (cost of `dense`); the loop over blocks keeps the routed cost everywhere."""
    t, k = experts_tk.shape
    e, d, _ = gate_proj.shape
    a = t * k
    flat_e = experts_tk.reshape(a)
    order = jnp.argsort(flat_e, stable=True)
    sorted_e = flat_e[order]
    token_of = order // k  # assignment index -> token
    sizes = jnp.bincount(flat_e, length=e)
    padded = (sizes + block - 1) // block * block
    padded_end = jnp.cumsum(padded)
    start = jnp.cumsum(sizes) - sizes
    rank = jnp.arange(a) - start[sorted_e]
    dest = padded_end[sorted_e] - padded[sorted_e] + rank  # row of each assignment in the buffer
    num_blocks = (a + e * (block - 1) + block - 1) // block  # static bound on blocks in use
    rows = num_blocks * block
    x_rd = jnp.zeros((rows, d), x_td.dtype).at[dest].set(x_td[token_of])
    block_starts = jnp.arange(num_blocks) * block
    block_expert = jnp.minimum(jnp.searchsorted(padded_end, block_starts, side="right"), e - 1)
    used = block_starts < padded_end[-1]

    def one_block(_, xs):
        x_bd, expert, in_use = xs

        def compute(x_bd):
            h = (jax.nn.silu(x_bd @ gate_proj[expert]) * (x_bd @ up_proj[expert]))
            return h @ down_proj[expert]

        # Blocks past the last expert's group hold only padding: skip their matmuls.
        return None, jax.lax.cond(in_use, compute, jnp.zeros_like, x_bd)

    _, y_nbd = jax.lax.scan(one_block, None,
                            (x_rd.reshape(num_blocks, block, d), block_expert, used))
    y_ad = y_nbd.reshape(rows, d)[dest] * weights_tk.reshape(a)[order][:, None].astype(x_td.dtype)
    return jnp.zeros((t, d), y_ad.dtype).at[token_of].add(y_ad)


DISPATCH: dict[str, Callable[..., jax.Array]] = {"dense": dense, "dropless": dropless}
