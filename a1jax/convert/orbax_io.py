"""The a1jax checkpoint format, read and written one parameter at a time.

A checkpoint root is an `orbax.checkpoint.CheckpointManager` directory (a run's is
`WORKDIR/checkpoints/`); each step `ROOT/<step>/` holds Composite items:

    params     StandardSave of the unboxed Flax parameter dict (float32 leaves)
    opt_state  StandardSave of the optax state (absent in imported checkpoints)
    data       JsonSave of the data iterator state (absent in imported checkpoints)
    meta       JsonSave of {"model_config", "tokenizer", "stage", "experiment", "hf_source"}

Export and import read and write this format without holding the whole model: `iter_params`
restores one leaf at a time to host numpy, through orbax's handler rather than a Checkpointer so
that no cross-process barrier is involved (in a multi-process export each process reads only the
leaves of the shards it writes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from a1jax.errors import A1Error

PARAMS, META = "params", "meta"
META_KEYS = ("model_config", "tokenizer", "stage", "experiment", "hf_source")

ParamPath = tuple[str, ...]


class CheckpointError(A1Error):
    """A directory that is not an a1jax checkpoint (or lacks what is asked of it)."""


def latest_step_dir(root: str | os.PathLike) -> Path | None:
    """The highest committed step `ROOT/<step>` of a CheckpointManager root, or None.

    Orbax writes a step under a temporary name and renames it when complete, so only all-digit
    names count: an interrupted save is never picked."""
    root = Path(root)
    steps = [int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir()] \
        if root.is_dir() else []
    return root / str(max(steps)) if steps else None


def resolve_step_dir(path: str | os.PathLike) -> Path:
    """A step directory from a step directory, a checkpoint root (its latest step), or a run
    workdir (its `checkpoints/` root). Raises CheckpointError otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such directory")
    if (path / PARAMS).is_dir():
        return path
    for root in (path, path / "checkpoints"):
        if root.is_dir() and (step := latest_step_dir(root)) is not None:
            if not (step / PARAMS).is_dir():
                raise CheckpointError(f"{step}: checkpoint step without a {PARAMS} item")
            return step
    raise CheckpointError(f"{path}: not an a1jax checkpoint (no step directory with {PARAMS}/, "
                          "nor a checkpoints/ root)")


def read_meta(step_dir: str | os.PathLike) -> dict[str, Any]:
    """The step's `meta` item, every key of the contract present (None where not recorded)."""
    meta_dir = Path(step_dir) / META
    if not meta_dir.is_dir():
        raise CheckpointError(f"{step_dir}: checkpoint step without a {META} item (which model "
                              "config it was trained with is unknown)")
    raw = ocp.JsonCheckpointHandler().restore(epath.Path(meta_dir))
    return {key: raw.get(key) for key in META_KEYS} | raw


def param_metadata(step_dir: str | os.PathLike) -> dict[ParamPath, tuple[tuple[int, ...], str]]:
    """{leaf path: (shape, dtype name)} of the step's params, from metadata alone."""
    tree = _handler().metadata(epath.Path(Path(step_dir) / PARAMS)).tree
    out = {}
    for path, leaf in _flatten(tree):
        out[path] = (tuple(leaf.shape), np.dtype(leaf.dtype).name)
    return out


def iter_params(step_dir: str | os.PathLike,
                paths: Iterable[ParamPath] | None = None) -> Iterator[tuple[ParamPath, np.ndarray]]:
    """(path, host numpy array) for each leaf in `paths` (default: all, in the stored order), one
    leaf restored at a time: memory stays near the largest leaf."""
    directory = epath.Path(Path(step_dir) / PARAMS)
    handler = _handler()
    if paths is None:
        paths = [p for p, _ in _flatten(handler.metadata(directory).tree)]
    for path in paths:
        yield path, read_param(step_dir, path, handler)


def read_param(step_dir: str | os.PathLike, path: ParamPath,
               handler: ocp.PyTreeCheckpointHandler | None = None) -> np.ndarray:
    """One leaf of the step's params as a host numpy array (a partial restore)."""
    item: dict = {}
    restore: dict = {}
    node, rnode = item, restore
    for key in path[:-1]:
        node, rnode = node.setdefault(key, {}), rnode.setdefault(key, {})
    node[path[-1]] = 0
    rnode[path[-1]] = ocp.RestoreArgs(restore_type=np.ndarray)
    try:
        out = (handler or _handler()).restore(
            epath.Path(Path(step_dir) / PARAMS),
            args=ocp.args.PyTreeRestore(item=item, restore_args=restore, partial_restore=True))
    except (KeyError, ValueError, FileNotFoundError) as e:
        raise CheckpointError(f"{step_dir}: cannot read parameter {'/'.join(path)}: {e}") from None
    for key in path:
        out = out[key]
    return np.asarray(out)


def write_params_checkpoint(root: str | os.PathLike, step: int, params: Any,
                            meta: Mapping[str, Any]) -> Path:
    """Saves `params` (a tree of arrays, sharded jax.Arrays included) and `meta` as step `step`
    of CheckpointManager root `root`; returns the step directory. Every process of a
    multi-process job calls this (orbax writes each process's shards)."""
    unknown = sorted(set(meta) - set(META_KEYS))
    if unknown:
        raise ValueError(f"unknown meta key(s): {', '.join(unknown)}")
    meta = {key: meta.get(key) for key in META_KEYS}
    manager = ocp.CheckpointManager(epath.Path(os.path.abspath(root)), item_names=(PARAMS, META))
    try:
        manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)))
        manager.wait_until_finished()
    finally:
        manager.close()
    return Path(root) / str(step)


def _handler() -> ocp.PyTreeCheckpointHandler:
    return ocp.PyTreeCheckpointHandler()


def _flatten(tree: Mapping[str, Any], prefix: ParamPath = ()) -> Iterator[tuple[ParamPath, Any]]:
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value
