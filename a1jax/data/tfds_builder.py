"""The TFDS dataset of trajectories: ArrayRecord files with train / eval splits, no TensorFlow.

TFDS writes ArrayRecord through its own numpy example serializer, and `as_data_source` reads it
back the same way, so neither side imports TensorFlow. Each record holds

    id          the trajectory id
    domain      its domain (the mixture weights select on it)
    trajectory  the validated trajectory as JSON text (tool-call arguments already objects)
    num_tokens  its length under the tokenizer `prepare` measured with

Records are written sorted by domain, then id (`disable_shuffling`: grain shuffles at read time,
seeded), and the builder's metadata keeps each split's per-domain record ranges, so a reader
knows every record's domain without decoding the dataset. The builder is handed `Ref`s (where a
validated line is), not trajectories, and re-reads each line as it writes it: memory stays flat
however large the dataset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from a1jax.data.schema import TrajectoryError, read_line

SPLITS = ("train", "eval")


@dataclasses.dataclass(frozen=True)
class Ref:
    """Where a validated trajectory is: file, line number, byte offset; plus what is known of it."""

    source: str
    line: int
    offset: int
    id: str
    domain: str
    num_tokens: int
    trained_tokens: int = 0

    def load(self) -> dict[str, Any]:
        """The trajectory, re-read and re-validated (the file must not have changed)."""
        with open(self.source, "rb") as f:
            f.seek(self.offset)
            loaded = read_line(f.readline(), self.source, self.line, self.offset)
        if loaded.error is not None:
            raise loaded.error
        if loaded.trajectory["id"] != self.id:
            raise TrajectoryError("the file changed while it was being prepared", self.source,
                                  self.line, self.id)
        return loaded.trajectory


class TrajectoryDataset(tfds.core.GeneratorBasedBuilder):
    """Validated trajectories handed in as {split: [Ref, ...]}."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Trajectories as JSON text with id, domain and token count."}

    # TFDS looks for a checksums file next to a builder's source through `code_path`, which for a
    # builder inside a package needs the `importlib_resources` backport (not a TFDS dependency
    # here). This builder downloads nothing, so it has no source to point at.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return None

    def __init__(self, *, splits: dict[str, list[Ref]] | None = None, **kwargs: Any):
        self._splits = splits  # None when only reading an existing directory
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description="Agentic tool-use trajectories for a1jax.",
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(), "domain": tfds.features.Text(),
                "trajectory": tfds.features.Text(), "num_tokens": np.int32}),
            metadata=tfds.core.MetadataDict(), disable_shuffling=True)

    def _split_generators(self, dl_manager) -> dict[str, Iterator]:
        ordered = {split: sorted(refs, key=lambda r: (r.domain, r.id))
                   for split, refs in self._splits.items()}
        self.info.metadata["domain_ranges"] = {
            split: _domain_ranges([r.domain for r in refs]) for split, refs in ordered.items()}
        return {split: self._generate_examples(items) for split, items in ordered.items()}

    def _generate_examples(self, refs):
        for ref in refs:
            yield ref.id, {"id": ref.id, "domain": ref.domain,
                           "trajectory": json.dumps(ref.load(), ensure_ascii=False),
                           "num_tokens": ref.num_tokens}


def _domain_ranges(domains: Sequence[str]) -> dict[str, list[int]]:
    """{domain: [first, end)} of a list sorted by domain."""
    ranges: dict[str, list[int]] = {}
    for i, d in enumerate(domains):
        ranges.setdefault(d, [i, i])[1] = i + 1
    return ranges


def write(out_dir: str | Path, splits: dict[str, list[Ref]]) -> Path:
    """Writes the dataset under `out_dir`; returns the directory holding its files."""
    tfds.disable_progress_bar()
    splits = {name: refs for name, refs in splits.items() if refs}  # TFDS refuses empty splits
    builder = TrajectoryDataset(splits=splits, data_dir=str(out_dir), file_format="array_record")
    with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints download banners
        builder.download_and_prepare()
    return Path(builder.data_dir)


class TfdsSource:
    """One split of a written dataset as a random-access trajectory source (see pipeline)."""

    def __init__(self, dataset_dir: str | Path, split: str = "train"):
        builder = tfds.builder_from_directory(str(dataset_dir))
        if split not in builder.info.splits:
            raise ValueError(f"{dataset_dir}: no split {split!r} "
                             f"(has {', '.join(builder.info.splits)})")
        self._records = builder.as_data_source(split=split)
        self._domains = [""] * len(self._records)
        for domain, (first, end) in builder.info.metadata["domain_ranges"][split].items():
            self._domains[first:end] = [domain] * (end - first)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return json.loads(self._records[index]["trajectory"])

    def domains(self) -> list[str]:
        return self._domains

    def num_tokens(self, index: int) -> int:
        return int(self._records[index]["num_tokens"])
