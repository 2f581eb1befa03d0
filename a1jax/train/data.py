"""A stage's data: the prepared TFDS dataset (generated from synthetic tasks when the experiment
names none), the train iterator and the fixed held-out batches."""

from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from a1jax.data import prepare, synth, tfds_builder
from a1jax.data.pipeline import PipelineConfig, make_dataset
from a1jax.data.tokenizer import TrajectoryEncoder
from a1jax.errors import A1Error


class DataError(A1Error):
    """The experiment's data cannot be found or built."""


def dataset_dir(path: str) -> str:
    """A prepared dataset's version directory, from it or from the data directory above it."""
    if os.path.isfile(os.path.join(path, "dataset_info.json")):
        return path
    found = sorted(glob.glob(os.path.join(path, "trajectory_dataset", "*", "dataset_info.json")))
    if not found:
        raise DataError(f"data.dir {path} holds no dataset written by python -m "
                        "a1jax.data.prepare (no trajectory_dataset/VERSION/dataset_info.json)")
    return os.path.dirname(found[-1])


def synthesize(c: ml_collections.ConfigDict, out: str, encoder: TrajectoryEncoder,
               report: Callable[[str], None] = print) -> str:
    """Generates the stage's synthetic trajectories (every mixture domain, horizons spread over
    the range) and prepares them as a TFDS dataset in `out`; reuses it when already complete.
    Only process 0 writes; the others wait for it."""
    spec = {"mixture": sorted(c.data.mixture.keys()), "per_domain": c.data.synthetic_per_domain,
            "horizon": [c.data.horizon_min, c.data.horizon_max], "seed": c.seed,
            "eval_fraction": c.data.eval_fraction}
    marker = os.path.join(out, "synthetic.json")
    if jax.process_index() == 0 and not _matches(marker, spec):
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(os.path.join(out, "jsonl"))
        horizons = range(c.data.horizon_min, c.data.horizon_max + 1)
        paths = []
        for domain in spec["mixture"]:
            path = os.path.join(out, "jsonl", f"{domain}.jsonl")
            with open(path, "w") as f:
                for i in range(c.data.synthetic_per_domain):
                    horizon = horizons[i % len(horizons)]
                    trajectory = synth.make_trajectory(domain, horizon, c.seed, i)
                    f.write(json.dumps(trajectory) + "\n")
            paths.append(path)
        splits, rejected = prepare.collect(paths, encoder, max_tokens=None,
                                           eval_fraction=c.data.eval_fraction, on_error="fail")
        for line in prepare.summary(splits, rejected):
            report(f"  {line}")
        tfds_builder.write(os.path.join(out, "tfds"), splits)
        with open(marker, "w") as f:  # written last: its presence means the dataset is whole
            json.dump(spec, f)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("a1jax synthetic data")
    return dataset_dir(os.path.join(out, "tfds"))


def _matches(marker: str, spec: dict[str, Any]) -> bool:
    try:
        with open(marker) as f:
            return json.load(f) == spec
    except (OSError, json.JSONDecodeError):
        return False


def pipeline_config(c: ml_collections.ConfigDict, *, mixture: bool = True,
                    seed_offset: int = 0) -> PipelineConfig:
    """The whole global batch read by one pipeline (held-out batches: small and fixed)."""
    return PipelineConfig(
        seq_len=c.seq_len, batch_size=c.batch_size, seed=c.seed + seed_offset,
        mixture=c.data.mixture.to_dict() if mixture else None,
        length_policy=c.data.length_policy)


class RowReader:
    """The train batches' rows that this process's devices hold, one reader per global row.

    Row r of every global batch is packed by reader r of `batch_size`, from its own 1/batch_size
    share of every domain's records. The global batch is therefore the same whatever the number
    of processes, and each process reads only the rows it holds: its whole rows under data or
    expert parallelism, and under sequence parallelism the rows it holds a piece of (packing
    needs a row whole). Its state is every row's grain iterator state; with several processes
    `get_state` gathers all of them, so that the one state saved with a checkpoint resumes any
    process count.
    """

    def __init__(self, c: ml_collections.ConfigDict, directory: str,
                 encoder: TrajectoryEncoder, rows: Sequence[int]):
        source = tfds_builder.TfdsSource(directory, "train")
        self.rows = list(rows)
        self._its = {r: iter(make_dataset(source, encoder, PipelineConfig(
            seq_len=c.seq_len, batch_size=1, seed=c.seed, mixture=c.data.mixture.to_dict(),
            length_policy=c.data.length_policy, shard_index=r, shard_count=c.batch_size,
            num_packing_bins=min(c.batch_size, 8), prefetch_threads=1)))
            for r in self.rows}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batches = [next(self._its[r]) for r in self.rows]
        return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

    def get_state(self) -> dict[str, Any]:
        own = {str(r): it.get_state() for r, it in self._its.items()}
        if jax.process_count() > 1:
            own = _gather_json(own)
        return {"rows": own}

    def set_state(self, state: dict[str, Any]) -> None:
        rows = state.get("rows", {}) if isinstance(state, dict) else {}
        missing = [r for r in self.rows if str(r) not in rows]
        if missing:
            raise DataError(f"the checkpoint's data state has no reader for row {missing[0]} "
                            "(written with another batch_size, or by an older a1jax)")
        for r in self.rows:
            self._its[r].set_state(rows[str(r)])


def _gather_json(own: dict[str, Any]) -> dict[str, Any]:
    """Every process's dict merged (as JSON bytes through a process allgather)."""
    from jax.experimental import multihost_utils
    data = np.frombuffer(json.dumps(own).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([data.size], np.int64))
    padded = np.zeros(int(np.max(sizes)), np.uint8)
    padded[:data.size] = data
    every = multihost_utils.process_allgather(padded)
    merged: dict[str, Any] = {}
    for size, row in zip(np.asarray(sizes).reshape(-1), np.asarray(every)):
        merged.update(json.loads(bytes(row[:int(size)]).decode()))
    return merged


def train_iterator(c: ml_collections.ConfigDict, directory: str, encoder: TrajectoryEncoder,
                   rows: Sequence[int] | None = None) -> RowReader:
    """The resumable reader of the train rows this process holds (default: every row, one
    process)."""
    if c.batch_size % jax.process_count():
        raise DataError(f"batch_size {c.batch_size} is not divisible by the "
                        f"{jax.process_count()} processes")
    return RowReader(c, directory, encoder, range(c.batch_size) if rows is None else rows)


def eval_batches(c: ml_collections.ConfigDict, directory: str, encoder: TrajectoryEncoder,
                 rows: Sequence[int] | None = None) -> list[dict[str, np.ndarray]]:
    """`data.eval_batches` fixed batches of the held-out split (the same at every eval, and the
    same for every stage reading this dataset), restricted to `rows` (default: all). Every
    process reads the small held-out split whole and keeps its rows, so that eval batches do not
    depend on the process count either."""
    try:
        source = tfds_builder.TfdsSource(directory, "eval")
    except ValueError:
        raise DataError(f"{directory}: no eval split; prepare the data with "
                        "--eval-fraction > 0") from None
    it = iter(make_dataset(source, encoder, pipeline_config(c, mixture=False, seed_offset=1)))
    keep = np.asarray(list(range(c.batch_size) if rows is None else rows))
    return [{k: v[keep] for k, v in next(it).items()} for _ in range(c.data.eval_batches)]
