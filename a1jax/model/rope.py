"""Partial rotary position embedding (half-split `rotate_half`, not interleaved), with optional
YaRN scaling to run past the native context."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from a1jax.model.base import accum_dtype


def inverse_frequencies(config) -> tuple[np.ndarray, float]:
    """(inv_freq [rotary_dim / 2] float32, factor on cos and sin) for `config`'s RoPE.

    YaRN (arXiv 2309.00071) as Hugging Face computes it for `rope_type: yarn`: dimensions that
    rotate many times within the native context keep their frequency, slow ones are divided by
    `rope_factor`, a linear ramp between the `beta_fast` / `beta_slow` correction dimensions,
    and attention logits are sharpened by 0.1 ln(factor) + 1 through cos and sin. Computed in
    float32 like the reference, so logits match it."""
    dim, base = config.rotary_dim, config.rope_theta
    pos_freqs = np.float32(base) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
    inv_freq = (np.float32(1.0) / pos_freqs).astype(np.float32)
    if config.rope_type == "default":
        return inv_freq, 1.0
    factor = config.rope_factor
    native = config.rope_original_max_position_embeddings

    def correction_dim(rotations: float) -> float:
        return dim * math.log(native / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(config.rope_beta_fast)), 0)
    high = min(math.ceil(correction_dim(config.rope_beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # a ramp of zero width
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    keep = (1 - ramp).astype(np.float32)  # 1: extrapolate (native frequency), 0: interpolate
    scaled = (np.float32(1.0) / (np.float32(factor) * pos_freqs)).astype(np.float32)
    inv_freq = (scaled * (1 - keep) + inv_freq * keep).astype(np.float32)
    return inv_freq, (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)


def apply_rope(x_bthk: jax.Array, positions_bt: jax.Array, config) -> jax.Array:
    """Rotates the first `rotary_dim` dims of each head by its token's position; the rest pass.

    Qwen3.5's multimodal RoPE sections reduce to these 1-D positions for text, since the
    temporal, height and width positions of a text token are all equal."""
    rotary_dim = config.rotary_dim
    inv_freq, scale = inverse_frequencies(config)
    f32 = accum_dtype(x_bthk)  # the frequencies stay fp32 constants; fp64 angles in fp64 runs
    angles_btr = positions_bt.astype(f32)[..., None] * jnp.asarray(inv_freq)
    angles_btr = jnp.concatenate([angles_btr, angles_btr], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles_btr) * scale, jnp.sin(angles_btr) * scale
    x_rot, x_pass = x_bthk[..., :rotary_dim], x_bthk[..., rotary_dim:]
    half = rotary_dim // 2
    rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
    x_rot = (x_rot.astype(f32) * cos + rotated.astype(f32) * sin)
    return jnp.concatenate([x_rot.astype(x_bthk.dtype), x_pass], axis=-1)
