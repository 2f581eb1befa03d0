"""a1jax: train Agents-A1-class agent models (Qwen3.5-MoE) in JAX on sharded meshes."""

from a1jax import host_memory

__version__ = "0.1.0"

# A CUDA plugin installed only to compile for GPUs (the gpu-aot extra), on a machine with none.
host_memory.cpu_when_no_gpu()
# Before JAX starts its threads: see a1jax/host_memory.py (the CPU step's buffers stay mapped).
host_memory.configure()
