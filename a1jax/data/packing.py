"""From one tokenized trajectory to next-token examples, the length policy, and packing.

An example is three int32 arrays of the same length L - 1 for a trajectory of L tokens:
`tokens` = ids[:-1], `targets` = ids[1:], `loss_mask` = mask[1:] (1 where the target is a token
the assistant produced). Shifting before packing makes the target of every position the next
token of its own trajectory, so nothing crosses a segment boundary.

Packing is grain's `FirstFitPackIterDataset` (first-fit into `num_packing_bins` open sequences,
checkpointable); it numbers segments 1.. per sequence (0 = padding) and restarts positions at 0 in
every segment. `pack` renames its outputs to the batch keys the trainer reads.
"""

from __future__ import annotations

import dataclasses
import threading

import grain
import numpy as np

from a1jax.data.tokenizer import Encoded

LENGTH_POLICIES = ("drop", "truncate")
BATCH_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")


@dataclasses.dataclass
class LengthStats:
    """Counts of what the length policy did, for reporting (not part of the iterator state)."""

    seen: int = 0
    dropped_over_length: int = 0
    truncated: int = 0
    dropped_nothing_to_train: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:  # grain may run the encoding map on several threads
            for key, n in counts.items():
                setattr(self, key, getattr(self, key) + n)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if not f.name.startswith("_")}


def to_example(encoded: Encoded, seq_len: int, policy: str,
               stats: LengthStats | None = None) -> dict[str, np.ndarray] | None:
    """The next-token example of `encoded`, or None when the length policy drops it.

    A trajectory fits when it has at most seq_len + 1 tokens (seq_len inputs). Longer ones are
    dropped, or under "truncate" cut to their first seq_len + 1 tokens; either way the stats count
    it. An example left with no trained target (possible after truncation) is dropped and counted.
    """
    if policy not in LENGTH_POLICIES:
        raise ValueError(f"length policy must be one of {LENGTH_POLICIES}, got {policy!r}")
    stats = stats if stats is not None else LengthStats()
    tokens, mask = encoded.tokens, encoded.loss_mask
    stats.add(seen=1)
    if len(tokens) > seq_len + 1:
        if policy == "drop":
            stats.add(dropped_over_length=1)
            return None
        stats.add(truncated=1)
        tokens, mask = tokens[:seq_len + 1], mask[:seq_len + 1]
    if len(tokens) < 2 or not mask[1:].any():
        stats.add(dropped_nothing_to_train=1)
        return None
    return {"tokens": tokens[:-1].astype(np.int32), "targets": tokens[1:].astype(np.int32),
            "loss_mask": mask[1:].astype(np.int32)}


def pack(examples: grain.IterDataset, seq_len: int, num_packing_bins: int,
         seed: int) -> grain.IterDataset:
    """Packs examples into sequences of exactly `seq_len`, each a dict of int32 [seq_len] arrays
    under `BATCH_KEYS`; padding has segment id 0, token/target/mask/position 0."""
    packed = grain.experimental.FirstFitPackIterDataset(
        examples, length_struct={"tokens": seq_len, "targets": seq_len, "loss_mask": seq_len},
        num_packing_bins=num_packing_bins, seed=seed, shuffle_bins=True,
        # targets and loss_mask line up with tokens: one set of segment ids and positions.
        meta_features=("targets", "loss_mask"))
    return packed.map(_rename)


def _rename(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"tokens": x["tokens"].astype(np.int32), "targets": x["targets"].astype(np.int32),
            "loss_mask": x["loss_mask"].astype(np.int32),
            "segment_ids": x["tokens_segment_ids"].astype(np.int32),
            "positions": x["tokens_positions"].astype(np.int32)}
