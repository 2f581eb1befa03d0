"""The Agents-A1 (Qwen3.5-MoE) text model in Flax Linen.

Glossary of shape letters used in names: b batch, t/s time (query/key), d model (hidden),
h heads, n KV heads, g query heads per KV head, k key/head dim, v value dim, e experts,
f expert hidden, c conv channels, w conv window, x vocab.
"""

from a1jax.model.config import DTYPES, FULL, LINEAR, ConfigError, ModelConfig
from a1jax.model.presets import PRESETS, get_preset
from a1jax.model.transformer import Transformer

__all__ = ["DTYPES", "FULL", "LINEAR", "ConfigError", "ModelConfig", "PRESETS", "get_preset", "Transformer"]
