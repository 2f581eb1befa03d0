"""The a1jax checkpoint format, read and written one parameter at a time.

A checkpoint root is an `orbax.checkpoint.CheckpointManager` directory (a run's is
`WORKDIR/checkpoints/`); each step `ROOT/<step>/` holds Composite items:

    params     StandardSave of the unboxed Flax parameter dict (float32 leaves)
    opt_state  StandardSave of the optax state (absent in imported checkpoints)
    data       JsonSave of the data iterator state (absent in imported checkpoints)
    meta       JsonSave of {"model_config", "tokenizer", "tokenizer_sha256", "stage",
               "experiment", "hf_source"}

Export and import read and write this format without holding the whole model: import saves a
tree of `LazyArray`s, each made, written and dropped in turn (`write_params_checkpoint`: the
same files and metadata as StandardSave, restored with StandardRestore as any run's params);
`iter_params` restores one leaf at a time to host numpy, through orbax's handler rather than a
Checkpointer so that no cross-process barrier is involved (in a multi-process export each process
reads only the leaves of the shards it writes).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from a1jax.errors import A1Error

PARAMS, META = "params", "meta"
META_KEYS = ("model_config", "tokenizer", "tokenizer_sha256", "stage", "experiment",
             "hf_source")

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
    workdir (its `checkpoints/` root). Raises CheckpointError otherwise. The result is absolute
    (Orbax refuses relative paths)."""
    path = Path(path).absolute()
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
    out = np.asarray(out)
    _release_freed_memory()  # the reader threads' buffers: one leaf stays resident, not several
    return out


class LazyArray:
    """A parameter that `write_params_checkpoint` makes only when it writes it (then drops it):
    `make()` returns the jax.Array of `shape`, `dtype` and `sharding`."""

    def __init__(self, shape: tuple[int, ...], dtype: Any, sharding: Any,
                 make: Callable[[], Any]):
        self.shape, self.dtype, self.sharding, self.make = \
            tuple(shape), np.dtype(dtype), sharding, make

    def __repr__(self) -> str:
        return f"LazyArray({self.shape}, {self.dtype})"


class _StreamingArrayHandler(ocp.type_handlers.ArrayHandler):
    """orbax's jax.Array handler, one array at a time: each LazyArray is made, written (its
    shards, its sharding and array metadata, exactly as the stock handler writes a jax.Array)
    and dropped before the next is made, so that a save holds one leaf, not the tree. Its
    typestr is the stock handler's: what it writes restores as jax.Arrays."""

    async def serialize(self, values, infos, args=None):
        args = args or [ocp.SaveArgs()] * len(values)
        for value, info, arg in zip(values, infos, args):
            array = value.make() if isinstance(value, LazyArray) else value
            if (array.shape, np.dtype(array.dtype)) != (tuple(value.shape),
                                                         np.dtype(value.dtype)):
                raise AssertionError(f"{info.name}: made {array.shape} {array.dtype}, "
                                     f"expected {value.shape} {value.dtype}")
            for f in await super().serialize([array], [info], [arg]):
                f.result()
            del array
            _release_freed_memory()
        return []


class _StreamingSaveHandler(ocp.PyTreeCheckpointHandler):
    """Writes the `params` item exactly as StandardSave does (same files, same metadata, and
    the same handler name in the step's metadata), leaf by leaf (see _StreamingArrayHandler)."""

    def __init__(self):
        streaming = _StreamingArrayHandler(array_metadata_store=_array_metadata_store())
        registry = ocp.type_handlers.create_type_handler_registry(
            (int, ocp.type_handlers.ScalarHandler()), (float, ocp.type_handlers.ScalarHandler()),
            (np.number, ocp.type_handlers.ScalarHandler()),
            (np.ndarray, ocp.type_handlers.NumpyHandler()),
            (jax.Array, streaming), (LazyArray, streaming))
        # As StandardCheckpointHandler configures its PyTreeCheckpointHandler.
        super().__init__(save_concurrent_gb=96, restore_concurrent_gb=96,
                         type_handler_registry=registry)

    @classmethod
    def typestr(cls) -> str:
        return ocp.StandardCheckpointHandler.typestr()


def _release_freed_memory() -> None:
    """Hands the heap's free pages back to the system (glibc keeps freed memory in per-thread
    arenas; tensorstore's writer threads would otherwise leave each leaf's buffers resident)."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


def _array_metadata_store():
    from orbax.checkpoint._src.metadata import array_metadata_store
    return array_metadata_store.Store()


def write_params_checkpoint(root: str | os.PathLike, step: int, params: Any,
                            meta: Mapping[str, Any]) -> Path:
    """Saves `params` and `meta` as step `step` of CheckpointManager root `root`; returns the
    step directory. Every process of a multi-process job calls this (each writes its own
    shards).

    `params` leaves are arrays (sharded jax.Arrays included) or LazyArrays, made one at a time
    as they are written: a tree of LazyArrays is saved holding one leaf at a time. The item is
    what `StandardSave(params)` writes, and restores with `StandardRestore`."""
    unknown = sorted(set(meta) - set(META_KEYS))
    if unknown:
        raise ValueError(f"unknown meta key(s): {', '.join(unknown)}")
    meta = {key: meta.get(key) for key in META_KEYS}
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add(PARAMS, ocp.args.PyTreeSave, _StreamingSaveHandler())
    registry.add(META, ocp.args.JsonSave, ocp.JsonCheckpointHandler())
    manager = ocp.CheckpointManager(
        epath.Path(os.path.abspath(root)),
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False),
        handler_registry=registry)
    try:
        manager.save(step, args=ocp.args.Composite(
            params=ocp.args.PyTreeSave(params), meta=ocp.args.JsonSave(meta)))
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
