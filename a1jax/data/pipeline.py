"""The grain input pipeline: trajectories -> packed, masked, per-process batches.

    source (JSONL or TFDS ArrayRecord) -> this process's shard of every domain -> seeded shuffle,
    reshuffled each epoch -> domain mixture by weight -> render + tokenize + mask (prefetched on
    threads) -> length policy -> first-fit packing -> batch

Batch format: a dict of int32 numpy arrays, all [batch_size, seq_len]:

    tokens       input token ids
    targets      the token each position must predict: the next token of the same trajectory
    loss_mask    1 where the target is a token the assistant produced (reasoning, content, tool
                 calls, the closing <|im_end|>); 0 for system / user / tool text, template
                 scaffolding and padding. Loss = sum(loss_mask * xent(logits, targets)).
    segment_ids  1, 2, ... per packed trajectory within a row; 0 = padding. Attention must stay
                 within a segment (causal and segment_ids equal and nonzero).
    positions    position within the segment, restarting at 0 for every trajectory (RoPE input)

`batch_size` is per process: each process reads a disjoint shard of every domain
(`shard_index`/`shard_count`, normally jax.process_index() / jax.process_count()).

Determinism and resume: everything is a function of `seed` (shuffles, mixture, packing bins), so
two iterators with one config yield identical batches. The iterator is a grain DatasetIterator:
`it.get_state()` after k batches (a small JSON-serialisable dict, saved with the model
checkpoint) and `it.set_state(state)` on a fresh iterator continue with batch k + 1 exactly.

    encoder = TrajectoryEncoder(load_tokenizer(tokenizer_dir))   # its chat template, if any
    source = TfdsSource(f"{data_dir}/trajectory_dataset/1.0.0", "train")
    config = PipelineConfig(seq_len=131072, batch_size=1, seed=0,
                            mixture={"kb_search": 0.4, "calculator": 0.3, "files": 0.3},
                            shard_index=jax.process_index(), shard_count=jax.process_count())
    batches = iter(make_dataset(source, encoder, config))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol, Sequence

import grain
import numpy as np

from a1jax.data import packing
from a1jax.data.schema import read_jsonl
from a1jax.data.tokenizer import TrajectoryEncoder
from a1jax.errors import A1Error


class PipelineError(A1Error):
    """A pipeline configuration that cannot produce batches from its source."""


class TrajectorySource(Protocol):
    """Random access to validated trajectories, with each record's domain known up front."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...

    def domains(self) -> Sequence[str]: ...


class JsonlSource:
    """Validated trajectories of local JSONL files held in memory (tests, demos, small sets).

    Any invalid line raises its `TrajectoryError` here, before training starts; `prepare` is the
    tool that skips and reports bad lines.
    """

    def __init__(self, paths: Sequence[str]):
        self._records = []
        for path in paths:
            for loaded in read_jsonl(path):
                if loaded.error is not None:
                    raise loaded.error
                self._records.append(loaded.trajectory)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._records[index]

    def domains(self) -> list[str]:
        return [r["domain"] for r in self._records]


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """How to turn a source into batches (see the module docstring for the batch format).

    mixture: domain -> sampling weight; every domain of the source must be named. None reads the
      records in one shuffled stream in proportion to what the source holds.
    num_epochs: passes over the data (None: repeat forever). With a mixture the domains repeat
      forever, since epochs of differently weighted domains do not line up.
    num_packing_bins: sequences being filled at once (default: batch_size); more bins, less
      padding, more memory.
    prefetch_threads: grain threads that render, tokenize and mask trajectories ahead of the
      packer (0: inline on the caller's thread); prefetch_buffer: how many encoded trajectories
      they keep ready. The encoding map is the only expensive stage, so this is the prefetch.
    """

    seq_len: int
    batch_size: int
    seed: int = 0
    mixture: Mapping[str, float] | None = None
    length_policy: str = "drop"
    num_epochs: int | None = None
    num_packing_bins: int | None = None
    shard_index: int = 0
    shard_count: int = 1
    prefetch_threads: int = 2
    prefetch_buffer: int = 16

    def __post_init__(self):
        if self.seq_len < 2 or self.batch_size < 1:
            raise PipelineError("seq_len must be >= 2 and batch_size >= 1")
        if self.length_policy not in packing.LENGTH_POLICIES:
            raise PipelineError(f"length_policy must be one of {packing.LENGTH_POLICIES}")
        if not 0 <= self.shard_index < self.shard_count:
            raise PipelineError(f"shard_index {self.shard_index} not in [0, {self.shard_count})")
        if self.mixture is not None and (any(w < 0 for w in self.mixture.values())
                                         or not any(self.mixture.values())):
            raise PipelineError("mixture weights must be >= 0, and one of them > 0")


def _index_stream(source: TrajectorySource, config: PipelineConfig) -> grain.MapDataset:
    """Record indices of this process's shard: shuffled (anew each epoch) and mixed by domain."""
    if config.mixture is None:
        own = np.arange(len(source))[config.shard_index::config.shard_count]
        return grain.MapDataset.source(own).shuffle(seed=config.seed).repeat(config.num_epochs)
    by_domain: dict[str, list[int]] = {}
    for i, domain in enumerate(source.domains()):
        by_domain.setdefault(domain, []).append(i)
    unknown = sorted(set(by_domain) - set(config.mixture))
    if unknown:
        raise PipelineError(f"domains {unknown} are in the data but not in the mixture")
    streams, weights = [], []
    for k, (domain, weight) in enumerate(sorted(config.mixture.items())):
        if weight == 0:
            continue
        # Shard each domain before mixing, so every process sees every domain at its weight.
        own = np.asarray(by_domain.get(domain, []))[config.shard_index::config.shard_count]
        if len(own) == 0:
            raise PipelineError(f"mixture domain {domain!r} has no records in shard "
                             f"{config.shard_index} of {config.shard_count}")
        streams.append(grain.MapDataset.source(own).shuffle(seed=config.seed + 7919 * (k + 1))
                       .repeat(None))
        weights.append(weight)
    return grain.MapDataset.mix(streams, weights)


def make_dataset(source: TrajectorySource, encoder: TrajectoryEncoder, config: PipelineConfig,
                 stats: packing.LengthStats | None = None) -> grain.IterDataset:
    """The batch stream of `config` over `source`; iterate it with `iter(...)`.

    `stats` (optional, fresh) receives the length policy's counts as trajectories are encoded.
    """
    stats = stats if stats is not None else packing.LengthStats()

    def encode(index: Any) -> dict[str, np.ndarray] | None:
        trajectory = source[int(index)]
        try:
            encoded = encoder(trajectory)
        except A1Error as e:  # a template other than the one `prepare` checked with refused it
            raise PipelineError(f"record {int(index)} (trajectory {trajectory['id']!r}): {e}"
                                ) from None
        example = packing.to_example(encoded, config.seq_len, config.length_policy, stats)
        dropped = stats.dropped_over_length + stats.dropped_nothing_to_train
        if example is None and dropped == stats.seen >= max(1, len(source)):
            # A stream that drops everything would otherwise spin forever without a batch.
            raise PipelineError(f"the first {stats.seen} trajectories were all dropped by the "
                                f"length policy ({stats.as_dict()}); is seq_len="
                                f"{config.seq_len} too short?")
        return example

    # Random-access map: element i is always the same example, which is what makes the stream a
    # pure function of the seed; dropped examples are None and skipped by to_iter_dataset.
    examples = _index_stream(source, config).map(encode)
    # (grain's ThreadPrefetchIterDataset over the batches is left out on purpose: its daemon
    # thread aborts the interpreter at exit when it is stopped inside the tokenizer's native
    # code, and the batches after the encoding map are cheap.)
    read = grain.ReadOptions(num_threads=config.prefetch_threads,
                             prefetch_buffer_size=max(1, config.prefetch_buffer))
    packed = packing.pack(examples.to_iter_dataset(read), config.seq_len,
                          config.num_packing_bins or config.batch_size, config.seed)
    return packed.batch(config.batch_size, drop_remainder=True)
