"""Expert dispatch strategies: how routed tokens reach their experts' SwiGLU weights.

Each takes tokens x_td, the router's top-k weights and expert ids, and the experts' weights
gate_proj / up_proj [e, d, f] and down_proj [e, f, d]; each returns (sum_k w_k * expert_k(x) [t, d],
the number of dropped assignments). They compute the same function and are tested against each
other; `expert_parallel` lives in its own module.
"""

from __future__ import annotations

import functools

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
    return jnp.einsum("tef,efd->td", h_tef, down_proj), jnp.zeros((), jnp.int32)


DROPLESS_BLOCK = 64


def dropless(x_td, weights_tk, experts_tk, gate_proj, up_proj, down_proj,
             block: int = DROPLESS_BLOCK):
    return grouped_swiglu(x_td, weights_tk, experts_tk, gate_proj, up_proj, down_proj,
                          block=block), jnp.zeros((), jnp.int32)


def grouped_swiglu(x_td, weights_tk, experts_tk, gate_proj, up_proj, down_proj,
                   block: int = DROPLESS_BLOCK, valid_tk=None):
    """Dropless block-sparse grouped matmul: assignments sorted by expert, each expert's group
    padded to whole blocks of `block` rows, then one small matmul per block against that block's
    expert weights. Cost: the routed tokens plus at most e*(block-1) padding rows.

    Written by hand because `jax.lax.ragged_dot` lowers to a masked contraction over all experts on
    XLA's CPU backend (cost of `dense`); the loop over blocks keeps the routed cost everywhere.
    Assignments with `valid_tk` False are sorted after every expert's group and never computed."""
    t, k = experts_tk.shape
    e, d, _ = gate_proj.shape
    a = t * k
    flat_e = experts_tk.reshape(a)
    if valid_tk is not None:
        flat_e = jnp.where(valid_tk.reshape(a), flat_e, e)  # e: a group after the real ones
    order = jnp.argsort(flat_e, stable=True)
    sorted_e = flat_e[order]
    token_of = order // k  # assignment index -> token
    sizes = jnp.bincount(flat_e, length=e + 1)
    padded = (sizes + block - 1) // block * block
    padded_end = jnp.cumsum(padded)
    start = jnp.cumsum(sizes) - sizes
    rank = jnp.arange(a) - start[sorted_e]
    dest = padded_end[sorted_e] - padded[sorted_e] + rank  # row of each assignment in the buffer
    num_blocks = dropless_num_blocks(a, e, block)
    rows = num_blocks * block
    x_rd = jnp.zeros((rows, d), x_td.dtype).at[dest].set(x_td[token_of])
    block_starts = jnp.arange(num_blocks) * block
    block_expert = jnp.minimum(jnp.searchsorted(padded_end, block_starts, side="right"), e - 1)
    used = block_starts < padded_end[e - 1]  # blocks of real experts' groups

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


def dropless_num_blocks(assignments: int, experts: int, block: int) -> int:
    """Static bound on the blocks `grouped_swiglu` loops over: every group (the experts' and the
    invalid assignments') padded to whole blocks."""
    return (assignments + (experts + 1) * (block - 1) + block - 1) // block


def dropless_compiled_flops(tokens: int, top_k: int, experts: int, d: int, f: int,
                            block: int = DROPLESS_BLOCK, dtype=jnp.float32) -> dict[str, float]:
    """FLOPs of the compiled `dropless` layer on the current backend, from XLA's cost analysis.

    XLA counts a while loop's body once, whatever its trip count; so the body (one block) is
    compiled on its own and counted once per block of the static bound, which the compiled loop's
    `known_trip_count` must equal. Every block is counted as executed (an upper bound: unused
    blocks are skipped at run time)."""
    import re

    sds = jax.ShapeDtypeStruct
    args = (sds((tokens, d), dtype), sds((tokens, top_k), jnp.float32),
            sds((tokens, top_k), jnp.int32), sds((experts, d, f), dtype),
            sds((experts, d, f), dtype), sds((experts, f, d), dtype))
    compiled = jax.jit(functools.partial(dropless, block=block)).lower(*args).compile()
    blocks = dropless_num_blocks(tokens * top_k, experts, block)
    trips = [int(n) for n in re.findall(r'known_trip_count":\{"n":"(\d+)"', compiled.as_text())]
    if blocks not in trips:
        raise RuntimeError(f"compiled dropless has no loop of {blocks} blocks (trips: {trips})")

    def one_block(x_bd, g_df, u_df, d_fd):
        return (jax.nn.silu(x_bd @ g_df) * (x_bd @ u_df)) @ d_fd

    body = jax.jit(one_block).lower(sds((block, d), dtype), sds((d, f), dtype),
                                    sds((d, f), dtype), sds((f, d), dtype)).compile()
    outside = compiled.cost_analysis()["flops"]
    per_block = body.cost_analysis()["flops"]
    return {"flops": outside + (blocks - 1) * per_block, "blocks": blocks,
            "routed_flops": 2.0 * tokens * top_k * 3 * d * f}
