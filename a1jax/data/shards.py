"""Preparing a large set in pieces: shards of input lines measured apart, each by its own job,
their results merged in input order into one dataset.

The lines of all input files, in order, are cut into `num_shards` contiguous ranges. Measuring
a shard (validate, render, tokenize, mask: nearly all of prepare's work) writes its results to
`OUT/.prepare/shard-I-of-S.json` by a rename, so a shard file is there whole or not at all; a
run that dies leaves the finished shards, and a rerun measures only the missing ones. Merging
reads the shard files in order and decides what needs every line at once (duplicate ids, the
eval split), so the dataset is the same whatever the number of shards, jobs or workers.
`OUT/.prepare/inputs.json` records what the shards were measured from (the files, their sizes
and times, the options): a run on other inputs refuses the directory rather than mix them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterator

from a1jax.data.schema import Loaded, TrajectoryError, raw_lines, read_line
from a1jax.errors import A1Error

STATE_DIR = ".prepare"


class ShardError(A1Error):
    """Shards that cannot be measured or merged as asked."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One measured input line: where it is, what it is, and why it is rejected if it is."""

    source: str
    line: int
    offset: int
    id: str | None
    domain: str | None
    num_tokens: int
    error: dict[str, Any] | None  # a TrajectoryError's fields
    trained_tokens: int = 0

    def trajectory_error(self) -> TrajectoryError | None:
        return None if self.error is None else TrajectoryError(**self.error)


def entry(loaded: Loaded, reason: str | None, num_tokens: int, trained_tokens: int = 0
          ) -> Entry:
    """The entry of a line: its own error, else the measuring's `reason`, else accepted."""
    traj = loaded.trajectory
    error = loaded.error
    if error is None and reason is not None:
        error = TrajectoryError(reason, loaded.source, loaded.line, traj["id"])
    return Entry(loaded.source, loaded.line, loaded.offset,
                 None if traj is None else traj["id"], None if traj is None else traj["domain"],
                 num_tokens, None if error is None else dataclasses.asdict(error),
                 trained_tokens)


def line_counts(paths: list[str]) -> list[int]:
    """Non-blank lines per file (what read_jsonl yields)."""
    return [sum(1 for _ in raw_lines(path)) for path in paths]


def shard_range(total: int, num_shards: int, index: int) -> tuple[int, int]:
    """[first, end) of the global line numbers in shard `index` of `num_shards`."""
    return total * index // num_shards, total * (index + 1) // num_shards


def read_lines(paths: list[str], first: int, end: int) -> Iterator[Loaded]:
    """Non-blank lines number [first, end) of the files in order, parsed and validated; the
    lines before are skipped unparsed."""
    n = 0
    for path in paths:
        for lineno, offset, raw in raw_lines(path):
            if first <= n < end:
                yield read_line(raw, path, lineno, offset)
            n += 1
            if n >= end:
                return


class ShardDir:
    """The shard files of one output directory."""

    def __init__(self, out_dir: str | Path, inputs: dict[str, Any]):
        self.root = Path(out_dir) / STATE_DIR
        self.inputs = inputs

    @staticmethod
    def describe_inputs(paths: list[str], **options: Any) -> dict[str, Any]:
        files = [{"path": os.path.abspath(p), "size": os.path.getsize(p),
                  "mtime_ns": os.stat(p).st_mtime_ns} for p in paths]
        return {"files": files, **options}

    def open(self) -> "ShardDir":
        """Checks that the directory, if there is one, holds shards of the same inputs (it is
        made with the first shard written)."""
        record = self.root / "inputs.json"
        if record.exists() and json.loads(record.read_text()) != self.inputs:
            raise ShardError(f"{self.root} holds shards of other inputs or options; remove "
                             "it (or use another --out) to start over")
        return self

    def path(self, index: int, num_shards: int) -> Path:
        return self.root / f"shard-{index:05d}-of-{num_shards:05d}.json"

    def done(self, index: int, num_shards: int) -> bool:
        return self.path(index, num_shards).exists()

    def write(self, index: int, num_shards: int, entries: list[Entry]) -> None:
        record = self.root / "inputs.json"
        if not record.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            _write_atomic(record, json.dumps(self.inputs, indent=1))
        _write_atomic(self.path(index, num_shards),
                      json.dumps([dataclasses.asdict(e) for e in entries]))

    def read_all(self, num_shards: int) -> Iterator[Entry]:
        missing = [i for i in range(num_shards) if not self.done(i, num_shards)]
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            raise ShardError(f"{len(missing)} of {num_shards} shards are not measured yet "
                             f"(shard index {shown}); run them first")
        # A writer killed between writing and renaming leaves a temporary file; once every
        # shard is in, nothing will rename it, so it goes.
        for stale in self.root.glob("*.tmp*"):
            stale.unlink(missing_ok=True)
        for i in range(num_shards):
            for raw in json.loads(self.path(i, num_shards).read_text()):
                yield Entry(**raw)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
