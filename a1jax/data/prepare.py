"""Prepare trajectory JSONL files as a TFDS (ArrayRecord) dataset with train / eval splits.

    python -m a1jax.data.prepare --input 'data/*.jsonl' --out DIR [--on-error skip|fail]
        [--tokenizer DIR] [--max-tokens N] [--eval-fraction 0.05] [--workers N]

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
from collections import defaultdict
from typing import Any, Iterable, Iterator

from tqdm import tqdm

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
            eval_fraction: float, on_error: str, report=print, workers: int = 1,
            progress: bool = False
            ) -> tuple[dict[str, list[tfds_builder.Ref]], list[TrajectoryError]]:
    """Validates and measures every line of `paths`: where the accepted trajectories are, by
    split, and the rejections (printed through `report` as they are found).
    Under on_error="fail" the first rejection raises `PrepareError` instead.

    With `workers` > 1 the rendering, tokenizing and masking (nearly all the time) run in that
    many processes, a chunk of lines at a time, and their results are taken in input order:
    the outcome, and so the dataset written from it, is the same whatever the number."""
    splits: dict[str, list] = {s: [] for s in tfds_builder.SPLITS}
    rejected: list[TrajectoryError] = []
    first_seen: dict[str, str] = {}
    total = sum(_count_lines(path) for path in paths) if progress else None
    # On a terminal only (None): a log keeps the rejections and the summary.
    bar = tqdm(total=total, desc="prepare", unit="traj", disable=None if progress else True,
               dynamic_ncols=True)
    tokens = 0
    lines = (loaded for path in paths for loaded in read_jsonl(path))
    with _Encoders(encoder, max_tokens, workers) as encode:
        for loaded, (reason, num_tokens) in encode(lines):
            bar.update(1)
            error = loaded.error
            if error is None and loaded.trajectory["id"] in first_seen:
                reason = f"duplicate id (first at {first_seen[loaded.trajectory['id']]})"
            if error is None and reason is not None:
                error = TrajectoryError(reason, loaded.source, loaded.line,
                                        loaded.trajectory["id"])
            if error is not None:
                if on_error == "fail":
                    raise PrepareError(str(error))
                report(f"rejected {error}")
                rejected.append(error)
                continue
            traj = loaded.trajectory
            tokens += num_tokens
            bar.set_postfix_str(f"{tokens / max(bar.format_dict['elapsed'], 1e-9):,.0f} tok/s")
            first_seen[traj["id"]] = f"{loaded.source}:{loaded.line}"
            split = "eval" if is_eval(traj["id"], eval_fraction) else "train"
            splits[split].append(tfds_builder.Ref(loaded.source, loaded.line, loaded.offset,
                                                  traj["id"], traj["domain"], num_tokens))
    bar.close()
    return splits, rejected


def measure(trajectory: dict[str, Any], encoder: TrajectoryEncoder,
            max_tokens: int | None) -> tuple[str | None, int]:
    """The checks that need the tokenizer: (why it is rejected or None, its token count)."""
    try:
        encoded = encoder(trajectory)
    except A1Error as e:  # the template refused it, or its turns cannot be found
        return f"cannot render: {e}", 0
    if max_tokens is not None and len(encoded) > max_tokens:
        return f"over-length: {len(encoded)} tokens > --max-tokens {max_tokens}", 0
    if not encoded.loss_mask.any():
        return "nothing to train on after rendering", 0
    return None, len(encoded)


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
                 ) -> Iterator[tuple[Loaded, tuple[str | None, int]]]:
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


def _count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _measure_one(trajectory, encoder, max_tokens):
    return (None, 0) if trajectory is None else measure(trajectory, encoder, max_tokens)


_WORKER: dict[str, Any] = {}


def _worker_init(encoder: TrajectoryEncoder, max_tokens: int | None) -> None:
    _WORKER.update(encoder=encoder, max_tokens=max_tokens)


def _worker_measure(trajectory):
    return _measure_one(trajectory, _WORKER["encoder"], _WORKER["max_tokens"])


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
    p.add_argument("--workers", type=int, default=None,
                   help="processes that render, tokenize and mask (default: all cores, one "
                   "per 8 MiB of input: starting one costs seconds); the output does not "
                   "depend on it")
    args = p.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        raise PrepareError("--workers must be >= 1")
    paths = sorted(glob.glob(args.input))
    if not paths:
        raise PrepareError(f"no file matches --input {args.input!r}")
    if not 0 <= args.eval_fraction < 1:
        raise PrepareError("--eval-fraction must be in [0, 1)")
    workers = args.workers or min(os.cpu_count() or 1,
                                  max(1, sum(os.path.getsize(p) for p in paths) >> 23))
    try:
        encoder = TrajectoryEncoder(load_tokenizer(args.tokenizer))
    except (OSError, ValueError) as e:
        raise PrepareError(f"cannot load tokenizer: {e}") from None
    splits, rejected = collect(paths, encoder, max_tokens=args.max_tokens,
                               eval_fraction=args.eval_fraction, on_error=args.on_error,
                               workers=workers, progress=True)
    if not splits["train"]:
        raise PrepareError("no valid trajectory in the train split; nothing written")
    for line in summary(splits, len(rejected)):
        print(line)
    print(f"wrote {tfds_builder.write(args.out, splits)}")
    return 0


if __name__ == "__main__":
    cli.run(main)
