"""Prepare trajectory JSONL files as a TFDS (ArrayRecord) dataset with train / eval splits.

    python -m a1jax.data.prepare --input 'data/*.jsonl' --out DIR [--on-error skip|fail]
        [--tokenizer DIR] [--max-tokens N] [--eval-fraction 0.05]

Every line is validated (`schema`), rendered in the tokenizer's chat format and tokenized with
its loss mask, so a trajectory the trainer could not use is caught here: malformed JSON, invalid
UTF-8, unknown roles, a misplaced system message, a tool result with no call, a call to an unknown
tool, arguments that are not JSON, nothing to train on, more than --max-tokens tokens. With
`--on-error skip` (default) each rejected line is printed with its reason and location and the
rest is written; with `fail` the first one stops the command (`error: ...`, exit 2) before
anything is written.
The report gives the counts per domain and split and the token lengths.

Whether a trajectory goes to eval is decided by a hash of its id, so it does not move when
other lines are added or removed.
"""

from __future__ import annotations

import glob
import hashlib
from collections import defaultdict
from typing import Any

from a1jax import cli
from a1jax.data import args as argparsing
from a1jax.data import tfds_builder
from a1jax.data.schema import Loaded, TrajectoryError, read_jsonl
from a1jax.data.tokenizer import TrajectoryEncoder, load_tokenizer
from a1jax.errors import A1Error


class PrepareError(A1Error):
    """Stops `prepare` with a one-line message."""


def is_eval(trajectory_id: str, fraction: float) -> bool:
    digest = hashlib.sha256(trajectory_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def collect(paths: list[str], encoder: TrajectoryEncoder, *, max_tokens: int | None,
            eval_fraction: float, on_error: str, report=print
            ) -> tuple[dict[str, list[tfds_builder.Ref]], list[TrajectoryError]]:
    """Validates and measures every line of `paths`: where the accepted trajectories are, by
    split, and the rejections (printed through `report` as they are found).
    Under on_error="fail" the first rejection raises `PrepareError` instead."""
    splits: dict[str, list] = {s: [] for s in tfds_builder.SPLITS}
    rejected: list[TrajectoryError] = []
    first_seen: dict[str, str] = {}
    for path in paths:
        for loaded in read_jsonl(path):
            error, num_tokens = loaded.error, 0
            if error is None:
                error, num_tokens = _measure(loaded, encoder, max_tokens, first_seen)
            if error is not None:
                if on_error == "fail":
                    raise PrepareError(str(error))
                report(f"rejected {error}")
                rejected.append(error)
                continue
            traj = loaded.trajectory
            first_seen[traj["id"]] = f"{loaded.source}:{loaded.line}"
            split = "eval" if is_eval(traj["id"], eval_fraction) else "train"
            splits[split].append(tfds_builder.Ref(loaded.source, loaded.line, loaded.offset,
                                                  traj["id"], traj["domain"], num_tokens))
    return splits, rejected


def _measure(loaded: Loaded, encoder: TrajectoryEncoder, max_tokens: int | None,
             first_seen: dict[str, str]) -> tuple[TrajectoryError | None, int]:
    """The checks that need the whole file or the tokenizer: (error or None, token count)."""
    traj = loaded.trajectory

    def error(reason: str) -> TrajectoryError:
        return TrajectoryError(reason, loaded.source, loaded.line, traj["id"])

    if traj["id"] in first_seen:
        return error(f"duplicate id (first at {first_seen[traj['id']]})"), 0
    try:
        encoded = encoder(traj)
    except A1Error as e:  # the template refused it, or its turns cannot be found
        return error(f"cannot render: {e}"), 0
    if max_tokens is not None and len(encoded) > max_tokens:
        return error(f"over-length: {len(encoded)} tokens > --max-tokens {max_tokens}"), 0
    if not encoded.loss_mask.any():
        return error("nothing to train on after rendering"), 0
    return None, len(encoded)


def summary(splits: dict[str, list[tfds_builder.Ref]], n_rejected: int) -> list[str]:
    """The report's table: per domain, the count in each split and token lengths."""
    rows: dict[str, dict[str, Any]] = defaultdict(lambda: {"train": 0, "eval": 0, "tokens": []})
    for split, refs in splits.items():
        for ref in refs:
            rows[ref.domain][split] += 1
            rows[ref.domain]["tokens"].append(ref.num_tokens)
    lines = [f"{'domain':<16}{'train':>8}{'eval':>8}{'min tok':>10}{'mean tok':>10}"
             f"{'max tok':>10}{'total tok':>12}"]
    for domain in sorted(rows):
        r = rows[domain]
        t = r["tokens"]
        lines.append(f"{domain:<16}{r['train']:>8}{r['eval']:>8}{min(t):>10}"
                     f"{sum(t) // len(t):>10}{max(t):>10}{sum(t):>12}")
    n_train, n_eval = len(splits["train"]), len(splits["eval"])
    lines.append(f"accepted {n_train + n_eval} (train {n_train}, eval {n_eval}), "
                 f"rejected {n_rejected}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparsing.ArgumentParser(prog="python -m a1jax.data.prepare",
                                  description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True, help="JSONL file or glob (quote it)")
    p.add_argument("--out", required=True, help="data directory for the TFDS dataset")
    p.add_argument("--on-error", choices=("skip", "fail"), default="skip")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir (default: a1jax's own)")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--eval-fraction", type=float, default=0.05)
    args = p.parse_args(argv)
    paths = sorted(glob.glob(args.input))
    if not paths:
        raise PrepareError(f"no file matches --input {args.input!r}")
    if not 0 <= args.eval_fraction < 1:
        raise PrepareError("--eval-fraction must be in [0, 1)")
    try:
        encoder = TrajectoryEncoder(load_tokenizer(args.tokenizer))
    except (OSError, ValueError) as e:
        raise PrepareError(f"cannot load tokenizer: {e}") from None
    splits, rejected = collect(paths, encoder, max_tokens=args.max_tokens,
                               eval_fraction=args.eval_fraction, on_error=args.on_error)
    if not splits["train"]:
        raise PrepareError("no valid trajectory in the train split; nothing written")
    for line in summary(splits, len(rejected)):
        print(line)
    print(f"wrote {tfds_builder.write(args.out, splits)}")
    return 0


if __name__ == "__main__":
    cli.run(main)
