"""Small pieces every layer uses: logically-named parameters, norms, segment bookkeeping."""

from __future__ import annotations

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


def rms_normalize(x: jax.Array, eps: float) -> jax.Array:
    """x / rms(x) over the last axis, in float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


class RMSNorm(nn.Module):
    """Zero-centred RMSNorm: `x * rsqrt(mean(x^2) + eps) * (1 + w)` in fp32, w initialised to 0."""

    eps: float
    axis: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = param(self, "weight", (x.shape[-1],), (self.axis,), nn.initializers.zeros_init())
        return (rms_normalize(x, self.eps) * (1.0 + w)).astype(x.dtype)


def run_ids(segment_ids_bt: jax.Array) -> jax.Array:
    """Numbers the runs of equal segment ids along time: a new segment starts wherever the id
    changes. Masks built from runs, not raw ids, stay correct if a packer reuses an id."""
    starts = jnp.concatenate(
        [jnp.zeros_like(segment_ids_bt[:, :1]),
         (segment_ids_bt[:, 1:] != segment_ids_bt[:, :-1]).astype(segment_ids_bt.dtype)], axis=1)
    return jnp.cumsum(starts, axis=1)
