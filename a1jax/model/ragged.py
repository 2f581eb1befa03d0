"""The experts' grouped matmul on Hopper GPUs: JAX's own Mosaic GPU ragged-dot kernels.

XLA:GPU (jaxlib 0.10.2) lowers `jax.lax.ragged_dot` to a dense contraction over every expert,
with a [tokens, experts, features] intermediate (checked in the compiled HLO: 256 experts make
that useless), and its weight gradient the same way. JAX ships Pallas Mosaic GPU kernels for both
products a dropless MoE needs (`jax.experimental.pallas.ops.gpu`): `ragged_dot` (rows grouped by
expert times each group's own weights; with `transpose_rhs`, the data gradient) and
`transposed_ragged_dot` (each group's rows^T times its cotangent rows: the weight gradient).
`ragged_matmul` ties them into one differentiable product. They compile for sm_90a only, take
16-bit operands, and need dimensions in whole 64-element tiles (`mosaic_applies` says whether a
layer qualifies; `dispatch.grouped_swiglu` falls back to its block loop otherwise).

`kernels="reference"` runs the same product and backward with XLA's `ragged_dot_general`: what
the CPU tests check the backward's wiring with (the kernels' own numerics are JAX's, and
`launch/gpu/check.sh` compares them on a GPU).
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np

from a1jax.model.platform import core_count

TILE = 64  # the kernels' k tile for 16-bit operands (128-byte swizzle); dims come in whole tiles
_BLOCK = 128  # m and n tiles where the dimension allows (JAX's kernels' benchmarked range)
_STEPS = 4  # pipelined k steps in flight


def mosaic_applies(dtype, *dims: int) -> str:
    """'' when the Mosaic kernels take a grouped matmul of `dtype` over dimensions `dims`,
    else why not."""
    if jnp.dtype(dtype).itemsize != 2:
        return f"the Mosaic GPU kernels take 16-bit operands, not {jnp.dtype(dtype).name}"
    bad = [d for d in dims if d % TILE]
    if bad:
        return f"dimensions {bad} are not multiples of the kernels' {TILE}-element tile"
    return ""


def _tile(n: int) -> int:
    return _BLOCK if n % _BLOCK == 0 else TILE


@contextlib.contextmanager
def _sm_count_known():
    """jax 0.10.2's `transposed_ragged_dot` reads the SM count from `jax.devices()[0]` while
    tracing. Compiling for a target that is not this machine's (`a1jax.plan --target`), that
    device is the CPU, which has none: for the trace, the mesh's target count stands in."""
    if hasattr(jax.devices()[0], "core_count"):
        yield
        return
    cores = core_count()
    if cores is None:
        raise RuntimeError("the Mosaic weight-gradient kernel needs the target GPU's SM count: "
                           "trace it under a mesh of GPU devices")
    real = jax.devices

    class _Target:
        core_count = cores

    jax.devices = lambda *a, **k: [_Target()]
    try:
        yield
    finally:
        jax.devices = real


def _product(x_ak, w_ekn, group_sizes, kernels: str, transpose: bool = False):
    """Rows grouped by `group_sizes` times their group's w ([e, k, n]; [e, n, k] transposed)."""
    if kernels == "reference":
        w = jnp.swapaxes(w_ekn, 1, 2) if transpose else w_ekn
        return jax.lax.ragged_dot(x_ak, w, group_sizes,
                                  preferred_element_type=jnp.float32).astype(x_ak.dtype)
    from jax.experimental.pallas.ops.gpu import ragged_dot_mgpu
    n = w_ekn.shape[1] if transpose else w_ekn.shape[2]
    return ragged_dot_mgpu.ragged_dot(
        x_ak, w_ekn.astype(x_ak.dtype), group_sizes=group_sizes, block_m=_BLOCK,
        block_n=_tile(n), block_k=TILE, max_concurrent_steps=_STEPS, grid_block_n=1,
        transpose_rhs=transpose)


def _weight_grad(x_ak, dy_an, group_sizes, kernels: str):
    """Per group: its rows of x, transposed, times its rows of dy: [e, k, n]."""
    if kernels == "reference":
        dims = jax.lax.RaggedDotDimensionNumbers(
            dot_dimension_numbers=(((0,), (0,)), ((), ())), lhs_ragged_dimensions=[0],
            rhs_group_dimensions=[])
        return jax.lax.ragged_dot_general(x_ak, dy_an, group_sizes, dims,
                                          preferred_element_type=jnp.float32)
    from jax.experimental.pallas.ops.gpu import transposed_ragged_dot_mgpu
    with _sm_count_known():
        return transposed_ragged_dot_mgpu.transposed_ragged_dot(
            x_ak, dy_an.astype(x_ak.dtype), group_sizes=group_sizes,
            block_m=_tile(x_ak.shape[1]), block_n=_tile(dy_an.shape[1]), block_k=TILE,
            max_concurrent_steps=_STEPS, grid_block_n=1)


def _rows_in_groups(y_an, group_sizes):
    """Zeros for the rows past the last group (the kernels leave them unspecified)."""
    live = jnp.arange(y_an.shape[0]) < jnp.sum(group_sizes)
    return jnp.where(live[:, None], y_an, 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def ragged_matmul(x_ak, w_ekn, group_sizes, kernels: str = "mosaic"):
    """[a, k] rows, sorted into consecutive groups of `group_sizes` [e], times each group's
    w_ekn[g]: [a, n]; rows past the groups give zeros. Differentiable in x and w."""
    return _rows_in_groups(_product(x_ak, w_ekn, group_sizes, kernels), group_sizes)


def _fwd(x_ak, w_ekn, group_sizes, kernels):
    return ragged_matmul(x_ak, w_ekn, group_sizes, kernels), (x_ak, w_ekn, group_sizes)


def _bwd(kernels, residuals, dy_an):
    x_ak, w_ekn, group_sizes = residuals
    dy_an = _rows_in_groups(dy_an, group_sizes)
    dx_ak = _rows_in_groups(_product(dy_an.astype(x_ak.dtype), w_ekn, group_sizes, kernels,
                                     transpose=True), group_sizes)
    dw_ekn = _weight_grad(x_ak, dy_an, group_sizes, kernels).astype(w_ekn.dtype)
    return dx_ak, dw_ekn, np.zeros(group_sizes.shape, jax.dtypes.float0)


ragged_matmul.defvjp(_fwd, _bwd)
