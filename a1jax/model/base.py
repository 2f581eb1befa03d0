"""Small pieces every layer uses: logically-named parameters, norms, segment bookkeeping."""

from __future__ import annotations

import functools
import itertools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


def param(module: nn.Module, name: str, shape: Sequence[int], axes: Sequence[str | None],
          init: Initializer) -> jax.Array:
    """A float32 parameter whose dimensions carry logical axis names (mapped to mesh axes by the
    sharding rules, never by the layer)."""
    assert len(shape) == len(axes), (name, shape, axes)
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape),
                        jnp.float32)


def normal(std: float) -> Initializer:
    return nn.initializers.normal(stddev=std)


def accum_dtype(*arrays: jax.Array) -> jnp.dtype:
    """The dtype for softmax, norm, RoPE, router and loss math: fp32, or wider when the inputs
    are (bf16 and fp32 -> fp32; fp64, in precision tests, stays fp64)."""
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def rms_normalize(x: jax.Array, eps: float) -> jax.Array:
    """x / rms(x) over the last axis, in fp32 (or wider: `accum_dtype`)."""
    x = x.astype(accum_dtype(x))
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    """`rms_normalize(x) * (1 + w)`, in x's dtype. Its backward keeps only x and the per-row
    inverse rms (autodiff would also keep fp32 copies of x and of the normalised x, three
    activations per norm: a fifth of the bench model's step memory)."""
    return _rms_norm_fwd(x, w, eps)[0]


def _rms_norm_fwd(x, w, eps):
    x32 = x.astype(accum_dtype(x, w))
    inv = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return (x32 * inv * (1.0 + w)).astype(x.dtype), (x, w, inv)


def _rms_norm_bwd(eps, residuals, g):
    del eps
    x, w, inv = residuals
    normed = x.astype(inv.dtype) * inv
    g32 = g.astype(inv.dtype)
    dw = jnp.sum((g32 * normed).reshape(-1, normed.shape[-1]), axis=0).astype(w.dtype)
    g_normed = g32 * (1.0 + w)
    dx = inv * (g_normed - normed * jnp.mean(g_normed * normed, axis=-1, keepdims=True))
    return dx.astype(x.dtype), dw


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def project(x: jax.Array, w: jax.Array, n_in: int = 1, out_dtype=None) -> jax.Array:
    """x's last `n_in` dims contracted with w's first `n_in`: a layer's input or output
    projection (`btd,dc->btc`, `bthv,hvd->btd` with n_in=2), in x's dtype or `out_dtype` (the
    LM head's fp32 logits from bf16 activations).

    Its backward computes the weight gradient as one product of x and the cotangent over every
    row dim, straight into w's layout. JAX's transpose of the same product computes it the
    other way round and transposes it; XLA's CPU backend then lays the cotangent out
    transposed for it, a strided copy that cost as much as the projection itself (21 ms of
    the bench DeltaNet's 512-channel qkv cotangent per layer; with this form there is none)."""
    return _project(x, w, n_in, out_dtype)


def _project(x, w, n_in, out_dtype=None):
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    return jax.lax.dot_general(x, w, (contract, ((), ())), preferred_element_type=out_dtype)


def _project_fwd(x, w, n_in, out_dtype):
    return _project(x, w, n_in, out_dtype), (x, w)


def _project_bwd(n_in, out_dtype, residuals, g):
    x, w = residuals
    rows = x.ndim - n_in
    dx = jax.lax.dot_general(g, w.astype(g.dtype),
                             ((tuple(range(rows, g.ndim)), tuple(range(n_in, w.ndim))), ((), ())))
    dw = jax.lax.dot_general(x.astype(g.dtype), g,
                             ((tuple(range(rows)), tuple(range(rows))), ((), ())))
    return dx.astype(x.dtype), dw.astype(w.dtype)


project.defvjp(_project_fwd, _project_bwd)


def project_many(x: jax.Array, ws: Sequence[jax.Array]) -> list[jax.Array]:
    """`[project(x, w) for w in ws]` as one product against the weights side by side (each
    flattened to [d, -1]): one matmul forward and one input gradient backward, instead of one
    each and the sum of the input gradients. On a CPU each narrow projection (the DeltaNet's
    one column per head for beta and for the decay) costs a full pass over x by itself."""
    d = x.shape[-1]
    flat = [w.reshape(d, -1) for w in ws]
    outs = _project_split(x, jnp.concatenate(flat, axis=1), tuple(f.shape[1] for f in flat))
    return [out.reshape(*x.shape[:-1], *w.shape[1:]) for out, w in zip(outs, ws)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _project_split(x, w, widths):
    """project(x, w) cut into column groups of `widths`. Its backward concatenates the groups'
    cotangents: autodiff of the cut pads each cotangent to the full width and adds the pads,
    which XLA's CPU backend ran at a third of a copy's speed (10 ms of the bench DeltaNet's
    [4096, 776] cotangent per layer)."""
    out = project(x, w)
    ends = list(itertools.accumulate(widths))
    return tuple(out[..., end - width:end] for width, end in zip(widths, ends))


def _project_split_fwd(x, w, widths):
    return _project_split(x, w, widths), (x, w)


def _project_split_bwd(widths, residuals, gs):
    return _project_bwd(1, None, residuals, jnp.concatenate(gs, axis=-1))


_project_split.defvjp(_project_split_fwd, _project_split_bwd)


def after(dependency, *trees):
    """`trees`, made to depend on `dependency` at the cost of adding a zero: its first element
    times 0 (not folded away for floats, where 0 x inf is nan), fused into the trees' first
    use. For a hand-written backward: what it makes from `trees` can neither be scheduled
    before the cotangent exists nor be merged with the forward's identical values. A
    non-finite first element makes them non-finite, as it would the results of a backward it
    is the cotangent of."""
    zero = jnp.ravel(dependency)[0] * 0
    return jax.tree.map(lambda a: a + zero.astype(a.dtype), trees)


class RMSNorm(nn.Module):
    """Zero-centred RMSNorm: `x * rsqrt(mean(x^2) + eps) * (1 + w)` in fp32 (or wider), w
    initialised to 0."""

    eps: float
    axis: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = param(self, "weight", (x.shape[-1],), (self.axis,), nn.initializers.zeros_init())
        return rms_norm(x, w, self.eps)


def run_ids(segment_ids_bt: jax.Array) -> jax.Array:
    """Numbers the runs of equal segment ids along time: a new segment starts wherever the id
    changes. Masks built from runs, not raw ids, stay correct if a packer reuses an id."""
    starts = jnp.concatenate(
        [jnp.zeros_like(segment_ids_bt[:, :1]),
         (segment_ids_bt[:, 1:] != segment_ids_bt[:, :-1]).astype(segment_ids_bt.dtype)], axis=1)
    return jnp.cumsum(starts, axis=1)
