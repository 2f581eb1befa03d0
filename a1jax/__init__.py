"""a1jax: train Agents-A1-class agent models (Qwen3.5-MoE) in JAX on sharded meshes."""

from a1jax import host_memory

__version__ = "0.1.0"

# Before JAX starts its threads: see a1jax/host_memory.py (the CPU step's buffers stay mapped).
host_memory.configure()
