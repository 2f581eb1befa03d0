"""Prepare trajectory JSONL files as a TFDS (ArrayRecord) dataset with train / eval splits.

    python -m a1jax.data.prepare --input 'data/*.jsonl' --out DIR [--on-error skip|fail]
        [--tokenizer DIR] [--max-tokens N] [--eval-fraction 0.05] [--workers N]
    # across machines: one job per shard, then one --finalize (launch/slurm/prepare.sbatch)
    python -m a1jax.data.prepare --input ... --out DIR --num-shards 64 --shard-index $I
    python -m a1jax.data.prepare --input ... --out DIR --num-shards 64 --finalize

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
import itertools
import multiprocessing
import os
import re
from collections import Counter, defaultdict
from typing import Any, Iterable, Iterator

from tqdm import tqdm

from a1jax import cli
from a1jax.data import args as argparsing
from a1jax.data import shards, tfds_builder
from a1jax.data.schema import Loaded, TrajectoryError, read_jsonl
from a1jax.data.tokenizer import TrajectoryEncoder, load_tokenizer
from a1jax.errors import A1Error


class PrepareError(A1Error):
    """Stops `prepare` with a one-line message."""


def is_eval(trajectory_id: str, fraction: float) -> bool:
    digest = hashlib.sha256(trajectory_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def collect(paths: list[str], encoder: TrajectoryEncoder, *, max_tokens: int | None,
            eval_fraction: float, on_error: str, report=print, workers: int = 1,
            progress: bool = False
            ) -> tuple[dict[str, list[tfds_builder.Ref]], list[TrajectoryError]]:
    """Validates and measures every line of `paths`: where the accepted trajectories are, by
    split, and the rejections (printed through `report` as they are found).
    Under on_error="fail" the first rejection raises `PrepareError` instead.

    With `workers` > 1 the rendering, tokenizing and masking (nearly all the time) run in that
    many processes, a chunk of lines at a time, and their results are taken in input order:
    the outcome, and so the dataset written from it, is the same whatever the number."""
    lines = (loaded for path in paths for loaded in read_jsonl(path))
    total = sum(shards.line_counts(paths)) if progress else None
    with _progress(total) as bar:
        entries = measure_lines(lines, encoder, max_tokens, workers, on_error, bar)
        return merge(entries, eval_fraction=eval_fraction, on_error=on_error, report=report)


def measure_lines(lines: Iterable[Loaded], encoder: TrajectoryEncoder, max_tokens: int | None,
                  workers: int, on_error: str, bar=None) -> Iterator[shards.Entry]:
    """Each line's entry, in order. Under on_error="fail" the first rejected line raises
    `PrepareError` (a duplicate id is only known when merging)."""
    tokens = 0
    with _Encoders(encoder, max_tokens, workers) as encode:
        for loaded, (reason, num_tokens, trained) in encode(lines):
            item = shards.entry(loaded, reason, num_tokens, trained)
            if item.error is not None and on_error == "fail":
                raise PrepareError(str(item.trajectory_error()))
            if bar is not None:
                tokens += num_tokens
                bar.update(1)
                bar.set_postfix_str(f"{tokens / max(bar.format_dict['elapsed'], 1e-9):,.0f} "
                                    "tok/s")
            yield item


def merge(entries: Iterable[shards.Entry], *, eval_fraction: float, on_error: str,
          report=print) -> tuple[dict[str, list[tfds_builder.Ref]], list[TrajectoryError]]:
    """Measured lines, in input order -> the accepted ones by split, and the rejections
    (printed through `report`; under on_error="fail" the first raises `PrepareError`)."""
    splits: dict[str, list] = {s: [] for s in tfds_builder.SPLITS}
    rejected: list[TrajectoryError] = []
    first_seen: dict[str, str] = {}
    for item in entries:
        error = item.trajectory_error()
        if error is None and item.id in first_seen:
            error = TrajectoryError(f"duplicate id (first at {first_seen[item.id]})",
                                    item.source, item.line, item.id)
        if error is not None:
            if on_error == "fail":
                raise PrepareError(str(error))
            report(f"rejected {error}")
            rejected.append(error)
            continue
        first_seen[item.id] = f"{item.source}:{item.line}"
        split = "eval" if is_eval(item.id, eval_fraction) else "train"
        splits[split].append(tfds_builder.Ref(item.source, item.line, item.offset, item.id,
                                              item.domain, item.num_tokens,
                                              item.trained_tokens))
    return splits, rejected


def _progress(total: int | None):
    """A progress bar on a terminal only: a log keeps the rejections and the summary."""
    return tqdm(total=total, desc="prepare", unit="traj",
                disable=None if total is not None else True, dynamic_ncols=True)


def measure(trajectory: dict[str, Any], encoder: TrajectoryEncoder,
            max_tokens: int | None) -> tuple[str | None, int, int]:
    """The checks that need the tokenizer: (why it is rejected or None, its token count, its
    trained tokens)."""
    try:
        encoded = encoder(trajectory)
    except A1Error as e:  # the template refused it, or its turns cannot be found
        return f"cannot render: {e}", 0, 0
    if max_tokens is not None and len(encoded) > max_tokens:
        return f"over-length: {len(encoded)} tokens > --max-tokens {max_tokens}", 0, 0
    trained = int(encoded.loss_mask.sum())
    if not trained:
        return "nothing to train on after rendering", 0, 0
    return None, len(encoded), trained


class _Encoders:
    """`measure` over lines, in this process or in a pool of `workers` processes.

    The pool starts its processes fresh ("spawn"), each unpickling the encoder once: a forked
    copy of a process whose tokenizer or JAX runtime already runs threads can deadlock."""

    def __init__(self, encoder: TrajectoryEncoder, max_tokens: int | None, workers: int):
        self.encoder, self.max_tokens, self.workers = encoder, max_tokens, workers
        self.pool = None

    def __enter__(self):
        if self.workers > 1:
            context = multiprocessing.get_context("spawn")
            self.pool = context.Pool(self.workers, initializer=_worker_init,
                                     initargs=(self.encoder, self.max_tokens))
        return self

    def __call__(self, lines: Iterable[Loaded]
                 ) -> Iterator[tuple[Loaded, tuple[str | None, int, int]]]:
        """(line, measure of it) in input order. With a pool, a window of lines at a time, so
        that memory holds a window, not the dataset."""
        if self.pool is None:
            for loaded in lines:
                yield loaded, _measure_one(_trajectory(loaded), self.encoder, self.max_tokens)
            return
        window = 16 * self.workers
        batch: list[Loaded] = []
        for loaded in itertools.chain(lines, [None]):
            if loaded is not None:
                batch.append(loaded)
            if batch and (loaded is None or len(batch) == window):
                results = self.pool.map(_worker_measure, [_trajectory(x) for x in batch],
                                        chunksize=2)
                yield from zip(batch, results)
                batch = []

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _trajectory(loaded: Loaded) -> dict[str, Any] | None:
    return None if loaded.error is not None else loaded.trajectory


def _measure_one(trajectory, encoder, max_tokens):
    return (None, 0, 0) if trajectory is None else measure(trajectory, encoder, max_tokens)


_WORKER: dict[str, Any] = {}


def _worker_init(encoder: TrajectoryEncoder, max_tokens: int | None) -> None:
    _WORKER.update(encoder=encoder, max_tokens=max_tokens)


def _worker_measure(trajectory):
    return _measure_one(trajectory, _WORKER["encoder"], _WORKER["max_tokens"])


def summary(splits: dict[str, list[tfds_builder.Ref]],
            rejected: list[TrajectoryError]) -> list[str]:
    """The report's table: per domain, the count in each split, token lengths and trained
    tokens; then the totals, and the rejections counted by reason."""
    rows: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"train": 0, "eval": 0, "tokens": [], "trained": 0})
    for split, refs in splits.items():
        for ref in refs:
            rows[ref.domain][split] += 1
            rows[ref.domain]["tokens"].append(ref.num_tokens)
            rows[ref.domain]["trained"] += ref.trained_tokens
    lines = [f"{'domain':<16}{'train':>8}{'eval':>8}{'min tok':>10}{'mean tok':>10}"
             f"{'max tok':>10}{'total tok':>12}{'trained tok':>13}"]
    for domain in sorted(rows):
        r = rows[domain]
        t = r["tokens"]
        lines.append(f"{domain:<16}{r['train']:>8}{r['eval']:>8}{min(t):>10}"
                     f"{sum(t) // len(t):>10}{max(t):>10}{sum(t):>12}{r['trained']:>13}")
    n_train, n_eval = len(splits["train"]), len(splits["eval"])
    lines.append(f"accepted {n_train + n_eval} (train {n_train}, eval {n_eval}), "
                 f"rejected {len(rejected)}")
    if rejected:
        kinds = Counter(_reason_kind(e.reason) for e in rejected)
        lines.append("rejections by reason: " + ", ".join(f"{kind} {n}"
                                                        for kind, n in kinds.most_common()))
    return lines


def _reason_kind(reason: str) -> str:
    """A rejection's reason without its particulars: "over-length: 4000 tokens > ..." ->
    "over-length", "unknown role 'human' (...)" -> "unknown role"."""
    head = reason.split(":")[0]
    return re.sub(r"\s+('|\(|\d).*$", "", head).strip() or head.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparsing.ArgumentParser(prog="python -m a1jax.data.prepare",
                                  description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True, help="JSONL file or glob (quote it)")
    p.add_argument("--out", required=True, help="data directory for the TFDS dataset")
    p.add_argument("--on-error", choices=("skip", "fail"), default="skip")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir (default: a1jax's own)")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--eval-fraction", type=float, default=0.05)
    p.add_argument("--workers", type=int, default=None,
                   help="processes that render, tokenize and mask (default: all cores, one "
                   "per 8 MiB of input: starting one costs seconds); the output does not "
                   "depend on it")
    p.add_argument("--num-shards", type=int, default=None,
                   help="cut the input lines into this many shards, each measured and saved "
                   "apart (default: one per 256 lines); a rerun measures only missing ones")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--shard-index", type=int, default=None,
                     help="measure only this shard (one job of a SLURM array or Kubernetes "
                     "indexed job); then run --finalize once every shard is done")
    how.add_argument("--finalize", action="store_true",
                     help="write the dataset from the shards already measured")
    args = p.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        raise PrepareError("--workers must be >= 1")
    paths = sorted(glob.glob(args.input))
    if not paths:
        raise PrepareError(f"no file matches --input {args.input!r}")
    if not 0 <= args.eval_fraction < 1:
        raise PrepareError("--eval-fraction must be in [0, 1)")
    counts = shards.line_counts(paths)
    total = sum(counts)
    if args.shard_index is not None and args.num_shards is None:
        raise PrepareError("--shard-index needs --num-shards (the same in every job)")
    num_shards = args.num_shards or max(1, -(-total // 256))
    if not 1 <= num_shards <= max(total, 1):
        raise PrepareError(f"--num-shards must be in [1, {max(total, 1)}] (the input has "
                           f"{total} lines)")
    if args.shard_index is not None and not 0 <= args.shard_index < num_shards:
        raise PrepareError(f"--shard-index must be in [0, {num_shards})")
    state = shards.ShardDir(args.out, shards.ShardDir.describe_inputs(
        paths, tokenizer=os.path.abspath(args.tokenizer) if args.tokenizer else None,
        max_tokens=args.max_tokens, num_shards=num_shards)).open()

    if not args.finalize:
        todo = ([args.shard_index] if args.shard_index is not None else
                [i for i in range(num_shards) if not state.done(i, num_shards)])
        if args.shard_index is None and len(todo) < num_shards:
            print(f"resuming: {num_shards - len(todo)} of {num_shards} shards already measured "
                  f"in {state.root}")
        if todo:
            measure_shards(paths, total, num_shards, todo, state, args)
        if args.shard_index is not None:
            print(f"measured shard {args.shard_index} of {num_shards}; when every shard is, "
                  f"run the same command with --finalize instead of --shard-index")
            return 0
    splits, rejected = merge(state.read_all(num_shards), eval_fraction=args.eval_fraction,
                             on_error=args.on_error)
    if not splits["train"]:
        raise PrepareError("no valid trajectory in the train split; nothing written")
    for line in summary(splits, rejected):
        print(line)
    print(f"wrote {tfds_builder.write(args.out, splits)}")
    return 0


def measure_shards(paths: list[str], total: int, num_shards: int, todo: list[int],
                   state: shards.ShardDir, args) -> None:
    """Measures the shards `todo`, each saved as it is done."""
    try:
        encoder = TrajectoryEncoder(load_tokenizer(args.tokenizer))
    except (OSError, ValueError) as e:
        raise PrepareError(f"cannot load tokenizer: {e}") from None
    ranges = [shards.shard_range(total, num_shards, i) for i in todo]
    size = sum(os.path.getsize(p) for p in paths) * sum(e - f for f, e in ranges) // total
    workers = args.workers or min(os.cpu_count() or 1, max(1, size >> 23))
    with _progress(sum(e - f for f, e in ranges)) as bar:
        for index, (first, end) in zip(todo, ranges):
            entries = list(measure_lines(shards.read_lines(paths, first, end), encoder,
                                         args.max_tokens, workers, args.on_error, bar))
            state.write(index, num_shards, entries)


if __name__ == "__main__":
    cli.run(main)
