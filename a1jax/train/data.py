"""A stage's data: the prepared TFDS dataset (generated from synthetic tasks when the experiment
names none), the train iterator and the fixed held-out batches."""

from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Any, Callable

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
        for line in prepare.summary(splits, len(rejected)):
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
    processes = jax.process_count()
    if c.batch_size % processes:
        raise DataError(f"batch_size {c.batch_size} is not divisible by the {processes} "
                        "processes, which each read their own rows")
    return PipelineConfig(
        seq_len=c.seq_len, batch_size=c.batch_size // processes, seed=c.seed + seed_offset,
        mixture=c.data.mixture.to_dict() if mixture else None,
        length_policy=c.data.length_policy, shard_index=jax.process_index(),
        shard_count=processes)


def train_iterator(c: ml_collections.ConfigDict, directory: str, encoder: TrajectoryEncoder):
    """The resumable grain iterator over this process's share of the train split."""
    source = tfds_builder.TfdsSource(directory, "train")
    return iter(make_dataset(source, encoder, pipeline_config(c)))


def eval_batches(c: ml_collections.ConfigDict, directory: str, encoder: TrajectoryEncoder
                 ) -> list[dict[str, np.ndarray]]:
    """`data.eval_batches` fixed batches of the held-out split (the same at every eval, and the
    same for every stage reading this dataset); the train split when there is no eval split."""
    try:
        source = tfds_builder.TfdsSource(directory, "eval")
    except ValueError:
        raise DataError(f"{directory}: no eval split; prepare the data with "
                        "--eval-fraction > 0") from None
    it = iter(make_dataset(source, encoder, pipeline_config(c, mixture=False, seed_offset=1)))
    return [next(it) for _ in range(c.data.eval_batches)]
