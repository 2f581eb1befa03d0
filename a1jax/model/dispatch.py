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
import numpy as np


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


@jax.custom_vjp
def take_rows(x_rd, index, valid, back_index, back_valid):
    """`where(valid, x[index], 0)` for an injective row map, whose gradient is the gather by the
    inverse map (`back_index`, `back_valid`) rather than a scatter-add: XLA's CPU scatter is
    serial, and these permutations are the whole MoE's data movement."""
    return jnp.where(valid[:, None], x_rd[index], 0)


def _take_rows_fwd(x_rd, index, valid, back_index, back_valid):
    return take_rows(x_rd, index, valid, back_index, back_valid), (index, valid, back_index,
                                                                  back_valid)


def _take_rows_bwd(res, g_rd):
    index, valid, back_index, back_valid = res
    none = lambda a: np.zeros(a.shape, jax.dtypes.float0)
    return (jnp.where(back_valid[:, None], g_rd[back_index], 0), none(index), none(valid),
            none(back_index), none(back_valid))


take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)


def grouped_swiglu(x_td, weights_tk, experts_tk, gate_proj, up_proj, down_proj,
                   block: int = DROPLESS_BLOCK, valid_tk=None, impl: str = "auto"):
    """Dropless grouped matmul: assignments sorted by expert, each expert's SwiGLU applied to its
    own group only, results weighted and summed back per token. Assignments with `valid_tk`
    False are sorted after every expert's group and contribute nothing.

    `impl`: "ragged" uses `jax.lax.ragged_dot` (grouped GEMM kernels on GPU and TPU); "blocks"
    pads each group to whole blocks of `block` rows and runs one batched matmul against each
    block's gathered expert weights. "auto" picks "blocks" on the CPU, because XLA's CPU backend
    lowers `ragged_dot` to a masked contraction over all experts (the cost of `dense`), and
    "ragged" elsewhere. Both cost the routed tokens (blocks: plus at most (e+1)(block-1) rows).
    All data movement is row gathers by permutations (`take_rows`), forward and backward."""
    if impl == "auto":
        impl = "blocks" if jax.default_backend() == "cpu" else "ragged"
    t, k = experts_tk.shape
    e, d, _ = gate_proj.shape
    a = t * k
    flat_e = experts_tk.reshape(a)
    if valid_tk is not None:
        flat_e = jnp.where(valid_tk.reshape(a), flat_e, e)  # e: a group after the real ones
    order = jnp.argsort(flat_e, stable=True)  # sorted position -> assignment
    inverse = jnp.argsort(order)  # assignment -> sorted position
    sorted_e = flat_e[order]
    everywhere = jnp.ones((a,), bool)
    # Assignment i is token i // k: repeat rows k times, then permute into expert order.
    x_ad = take_rows(jnp.repeat(x_td, k, axis=0), order, everywhere, inverse, everywhere)
    sizes = jnp.bincount(flat_e, length=e + 1)
    if impl == "ragged":
        group_sizes = sizes[:e].astype(jnp.int32)  # rows past the groups (invalid) give zeros
        h = (jax.nn.silu(jax.lax.ragged_dot(x_ad, gate_proj, group_sizes))
             * jax.lax.ragged_dot(x_ad, up_proj, group_sizes))
        y_ad = jax.lax.ragged_dot(h, down_proj, group_sizes)
    elif impl == "blocks":
        padded = (sizes + block - 1) // block * block
        padded_end = jnp.cumsum(padded)
        start = jnp.cumsum(sizes) - sizes
        dest = padded_end[sorted_e] - padded[sorted_e] + jnp.arange(a) - start[sorted_e]
        num_blocks = dropless_num_blocks(a, e, block)
        rows = jnp.arange(num_blocks * block)
        group = jnp.minimum(jnp.searchsorted(padded_end, rows, side="right"), e)
        offset = rows - (padded_end[group] - padded[group])
        row_valid = offset < sizes[group]
        row_src = jnp.where(row_valid, start[group] + offset, 0)
        x_nbd = take_rows(x_ad, row_src, row_valid, dest, everywhere).reshape(num_blocks, block, d)
        # Blocks past the real groups hold zeros (their expert id is clamped; output is 0).
        block_expert = jnp.minimum(group[::block], e - 1)
        y_rd = _blocks_swiglu(x_nbd, block_expert, gate_proj, up_proj, down_proj).reshape(-1, d)
        y_ad = take_rows(y_rd, dest, everywhere, row_src, row_valid)
    else:
        raise ValueError(f"unknown grouped matmul impl {impl!r}")
    if valid_tk is not None:
        y_ad = jnp.where((sorted_e < e)[:, None], y_ad, 0)
    y_tkd = take_rows(y_ad, inverse, everywhere, order, everywhere).reshape(t, k, d)
    return jnp.einsum("tkd,tk->td", y_tkd, weights_tk.astype(y_tkd.dtype))


# Gathering every block's expert weights at once costs num_blocks x 3 x d x f; past this many
# bytes the blocks go through a loop, a group of blocks at a time (each group's gather recomputed
# in the backward), so memory stays near one group's weights whatever the token count. At the
# 35B's 16K tokens per device the one-shot gather would be ~15 GB per layer, and its gradient
# more.
BLOCKS_GATHER_BYTES = 256 * 2**20


def _blocks_swiglu(x_nbd, block_expert, gate_proj, up_proj, down_proj,
                   max_bytes: int = BLOCKS_GATHER_BYTES):
    """SwiGLU of each block of rows with its block's expert weights."""

    def swiglu(x_nbd, experts_n):
        h = (jax.nn.silu(jnp.einsum("nbd,ndf->nbf", x_nbd, gate_proj[experts_n]))
             * jnp.einsum("nbd,ndf->nbf", x_nbd, up_proj[experts_n]))
        return jnp.einsum("nbf,nfd->nbd", h, down_proj[experts_n])

    n, _, d = x_nbd.shape
    per_block = 3 * gate_proj.shape[1] * gate_proj.shape[2] * gate_proj.dtype.itemsize
    group = max(1, max_bytes // per_block)
    if n <= group:
        return swiglu(x_nbd, block_expert)
    groups = -(-n // group)
    pad = groups * group - n  # padded blocks take expert 0 on zero rows: their output is unused
    x_gbrd = jnp.pad(x_nbd, ((0, pad), (0, 0), (0, 0))).reshape(groups, group, *x_nbd.shape[1:])
    experts_gb = jnp.pad(block_expert, (0, pad)).reshape(groups, group)
    step = jax.checkpoint(lambda _, xs: (None, swiglu(*xs)))
    _, y_gbrd = jax.lax.scan(step, None, (x_gbrd, experts_gb))
    return y_gbrd.reshape(groups * group, *x_nbd.shape[1:])[:n]


def dropless_num_blocks(assignments: int, experts: int, block: int) -> int:
    """Static bound on the blocks `grouped_swiglu` loops over: every group (the experts' and the
    invalid assignments') padded to whole blocks."""
    return (assignments + (experts + 1) * (block - 1) + block - 1) // block


def dropless_compiled_flops(tokens: int, top_k: int, experts: int, d: int, f: int,
                            block: int = DROPLESS_BLOCK, dtype=jnp.float32) -> dict[str, float]:
    """FLOPs of the compiled `dropless` layer on the current backend (XLA's cost analysis), beside
    the routed FLOPs (3 matmuls of d x f per token and expert it is routed to)."""
    sds = jax.ShapeDtypeStruct
    args = (sds((tokens, d), dtype), sds((tokens, top_k), jnp.float32),
            sds((tokens, top_k), jnp.int32), sds((experts, d, f), dtype),
            sds((experts, d, f), dtype), sds((experts, f, d), dtype))
    compiled = jax.jit(functools.partial(dropless, block=block)).lower(*args).compile()
    return {"flops": compiled.cost_analysis()["flops"],
            "routed_flops": 2.0 * tokens * top_k * 3 * d * f}
