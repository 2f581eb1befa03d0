"""Simulated CPU devices for a layout, set up before JAX starts its backends.

On a machine without an accelerator a layout such as data=2 x expert=2 x sequence=2 needs 8
devices, which XLA's CPU backend only presents when told so by a flag read at backend start
(`--xla_force_host_platform_device_count`). The launch scripts set it; the CLIs set it too, when
nothing else has, so that the README's commands run as typed."""

from __future__ import annotations

import importlib.metadata
import math
import os

from a1jax.errors import A1Error

_FLAG = "--xla_force_host_platform_device_count"


def parse_axes(text: str) -> dict[str, int]:
    """"data=2,expert=4" -> {"data": 2, "expert": 4}; "" -> {}."""
    axes = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, size = part.partition("=")
        try:
            axes[name.strip()] = int(size)
        except ValueError:
            raise A1Error(f"mesh: expected AXIS=SIZE[,AXIS=SIZE], got {part!r}") from None
        if axes[name.strip()] < 1:
            raise A1Error(f"mesh: axis sizes must be positive, got {part!r}")
    return axes


def _accelerator_plugin() -> bool:
    names = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()
             if d.metadata["Name"]}
    return any(n.startswith(("jax-cuda", "jax_cuda", "jax-rocm", "libtpu")) for n in names)


def simulate_cpu_devices(count: int) -> bool:
    """Asks XLA's CPU backend for `count` devices, unless XLA_FLAGS already sets a count, the
    platform is not the CPU, or JAX's backends have started. Says so in one line; returns
    whether it did."""
    if count <= 1 or _FLAG in os.environ.get("XLA_FLAGS", ""):
        return False
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if (platforms and "cpu" not in platforms.split(",")) or (not platforms
                                                              and _accelerator_plugin()):
        return False
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
        return False
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}={count}".strip()
    print(f"simulating {count} CPU devices for the layout ({_FLAG}={count})", flush=True)
    return True


def simulate_for(axes: dict[str, int]) -> bool:
    """`simulate_cpu_devices` for the product of explicit axis sizes (-1 entries ignored)."""
    return simulate_cpu_devices(math.prod(s for s in axes.values() if s > 0))


def mesh_spec(axes: dict[str, int]):
    """A MeshSpec of exactly these axis sizes on the first devices they need (None for no
    axes: one device, no mesh)."""
    if not axes:
        return None
    from a1jax.sharding import MeshSpec

    return MeshSpec.create(axes=axes, num_devices=math.prod(axes.values()))
