"""Show what the model learns from: each trajectory rendered, with the trained spans marked.

    python -m a1jax.data.inspect --input FILE.jsonl [--tokenizer DIR] [--json]
        [--train-on all|final_turn] [--mask-earlier-reasoning]

Rendering and masks are the trainer's own (the tokenizer directory's chat template if it has one,
default tokenizer: the small one a1jax ships). Trained text is shown between ⟦ and ⟧ (in green
on a terminal). With --json, one object per trajectory:

    {"id", "text", "trained_text": [one string per trained span], "num_tokens", "num_trained"}

where `text` is the decoded token sequence and `trained_text` the decoded trained tokens of each
span, so a reader sees token-exact what carries loss. Invalid lines are reported as
`error: FILE:LINE: ...` on stderr (exit status 1) and the other lines still shown.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

from a1jax import cli
from a1jax.data import args as argparsing
from a1jax.data.masks import TRAIN_ON, MaskOptions
from a1jax.data.schema import read_jsonl
from a1jax.data.tokenizer import TrajectoryEncoder, load_tokenizer
from a1jax.errors import A1Error

OPEN, CLOSE = "⟦", "⟧"
GREEN, RESET = "\x1b[32m", "\x1b[0m"


def describe(encoder: TrajectoryEncoder, trajectory: dict[str, Any]) -> dict[str, Any]:
    """The --json record of one trajectory, decoded from the tokens the trainer would see."""
    encoded = encoder(trajectory)
    tokens, mask = encoded.tokens, encoded.loss_mask
    # Maximal runs of trained tokens: where the mask switches on / off.
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
    runs = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]
    decode = encoder.tokenizer.decode
    return {"id": trajectory["id"], "text": decode(tokens.tolist()),
            "trained_text": [decode(tokens[a:b].tolist()) for a, b in runs],
            "num_tokens": int(len(tokens)), "num_trained": int(mask.sum()),
            "_runs": runs, "_tokens": tokens}


def marked(encoder: TrajectoryEncoder, record: dict[str, Any], color: bool) -> str:
    """The decoded text with every trained run wrapped in markers."""
    decode, tokens = encoder.tokenizer.decode, record["_tokens"]
    left, right = (GREEN + OPEN, CLOSE + RESET) if color else (OPEN, CLOSE)
    out, pos = [], 0
    for a, b in record["_runs"]:
        out += [decode(tokens[pos:a].tolist()), left, decode(tokens[a:b].tolist()), right]
        pos = b
    out.append(decode(tokens[pos:].tolist()))
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparsing.ArgumentParser(prog="python -m a1jax.data.inspect",
                                  description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True, help="trajectory JSONL file")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir (default: a1jax's own)")
    p.add_argument("--json", action="store_true", help="one JSON object per trajectory")
    p.add_argument("--train-on", choices=TRAIN_ON, default="all")
    p.add_argument("--mask-earlier-reasoning", action="store_true")
    args = p.parse_args(argv)
    try:
        tokenizer = load_tokenizer(args.tokenizer)
    except (OSError, ValueError) as e:
        raise A1Error(f"cannot load tokenizer: {e}") from None
    encoder = TrajectoryEncoder(tokenizer, options=MaskOptions(
        train_on=args.train_on, mask_earlier_reasoning=args.mask_earlier_reasoning))
    failed = False
    try:
        for loaded in read_jsonl(args.input):
            if loaded.error is not None:
                print(f"error: {loaded.error}", file=sys.stderr)
                failed = True
                continue
            try:
                record = describe(encoder, loaded.trajectory)
            except A1Error as e:  # the template refused it, or its turns cannot be found
                print(f"error: {loaded.source}:{loaded.line}: cannot render: {e}", file=sys.stderr)
                failed = True
                continue
            if args.json:
                print(json.dumps({k: v for k, v in record.items() if not k.startswith("_")},
                                 ensure_ascii=False))
            else:
                share = record["num_trained"] / max(1, record["num_tokens"])
                print(f"=== {record['id']} ({loaded.trajectory['domain']}): "
                      f"{record['num_tokens']} tokens, {record['num_trained']} trained "
                      f"({share:.0%}), trained text in {OPEN}{CLOSE}")
                print(marked(encoder, record, color=sys.stdout.isatty()))
    except OSError as e:
        raise A1Error(f"cannot read {args.input}: {e.strerror}") from None
    return 1 if failed else 0


if __name__ == "__main__":
    cli.run(main)
