"""Mesh axes, the logical-axis rules table, and named layouts.

Every parameter and activation names its dimensions logically (`embed`, `exp`, `act_batch`,
...). One rules table maps those names to the mesh axes `data`, `expert` and `sequence`; a layout
is a named choice of axis sizes plus, if it needs them, rule overrides. Layers never see a mesh.

Rules are read in order and a mesh axis is used at most once per array (flax's
`logical_to_mesh_axes`), so a name may list fallbacks: expert weights take `expert` for `exp`
first, and their `embed` then falls back to the axes that are left.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

from a1jax.errors import A1Error

AXES = ("data", "expert", "sequence")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# FSDP-style: every weight dimension named `embed` (or `vocab`) is split over every mesh axis it
# can take, so the dense part's parameters and Adam state are never replicated (at 35B on 8 GPUs
# a replicated dense part would not fit). The batch is split over `data` and `expert` (expert
# ranks are data ranks for everything but the experts), the time axis over `sequence`.
DEFAULT_RULES: Rules = (
    ("act_batch", ("data", "expert")),
    ("act_seq", "sequence"),
    ("act_embed", None),
    ("act_tokens", ("data", "expert", "sequence")),
    ("exp", "expert"),
    ("embed", ("data", "expert", "sequence")),
    ("embed", ("data", "sequence")),
    ("vocab", ("data", "expert", "sequence")),
    ("heads", None),
    ("kv_heads", None),
    ("head_dim", None),
    ("linear_heads", None),
    ("linear_conv", ("data", "expert", "sequence")),  # the conv kernel, when embed is absent
    ("conv_window", None),
    ("router", None),
    ("mlp", None),
    ("mlp_moe", None),
    ("layers", None),  # the stacked layers of `scan_layers`: every device holds its share of each
)

LOGICAL_NAMES = frozenset(name for name, _ in DEFAULT_RULES)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Axis sizes (-1 at most once: the rest of the devices) and rule overrides."""

    axes: Mapping[str, int]
    rules: Rules = ()
    doc: str = ""


LAYOUTS: dict[str, Layout] = {
    "fsdp": Layout({"data": -1}, doc="pure FSDP over all devices; experts computed locally"),
    "expert": Layout({"expert": -1}, doc="expert parallel over all devices (batch too)"),
    "data_expert": Layout({"data": 2, "expert": -1}, doc="data x expert parallel"),
    "expert_sequence": Layout({"expert": 2, "sequence": -1},
                              doc="expert x sequence (context) parallel, for long sequences"),
    "sequence": Layout({"sequence": -1}, doc="sequence (context) parallel over all devices"),
    "data_expert_sequence": Layout({"data": 2, "expert": 2, "sequence": -1},
                                   doc="all three axes"),
}


def resolve_axes(axes: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Axis sizes for `num_devices` devices: absent axes are 1, one -1 takes the rest."""
    unknown = sorted(set(axes) - set(AXES))
    if unknown:
        raise A1Error(f"unknown mesh axis {unknown[0]!r}; axes are {', '.join(AXES)}")
    sizes = {name: int(axes.get(name, 1)) for name in AXES}
    free = [name for name, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise A1Error(f"only one mesh axis may be -1, got {', '.join(free)}")
    for name, size in sizes.items():
        if size == 0 or size < -1:
            raise A1Error(f"mesh axis {name} has size {size}; sizes are positive (or -1)")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if num_devices % fixed:
            raise A1Error(f"mesh axes {_fmt(sizes)} cannot fill {num_devices} devices: "
                          f"{num_devices} is not a multiple of {fixed}")
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise A1Error(f"mesh axes {_fmt(sizes)} multiply to {math.prod(sizes.values())}, but "
                      f"there are {num_devices} devices")
    return sizes


def _fmt(sizes: Mapping[str, int]) -> str:
    return " x ".join(f"{k}={v}" for k, v in sizes.items())


def get_layout(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise A1Error(f"unknown layout {name!r}; known: {', '.join(LAYOUTS)}") from None


def make_rules(overrides: Sequence[tuple[str, object]] = ()) -> Rules:
    """Overrides first (they win: rules are read in order), then the defaults."""
    overrides = tuple((str(name), _axes(value)) for name, value in overrides)
    for name, value in overrides:
        if name not in LOGICAL_NAMES:
            raise A1Error(f"rules override names unknown logical axis {name!r}; known: "
                          f"{', '.join(sorted(LOGICAL_NAMES))}")
        for axis in (value if isinstance(value, tuple) else (value,)):
            if axis is not None and axis not in AXES:
                raise A1Error(f"rules override maps {name!r} to unknown mesh axis {axis!r}")
    return overrides + DEFAULT_RULES


def _axes(value):
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return value
