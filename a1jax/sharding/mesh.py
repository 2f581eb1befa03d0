"""Building the mesh, turning logical names into shardings, and checking a layout before compiling.

The mesh's axes are Auto, not Explicit (sharding in types, JAX 0.10's default): with Auto axes we
pin the shardings that matter (parameters, optimizer state, the batch, every layer's activations
through logical constraints) and let XLA propagate the rest through the DeltaNet scans and the
MoE's sort and scatter, which would otherwise each need a hand-written result sharding.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from a1jax.errors import A1Error
from a1jax.sharding.layouts import AXES, Rules, get_layout, make_rules, resolve_axes


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """A layout resolved against the devices: axis sizes and the rules table."""

    axes: Mapping[str, int]
    rules: Rules

    @classmethod
    def create(cls, layout: str | None = None, axes: Mapping[str, int] | None = None,
               rules: Sequence[tuple[str, Any]] = (), num_devices: int | None = None) -> "MeshSpec":
        """From a layout name, or explicit axis sizes (then the default rules), plus overrides."""
        num_devices = num_devices or jax.device_count()
        if layout:
            named = get_layout(layout)
            sizes = dict(named.axes)
            if axes:
                sizes.update(axes)
            rules = tuple(rules) + named.rules
        else:
            sizes = dict(axes or {"data": -1})
        return cls(resolve_axes(sizes, num_devices), make_rules(rules))

    def describe(self) -> str:
        return " x ".join(f"{name}={self.axes[name]}" for name in AXES)


def make_mesh(spec: MeshSpec, devices: Sequence[Any] | None = None) -> Mesh:
    shape = tuple(spec.axes[name] for name in AXES)
    if devices is not None:
        return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES),
                             devices=devices)
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def logical_spec(names: Sequence[str | None], rules: Rules) -> PartitionSpec:
    return nn.logical_to_mesh_axes(tuple(names), rules)


def param_shardings(boxed_params: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a tree of `nn.LogicallyPartitioned` leaves (from `init` or eval_shape)."""
    specs = nn.get_partition_spec(boxed_params)
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, nn.logical_to_mesh_axes(tuple(spec), rules)), specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec))


def validate_layout(spec: MeshSpec, boxed_params: Any, *, num_experts: int, dispatch: str,
                    batch: int, seq: int, microbatches: int = 1) -> None:
    """Raises A1Error naming the dimension and the axis that do not divide, before any compile."""
    batch_axes = _axes_of(logical_spec(("act_batch",), spec.rules)[0])
    seq_axes = _axes_of(logical_spec(("act_seq",), spec.rules)[0])
    batch_shards = math.prod(spec.axes[a] for a in batch_axes)
    if batch % (batch_shards * microbatches):
        raise A1Error(f"batch {batch} cannot be split into {microbatches} microbatch(es) over "
                      f"mesh axes {_join(batch_axes, spec)} ({batch_shards} shards): it must be a "
                      f"multiple of {batch_shards * microbatches}")
    seq_shards = math.prod(spec.axes[a] for a in seq_axes)
    if seq % seq_shards:
        raise A1Error(f"sequence length {seq} is not divisible by mesh axes "
                      f"{_join(seq_axes, spec)} ({seq_shards} shards)")
    if dispatch == "expert_parallel" and num_experts % spec.axes["expert"]:
        raise A1Error(f"num_experts {num_experts} is not divisible by mesh axis "
                      f"expert={spec.axes['expert']}")
    leaves = jax.tree_util.tree_flatten_with_path(
        nn.get_partition_spec(boxed_params), is_leaf=lambda x: isinstance(x, PartitionSpec))[0]
    shapes = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(boxed_params))[0]
    for (path, names), (_, leaf) in zip(leaves, shapes):
        mesh_axes = logical_spec(tuple(names), spec.rules)
        for dim, (size, logical, axes) in enumerate(zip(leaf.shape, names, mesh_axes)):
            shards = math.prod(spec.axes[a] for a in _axes_of(axes))
            if size % shards:
                name = "/".join(str(getattr(k, "key", k)) for k in path)
                raise A1Error(f"parameter {name} dimension {dim} ({logical}={size}) is not "
                              f"divisible by mesh axes {_join(_axes_of(axes), spec)} "
                              f"({shards} shards)")


def _axes_of(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _join(axes: Sequence[str], spec: MeshSpec) -> str:
    return " x ".join(f"{a}={spec.axes[a]}" for a in axes) or "(none)"
