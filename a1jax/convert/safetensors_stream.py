"""Safetensors shards written one tensor (or one slice of one) at a time.

A safetensors file is an 8-byte header length, a JSON header giving every tensor's dtype, shape
and byte range, then the raw bytes. Shapes and dtypes are known before any value is read, so the
whole shard plan (which tensor goes in which file, at which offset) is fixed up front: each
file's header is written first and the tensors' bytes are then streamed into it. Memory stays
near the largest piece a tensor's writer produces, not a shard and not the model; in a
multi-process export each process writes the files the plan gives it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Iterable, Iterator, Sequence

import ml_dtypes
import numpy as np

INDEX = "model.safetensors.index.json"
DTYPE_NAMES = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16",
               np.dtype(np.float16): "F16", np.dtype(np.float64): "F64",
               np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16",
               np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}
CHUNK_BYTES = 16 << 20  # contiguous pieces written at a time (the cast/transposed copy)


@dataclasses.dataclass(frozen=True)
class TensorPlan:
    """One tensor to write: `pieces()` yields arrays of `dtype` whose C-order bytes, concatenated,
    are the tensor's (pieces are produced lazily: only one need be in memory). A piece may also
    be `(byte offset within the tensor, array)`, written there: a tensor interleaved from two
    sources (the fused gate_up_proj) is then written one source at a time."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    pieces: Callable[[], Iterable[np.ndarray]]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    filename: str
    tensors: tuple[TensorPlan, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def plan_shards(tensors: Sequence[TensorPlan], max_shard_bytes: int) -> list[ShardPlan]:
    """Tensors, in order, into files of at most `max_shard_bytes` of data (a larger tensor gets a
    file of its own), named `model-0000i-of-0000N.safetensors` as transformers does."""
    groups: list[list[TensorPlan]] = [[]]
    size = 0
    for tensor in tensors:
        if groups[-1] and size + tensor.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(tensor)
        size += tensor.nbytes
    n = len(groups)
    return [ShardPlan(f"model-{i + 1:05d}-of-{n:05d}.safetensors", tuple(g))
            for i, g in enumerate(groups)]


def header_bytes(shard: ShardPlan, metadata: dict[str, str] | None = None) -> bytes:
    """The shard's length prefix and JSON header, padded to 8 bytes as the format asks."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for t in shard.tensors:
        header[t.name] = {"dtype": DTYPE_NAMES[np.dtype(t.dtype)], "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def write_shard(path: str, shard: ShardPlan) -> None:
    """Streams every tensor of `shard` into file `path`; a writer that yields the wrong number of
    bytes is a bug, reported with the tensor's name."""
    with open(path, "wb") as f:
        f.write(header_bytes(shard))
        for t in shard.tensors:
            start, written = f.tell(), 0
            for piece in t.pieces():
                if isinstance(piece, tuple):
                    offset, piece = piece
                    f.seek(start + offset)
                if piece.dtype != t.dtype:
                    raise AssertionError(f"{t.name}: piece of dtype {piece.dtype}, not {t.dtype}")
                piece = np.ascontiguousarray(piece)
                f.write(piece.view(np.uint8).reshape(-1).data)
                written += piece.nbytes
            if written != t.nbytes:
                raise AssertionError(f"{t.name}: wrote {written} bytes, expected {t.nbytes}")
            f.seek(start + t.nbytes)


def write_index(directory: str, shards: Sequence[ShardPlan]) -> None:
    weight_map = {t.name: s.filename for s in shards for t in s.tensors}
    index = {"metadata": {"total_size": sum(s.nbytes for s in shards)}, "weight_map": weight_map}
    with open(os.path.join(directory, INDEX), "w") as f:
        json.dump(index, f, indent=2)


def row_chunks(tensor: np.ndarray, dtype: np.dtype,
               chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """`tensor` (any view: transposed, strided) cast to `dtype` in contiguous pieces of whole
    leading-axis rows, about `chunk_bytes` each: the cast copy never holds the whole tensor."""
    if tensor.ndim == 0 or tensor.shape[0] == 0:
        yield np.ascontiguousarray(tensor, dtype=dtype)
        return
    row_bytes = max(1, tensor[0].size * np.dtype(dtype).itemsize)
    step = max(1, chunk_bytes // row_bytes)
    for start in range(0, tensor.shape[0], step):
        yield np.ascontiguousarray(tensor[start:start + step], dtype=dtype)
