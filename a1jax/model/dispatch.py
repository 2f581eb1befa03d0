"""Expert dispatch strategies: how routed tokens reach their experts' SwiGLU weights.

Each takes tokens x_td, the router's top-k weights and expert ids, and the experts' weights
gate_proj / up_proj [e, d, f] and down_proj [e, f, d]; each returns (sum_k w_k * expert_k(x) [t, d],
the number of dropped assignments). They compute the same function and are tested against each
other; `expert_parallel` lives in its own module.
"""

from __future__ import annotations

import functools
import re

import math

import jax
import jax.numpy as jnp
import numpy as np

from a1jax.model import ragged
from a1jax.model.base import after
from a1jax.model.platform import kernel_platform


def dense(x_td, weights_tk, experts_tk, gate_proj, up_proj, down_proj):
    """Every token through every expert, weighted by its (mostly zero) combine weight: the slow,
    obvious reference (cost: all experts, not the routed ones)."""
    e = gate_proj.shape[0]
    combine_te = jnp.sum(jax.nn.one_hot(experts_tk, e, dtype=weights_tk.dtype)
                         * weights_tk[..., None], axis=1)
    h_tef = (jax.nn.silu(jnp.einsum("td,edf->tef", x_td, gate_proj))
             * jnp.einsum("td,edf->tef", x_td, up_proj))
    h_tef = h_tef * combine_te.astype(h_tef.dtype)[..., None]
    return jnp.einsum("tef,efd->td", h_tef, down_proj), jnp.zeros((), jnp.int32)


DROPLESS_BLOCK = 64


def batched(x_td, weights_tk, experts_tk, gate_proj, up_proj, down_proj,
            capacity_factor: float = 2.0):
    """Decoding's dispatch: each expert's assignments go to `capacity` fixed slots (twice the
    mean load by default) and all experts run as one batched matmul over [experts, slots], the
    results gathered back. An expert with more assignments than slots takes further rounds (its
    assignments past the first `capacity` in the second, and so on) until every assignment has
    run: exact like `dropless`, nothing dropped, each round costing `capacity_factor` times the
    routed FLOPs.

    For the few tokens of a decode step (one per row) that is three large products per round,
    where `dropless`'s blocks are a loop of small products padded to whole blocks and `dense`
    costs every expert for every token; both ran several times slower on a CPU."""
    t, k = experts_tk.shape
    e, d, _ = gate_proj.shape
    a = t * k
    capacity = max(1, math.ceil(capacity_factor * a / e))
    flat_e = experts_tk.reshape(a)
    # Each assignment's place in its expert's queue: how many earlier assignments chose it.
    onehot_ae = jax.nn.one_hot(flat_e, e, dtype=jnp.int32)
    place_a = jnp.sum((jnp.cumsum(onehot_ae, axis=0) - 1) * onehot_ae, axis=1)
    round_a, slot_a = place_a // capacity, place_a % capacity
    x_ad = jnp.repeat(x_td, k, axis=0)

    def one_round(r, y_ad):
        now = round_a == r
        # Assignments of other rounds scatter to expert index e: out of range, dropped.
        x_ecd = jnp.zeros((e, capacity, d), x_td.dtype).at[jnp.where(now, flat_e, e),
                                                           slot_a].set(x_ad, mode="drop")
        h_ecf = (jax.nn.silu(jnp.einsum("ecd,edf->ecf", x_ecd, gate_proj))
                 * jnp.einsum("ecd,edf->ecf", x_ecd, up_proj))
        y_ecd = jnp.einsum("ecf,efd->ecd", h_ecf, down_proj)
        return jnp.where(now[:, None], y_ecd[flat_e, slot_a], y_ad)

    rounds = jnp.max(round_a) + 1
    y_ad = jax.lax.fori_loop(0, rounds, one_round, jnp.zeros((a, d), x_td.dtype))
    y_tkd = y_ad.reshape(t, k, d)
    return (jnp.sum(y_tkd * weights_tk.astype(y_tkd.dtype)[:, :, None], axis=1),
            jnp.zeros((), jnp.int32))


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

    `impl`: "mosaic" runs JAX's Mosaic GPU ragged-dot kernels (a1jax.model.ragged; Hopper,
    16-bit; off a GPU, the same product through XLA's ragged_dot_general, for tests); "ragged"
    uses `jax.lax.ragged_dot` (TPU); "blocks" pads each group to whole blocks of `block` rows and
    runs each block's product against its expert's weights in a loop. "auto" picks by the
    platform compiled for (`kernel_platform`): "mosaic" on a GPU where its kernels take the
    layer, "ragged" on a TPU, "blocks" otherwise. XLA:CPU and XLA:GPU lower `ragged_dot` to a
    masked contraction over all experts (the cost of `dense`, and a [tokens, experts, features]
    buffer). Each costs the routed tokens (blocks: plus at most (e+1)(block-1) rows). All data
    movement is row gathers by permutations (`take_rows`), forward and backward."""
    t, k = experts_tk.shape
    e, d, f = down_proj.shape[0], down_proj.shape[2], down_proj.shape[1]
    if impl == "auto":
        impl = auto_impl(x_td.dtype, d, f)
    a = t * k
    flat_e = experts_tk.reshape(a)
    if valid_tk is not None:
        flat_e = jnp.where(valid_tk.reshape(a), flat_e, e)  # e: a group after the real ones
    order = jnp.argsort(flat_e, stable=True)  # sorted position -> assignment
    # assignment -> sorted position: a scatter of positions, not a second sort
    inverse = jnp.zeros_like(order).at[order].set(jnp.arange(a, dtype=order.dtype),
                                                  unique_indices=True)
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
    elif impl == "mosaic":
        y_ad = _mosaic_swiglu(x_ad, sizes[:e].astype(jnp.int32), gate_proj, up_proj, down_proj)
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
        # Only the experts' groups are computed: the blocks after them (the invalid
        # assignments' group, then zeros) give zeros; their expert id is clamped.
        block_expert = jnp.minimum(group[::block], e - 1)
        used = padded_end[e - 1] // block
        y_rd = _blocks_swiglu(x_nbd, block_expert, gate_proj, up_proj, down_proj,
                              used).reshape(-1, d)
        y_ad = take_rows(y_rd, dest, everywhere, row_src, row_valid)
    else:
        raise ValueError(f"unknown grouped matmul impl {impl!r}")
    if valid_tk is not None:
        y_ad = jnp.where((sorted_e < e)[:, None], y_ad, 0)
    y_tkd = take_rows(y_ad, inverse, everywhere, order, everywhere).reshape(t, k, d)
    # A product and a sum over k, not an einsum: as a dot that is t batched [1, d] x [d, k]
    # products (and two more in the backward), which XLA's CPU backend runs one by one.
    return jnp.sum(y_tkd * weights_tk.astype(y_tkd.dtype)[:, :, None], axis=1)


def auto_impl(dtype, d: int, f: int) -> str:
    """`grouped_swiglu`'s kernel for the platform being compiled for (see there)."""
    platform = kernel_platform()
    if platform == "gpu" and not ragged.mosaic_applies(dtype, d):
        return "mosaic"
    return "ragged" if platform == "tpu" else "blocks"


def _mosaic_swiglu(x_ad, group_sizes, gate_proj, up_proj, down_proj):
    """SwiGLU through the Mosaic kernels: gate and up as one product ([d, 2f] per expert), down
    as another. An f that is not whole tiles is zero-padded (exact: the padded features are
    silu(0) * 0 = 0 and meet zero rows of down)."""
    f = down_proj.shape[1]
    pad = -f % ragged.TILE
    if pad:
        gate_proj, up_proj = (jnp.pad(w, ((0, 0), (0, 0), (0, pad))) for w in (gate_proj, up_proj))
        down_proj = jnp.pad(down_proj, ((0, 0), (0, pad), (0, 0)))
    kernels = "mosaic" if kernel_platform() == "gpu" else "reference"
    w_gate_up = jnp.concatenate([gate_proj, up_proj], axis=-1).astype(x_ad.dtype)
    gate_up = ragged.ragged_matmul(x_ad, w_gate_up, group_sizes, kernels)
    gate, up = jnp.split(gate_up, 2, axis=-1)
    h = (jax.nn.silu(gate.astype(jnp.float32)) * up.astype(jnp.float32)).astype(x_ad.dtype)
    return ragged.ragged_matmul(h, down_proj.astype(x_ad.dtype), group_sizes, kernels)


def _blocks_swiglu(x_nbd, block_expert, gate_proj, up_proj, down_proj, used=None):
    """SwiGLU of each block of rows with its block's expert weights, for the first `used` blocks
    (all when None; the rest give zeros). `block_expert` is sorted over those blocks.

    Written as loops with a hand-written backward rather than one batched matmul against
    every block's gathered weights: XLA's CPU backend runs a batched matmul of many small
    [block, d] x [d, f] products at about a seventh of a single large matmul's rate, the
    gather copies num_blocks x 3 x d x f of weights (15 GB per layer at the 35B's 16K tokens
    per device), and autodiff of the gather scatters the weight gradients back serially.

    A loop over experts, each reading its weights once (a dynamic slice is a copy on this
    backend) and running a loop over its own blocks; the backward adds each block's weight
    gradients to its expert's, in place, in fp32. Gate and up run as one product
    against their weights side by side ([d, 2f]), forward and backward: on these cores a small
    matmul's call costs about as much as its arithmetic. The trip counts are dynamic because
    the static bound on blocks (`dropless_num_blocks`) assumes every group wastes a block's
    worth of padding."""
    if used is None:
        used = jnp.int32(x_nbd.shape[0])
    return _fused_blocks(x_nbd, block_expert, jnp.asarray(used, jnp.int32), gate_proj, up_proj,
                         down_proj)


def _expert(w, e):
    return jax.lax.dynamic_index_in_dim(w, e, axis=0, keepdims=False)


def _block_forward(x_bd, w_gate_up, w_down):
    """One block through one expert (gate and up weights side by side, [d, 2f]): (output,
    gate and up pre-activations side by side, for the backward)."""
    f = w_down.shape[0]
    gate_up_bf = x_bd @ w_gate_up
    return (jax.nn.silu(gate_up_bf[:, :f]) * gate_up_bf[:, f:]) @ w_down, gate_up_bf


def _per_expert(block_expert, used, experts, body, init):
    """`body(e, first, last, carry)` for every expert e, where blocks [first, last) are its
    share of the first `used` blocks."""
    live = jnp.arange(block_expert.shape[0]) < used
    count = jnp.sum((block_expert[None, :] == jnp.arange(experts)[:, None]) & live, axis=1,
                    dtype=jnp.int32)
    first = jnp.cumsum(count) - count
    return jax.lax.fori_loop(0, experts, lambda e, c: body(e, first[e], first[e] + count[e], c),
                             init)


# An expert's consecutive blocks are computed this many at a time: its count // 8 runs of 8
# blocks, then at most one run each of 4, 2 and 1. On a 2-core AVX-512 CPU a 64-row product
# runs at half the rate of a 512-row one (98 against 192 GFLOP/s for [rows, 256] x [256, 256]),
# and a run reads the same padded layout, so the padding (and the FLOP bound) stays that of
# one block.
BLOCK_RUNS = (8, 4, 2, 1)


def _run_sizes(num_blocks: int) -> tuple[int, ...]:
    """The sizes in `BLOCK_RUNS` that fit in `num_blocks` blocks (no group can use the rest)."""
    return tuple(size for size in BLOCK_RUNS if size <= num_blocks)


def _over_runs(first, last, num_blocks, step, carry):
    """`step(i, size, carry)` over blocks [first, last) of `num_blocks` as runs of
    `BLOCK_RUNS` blocks: the run of `size` blocks starting at block i."""
    start, remaining = first, last - first
    for size in _run_sizes(num_blocks):
        runs = remaining // size
        carry = jax.lax.fori_loop(0, runs, lambda j, c, start=start, size=size: step(
            start + j * size, size, c), carry)
        start, remaining = start + runs * size, remaining - runs * size
    return carry


def _rows(a_nb, i, size):
    """Blocks [i, i + size) of a [n, b, ...] array as [size * b, ...] rows."""
    run = jax.lax.dynamic_slice_in_dim(a_nb, i, size, axis=0)
    return run.reshape(size * a_nb.shape[1], *a_nb.shape[2:])


def _put_rows(a_nb, rows, i):
    """Rows written back as blocks [i, i + size) of a [n, b, ...] array."""
    run = rows.reshape(-1, *a_nb.shape[1:]).astype(a_nb.dtype)
    return jax.lax.dynamic_update_slice_in_dim(a_nb, run, i, axis=0)


@jax.custom_vjp
def _fused_blocks(x_nbd, block_expert, used, gate_proj, up_proj, down_proj):
    return _fused_fwd(x_nbd, block_expert, used, gate_proj, up_proj, down_proj)[0]


def _fused_fwd(x_nbd, block_expert, used, gate_proj, up_proj, down_proj):
    gate_up = jnp.concatenate([gate_proj, up_proj], axis=-1)
    n, b, _ = x_nbd.shape

    def expert(e, first, last, carry):
        w_gate_up, w_down = _expert(gate_up, e), _expert(down_proj, e)

        def run(i, size, carry):
            y_nbd, gate_up_nbf = carry
            y_rd, gate_up_rf = _block_forward(_rows(x_nbd, i, size), w_gate_up, w_down)
            return _put_rows(y_nbd, y_rd, i), _put_rows(gate_up_nbf, gate_up_rf, i)

        return _over_runs(first, last, x_nbd.shape[0], run, carry)

    init = (jnp.zeros_like(x_nbd), jnp.zeros((n, b, gate_up.shape[-1]), x_nbd.dtype))
    y_nbd, gate_up_nbf = _per_expert(block_expert, used, gate_proj.shape[0], expert, init)
    return y_nbd, (x_nbd, block_expert, used, gate_proj, up_proj, down_proj, gate_up_nbf)


def _fused_bwd(residuals, dy_nbd):
    """Row-major throughout: the weight gradients are products over a block's rows (x^T dy).
    (Transposing the blocks once outside the loop so that every product in it was a plain one
    cost 15 ms a layer in copies, more than the transposed products themselves.)"""
    x_nbd, block_expert, used, gate_proj, up_proj, down_proj, gate_up_nbf = residuals
    experts, d, f = gate_proj.shape
    f32 = jnp.promote_types(x_nbd.dtype, jnp.float32)  # accumulate in fp32 (fp64 stays fp64)
    over_rows = (((0,), (0,)), ((), ()))  # [b, m] x [b, n] -> [m, n]
    over_features = (((1,), (1,)), ((), ()))  # [b, n] x [m, n] -> [b, m]
    dot = lambda a, b, dims: jax.lax.dot_general(a, b, dims, preferred_element_type=f32)

    # The side-by-side weights, the zeroed gradients and the dx buffer are made from values
    # that depend on the cotangent (`after`). XLA's CPU scheduler otherwise makes them for every
    # layer at the start of the backward, where all are live at once (0.7 GiB in the bench
    # model's step); an optimization barrier does not survive its pipeline.
    (gate_proj, up_proj), = after(dy_nbd, [gate_proj, up_proj])
    gate_up = jnp.concatenate([gate_proj, up_proj], axis=-1)
    zeros, = after(dy_nbd, [jnp.zeros((experts, d, 2 * f), f32), jnp.zeros(down_proj.shape, f32),
                            jnp.zeros(x_nbd.shape, x_nbd.dtype)])

    def add(acc, e, update):
        # In place, fused with the read (a carried [d, 2f] sum plus each product was a separate,
        # slower add on this backend).
        return jax.lax.dynamic_update_index_in_dim(acc, _expert(acc, e) + update, e, axis=0)

    def expert(e, first, last, carry):
        w_gate_up, w_down = _expert(gate_up, e), _expert(down_proj, e)

        def run(i, size, carry):
            d_gate_up, d_down, dx_nbd = carry
            x_bd, dy_bd = _rows(x_nbd, i, size), _rows(dy_nbd, i, size)
            gate_up_bf = _rows(gate_up_nbf, i, size).astype(f32)
            gate_bf, up_bf = gate_up_bf[:, :f], gate_up_bf[:, f:]
            sig = jax.nn.sigmoid(gate_bf)
            silu = gate_bf * sig
            dh_bf = dot(dy_bd, w_down, over_features)
            d_down = add(d_down, e, dot((silu * up_bf).astype(dy_bd.dtype), dy_bd, over_rows))
            d_gate_up_bf = jnp.concatenate([dh_bf * up_bf * sig * (1 + gate_bf * (1 - sig)),
                                            dh_bf * silu], axis=-1).astype(x_bd.dtype)
            dx_bd = dot(d_gate_up_bf, w_gate_up, over_features)
            d_gate_up = add(d_gate_up, e, dot(x_bd, d_gate_up_bf, over_rows))
            return d_gate_up, d_down, _put_rows(dx_nbd, dx_bd, i)

        return _over_runs(first, last, x_nbd.shape[0], run, carry)

    d_gate_up, d_down, dx_nbd = _per_expert(block_expert, used, experts, expert, tuple(zeros))
    none = lambda a: np.zeros(a.shape, jax.dtypes.float0)
    return (dx_nbd, none(block_expert), none(used), d_gate_up[..., :f].astype(gate_proj.dtype),
            d_gate_up[..., f:].astype(up_proj.dtype), d_down.astype(down_proj.dtype))


_fused_blocks.defvjp(_fused_fwd, _fused_bwd)


def dropless_num_blocks(assignments: int, experts: int, block: int) -> int:
    """Static bound on the blocks `grouped_swiglu` loops over: every group (the experts' and the
    invalid assignments') padded to whole blocks."""
    return (assignments + (experts + 1) * (block - 1) + block - 1) // block


def dropless_compiled_flops(tokens: int, top_k: int, experts: int, d: int, f: int,
                            block: int = DROPLESS_BLOCK, dtype=jnp.float32) -> dict[str, float]:
    """FLOPs of the compiled `dropless` layer on the current backend (XLA's cost analysis), beside
    the routed FLOPs (3 matmuls of d x f per token and expert it is routed to).

    XLA's cost analysis counts a while loop's body once, whatever its trip count (and a nested
    loop's once in all). Where the layer runs the blocks loops (the CPU: one loop per run size
    in `BLOCK_RUNS` that fits the blocks, a run of s blocks counted as s blocks), one block's
    product, compiled alone with the same shapes, is counted num_blocks - (the sum of those
    sizes) more times: an upper bound, as the loops run only the experts' blocks. The compiled
    layer must then hold exactly one loop per such size that runs matmuls itself (not through a
    loop nested in it), or the count would be wrong."""
    sds = jax.ShapeDtypeStruct
    weights = (sds((experts, d, f), dtype), sds((experts, d, f), dtype), sds((experts, f, d), dtype))
    args = (sds((tokens, d), dtype), sds((tokens, top_k), jnp.float32),
            sds((tokens, top_k), jnp.int32), *weights)
    compiled = jax.jit(functools.partial(dropless, block=block)).lower(*args).compile()
    flops = compiled.cost_analysis()["flops"]
    loops = _loops_with_matmuls(compiled.as_text())
    if kernel_platform() == "cpu":
        num_blocks = dropless_num_blocks(tokens * top_k, experts, block)
        sizes = _run_sizes(num_blocks)
        if loops != len(sizes):
            raise RuntimeError(f"expected the {len(sizes)} blocks loops alone in the "
                               f"compiled layer, found {loops} loops with matmuls")
        body = jax.jit(_block_forward).lower(sds((block, d), dtype), sds((d, 2 * f), dtype),
                                             sds((f, d), dtype)).compile()
        flops += (num_blocks - sum(sizes)) * body.cost_analysis()["flops"]
    return {"flops": flops, "routed_flops": 2.0 * tokens * top_k * 3 * d * f}


def _loops_with_matmuls(hlo: str) -> int:
    """How many while loops in an HLO module's text run a matmul in their body (through any
    fusion or call it makes, but not through a loop nested in it)."""
    bodies, name = {}, None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and "{" in line and "%" in line:
            name = line.split("%", 1)[1].split(" ", 1)[0]
            bodies[name] = []
        elif name is not None:
            bodies[name].append(line)

    def has_dot(comp: str, seen: set) -> bool:
        if comp in seen or comp not in bodies:
            return False
        seen.add(comp)
        text = "\n".join(bodies[comp])
        return " dot(" in text or any(has_dot(c, seen) for c in re.findall(
            r"(?:calls|to_apply)=%([\w.\-]+)", text))

    whiles = re.findall(r" while\(.*?body=%([\w.\-]+)", hlo)
    return sum(has_dot(body, set()) for body in whiles)
