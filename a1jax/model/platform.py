"""Which platform the program being traced is compiled for: the one switch kernels are chosen by.

A program traced under a mesh (`jax.set_mesh`, as the trainer, the engine and the planner do)
is compiled for the mesh's devices, which need not be this process's backend: the planner
compiles for H100s and H200s that are not there (`python -m a1jax.plan --target`), while
`jax.default_backend()` stays "cpu". So the answer is the mesh's device platform, and the
default backend only where no mesh is set.
"""

from __future__ import annotations

import jax


def kernel_platform() -> str:
    """"cpu", "gpu" or "tpu": the platform of the devices of the mesh in context, else JAX's
    default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    if device is not None and getattr(device, "platform", None):
        return "gpu" if device.platform in ("gpu", "cuda", "rocm") else device.platform
    backend = jax.default_backend()
    return "gpu" if backend in ("cuda", "rocm") else backend


def core_count() -> int | None:
    """Streaming multiprocessors (GPU) of the mesh's devices, where known."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return getattr(device, "num_cores", None) if device is not None else None
