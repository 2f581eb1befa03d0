r"""How often a tokenizer's training-data tokens occur that an agent must copy from an observation
into a call: digits, the tokens that spell file stems, the tokens that spell name words.

    python benchmarks/copy_tokens.py [--tokenizer DIR] [--n 1000] [--horizon-max 2]

The recipe study (docs/recipe.md, runs/recipe4) found `tiny` copying digits and nothing spelt by
rare tokens; this counts, in N synthetic trajectories per domain (horizons 1..H, rendered in the
chat format), each digit's occurrences and the median occurrences of the distinct tokens that
file stems (`/vipe`) and name words (`ĠJofen`) are made of.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys

from a1jax.data import chat_template, synth
from a1jax.data.schema import validate
from a1jax.data.tokenizer import SHIPPED_TOKENIZER_DIR, load_tokenizer


def pieces(tok, text: str, skip: int) -> list[str]:
    """The tokens of `text` after its first `skip` (a prefix that sets the context)."""
    return tok.convert_ids_to_tokens(tok.encode(text, add_special_tokens=False))[skip:]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokenizer", default=str(SHIPPED_TOKENIZER_DIR))
    p.add_argument("--n", type=int, default=1000, help="trajectories per domain")
    p.add_argument("--horizon-max", type=int, default=2)
    args = p.parse_args()
    tok = load_tokenizer(args.tokenizer)
    counts: collections.Counter = collections.Counter()
    stems, names, total = set(), set(), 0
    for domain in sorted(synth.DOMAINS):
        for i in range(args.n):
            traj = validate(synth.make_trajectory(domain, 1 + i % args.horizon_max, 0, i))
            ids = tok.encode(chat_template.render(traj["messages"], traj["tools"]),
                             add_special_tokens=False)
            counts.update(tok.convert_ids_to_tokens(ids))
            total += len(ids)
            verifier = traj["verifier"]
            for fname in verifier.get("inbox", ()):
                # The stem as the listing spells it: after '/inbox' (one token), before '_'.
                stems.update(pieces(tok, "/inbox/" + fname.split("_")[0], 1))
            for person in verifier.get("kb", ()):
                # Name words as the task spells them (after a space); the title is skipped.
                names.update(pieces(tok, "from " + person, 2))
    digits = [counts[d] for d in "0123456789"]
    print(f"{args.n} trajectories per domain ({total:,} tokens), {args.tokenizer}")
    print(f"digits: {statistics.median(digits):,.0f} occurrences each (median)")
    for what, toks in (("file-stem tokens", stems), ("name-word tokens", names)):
        print(f"{what}: {len(toks)} distinct, {statistics.median(counts[t] for t in toks):,.0f} "
              "occurrences each (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
