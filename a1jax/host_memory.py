"""Host memory settings for running XLA programs on the CPU.

XLA's CPU runtime allocates each run's temporary buffer (2.1 GiB for the bench model's train
step) as one block, by default on one of its own threads. glibc serves a block that large from
a fresh `mmap` and unmaps it when it is freed, so every step page-faults its whole temporary
buffer in again: 550,000 faults and 0.9 s of kernel time per bench step, and the step ran 20%
slower for it. No XLA or JAX option keeps the buffer, so a1jax changes where it comes from:

- JAX's CPU dispatch is made synchronous (`jax_cpu_enable_async_dispatch`), so a program runs
  on the thread that calls it, whose allocations come from glibc's main heap; a step also never
  overlaps the next one, whose buffer would otherwise be allocated while the last is live;
- glibc serves even large blocks from that heap (`M_MMAP_MAX` 0) and never trims its top
  (`M_TRIM_THRESHOLD` at its maximum; -1 is read as SIZE_MAX), so each step reuses the last
  step's pages. `malloc_trim` still returns free pages when asked (after each compile).

Both must happen before JAX creates its CPU client. `import a1jax` applies them when the CPU is
the backend JAX will use; `A1JAX_KEEP_HEAP=0` leaves JAX and the allocator as they were. Nothing
is changed where a GPU or TPU plugin is installed (the step's memory is on the device there, and
asynchronous dispatch overlaps the host's work with it), nor the allocator without glibc.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin", "libtpu")

applied = False


def cpu_when_no_gpu() -> bool:
    """Sets JAX_PLATFORMS=cpu where the CUDA plugin is installed but no NVIDIA GPU is (the
    gpu-aot extra: compiling for GPUs on a CPU machine, a1jax.targets), and JAX_PLATFORMS is
    unset: JAX would otherwise try to start the plugin, print a CUDA error, and leave the CLIs
    unsure whether to simulate CPU devices. Returns whether it did."""
    if os.environ.get("JAX_PLATFORMS", "").strip() or os.path.exists("/dev/nvidiactl"):
        return False
    try:  # a submodule's find_spec imports its package, and raises when that is missing
        found = importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    except ImportError:
        found = False
    if not found:
        return False
    os.environ["JAX_PLATFORMS"] = "cpu"
    return True


def cpu_backend_expected() -> bool:
    """Whether JAX will run on the CPU: JAX_PLATFORMS names it first, or no accelerator plugin
    is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_PLUGINS)


def keep_heap() -> bool:
    """Serve every allocation of the calling thread's arena from its heap and never trim the
    heap's top. Returns whether glibc took both settings."""
    global applied
    if applied:
        return True
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    applied = all(mallopt(param, value) == 1
                  for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
    return applied


def configure() -> bool:
    """Synchronous CPU dispatch and `keep_heap()`, when the CPU is the backend and the user has
    not opted out. Returns whether the heap settings applied."""
    if os.environ.get("A1JAX_KEEP_HEAP", "1") == "0" or not cpu_backend_expected():
        return False
    import jax  # here, not at the top: only when the CPU is the backend

    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return keep_heap()
