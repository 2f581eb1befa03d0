"""`a1jax.data.prepare`'s measuring pass (validate, render, tokenize, mask: nearly all of its
time) in tokens/s, at 1 and more worker processes, for both kinds of chat template: a1jax's,
whose `{% generation %}` blocks give the masks from one rendering, and the same template
without them (a tokenizer directory's own template, as a Qwen3.5 download carries): recognised
as the same family, its masks take two renderings (`masks.renders_like_ours`).

    python benchmarks/prepare.py [--workers 1,2] [--n-per-domain 6] [--horizon 60]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from a1jax.data import prepare, synth  # noqa: E402
from a1jax.data.chat_template import default_template  # noqa: E402
from a1jax.data.tokenizer import TrajectoryEncoder, load_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--n-per-domain", type=int, default=6)
    parser.add_argument("--horizon", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.jsonl")
        with open(path, "w") as f:
            for domain in sorted(synth.DOMAINS):
                for i in range(args.n_per_domain):
                    f.write(json.dumps(synth.make_trajectory(domain, args.horizon, 0, i)) + "\n")
        with_blocks = default_template()
        without = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", with_blocks)
        print(f"{3 * args.n_per_domain} trajectories, horizon {args.horizon}, {os.cpu_count()} "
              "cpus", flush=True)
        print("| template | workers | tokens | seconds | tokens/s |")
        print("|---|---|---|---|---|")
        for name, template in (("generation blocks", with_blocks), ("no generation blocks", without)):
            encoder = TrajectoryEncoder(load_tokenizer(), template=template)
            for workers in (int(w) for w in args.workers.split(",")):
                start = time.perf_counter()
                splits, _ = prepare.collect([path], encoder, max_tokens=None, eval_fraction=0.0,
                                            on_error="fail", workers=workers,
                                            report=lambda _: None)
                took = time.perf_counter() - start
                tokens = sum(r.num_tokens for refs in splits.values() for r in refs)
                print(f"| {name} | {workers} | {tokens:,} | {took:.1f} | {tokens / took:,.0f} |",
                      flush=True)


if __name__ == "__main__":
    main()
