"""Meshes, logical-axis rules and named layouts."""

from a1jax.sharding.layouts import AXES, LAYOUTS, Layout, get_layout, make_rules, resolve_axes
from a1jax.sharding.mesh import MeshSpec, make_mesh, param_shardings, validate_layout

__all__ = ["AXES", "LAYOUTS", "Layout", "MeshSpec", "get_layout", "make_mesh", "make_rules",
           "param_shardings", "resolve_axes", "validate_layout"]
