"""a1jax: train Agents-A1-class agent models (Qwen3.5-MoE) in JAX on sharded meshes."""

__version__ = "0.1.0"
