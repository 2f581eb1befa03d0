"""Partial rotary position embedding (half-split `rotate_half`, not interleaved)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_rope(x_bthk: jax.Array, positions_bt: jax.Array, rotary_dim: int,
               theta: float) -> jax.Array:
    """Rotates the first `rotary_dim` dims of each head by its token's position; the rest pass.

    Qwen3.5's multimodal RoPE sections reduce to these 1-D positions for text, since the
    temporal, height and width positions of a text token are all equal."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
    angles_btr = positions_bt.astype(jnp.float32)[..., None] * inv_freq
    angles_btr = jnp.concatenate([angles_btr, angles_btr], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles_btr), jnp.sin(angles_btr)
    x_rot, x_pass = x_bthk[..., :rotary_dim], x_bthk[..., rotary_dim:]
    half = rotary_dim // 2
    rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
    x_rot = (x_rot.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin)
    return jnp.concatenate([x_rot.astype(x_bthk.dtype), x_pass], axis=-1)
