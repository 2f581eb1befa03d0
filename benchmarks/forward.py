"""Forward-pass throughput on the CPU: a1jax (jit) against transformers on the same config and
weights. Prints one line per framework and a final summary line.

    python benchmarks/forward.py --model bench [--batch 4] [--seq 1024] [--steps 3] [--dispatch dropless]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time


import jax
import jax.numpy as jnp
import numpy as np

from a1jax.model import Transformer, get_preset


def _time(fn, steps: int) -> float:
    fn()  # compile / warm up
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="bench")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dispatch", default="dropless", choices=["dense", "dropless"])
    parser.add_argument("--skip-transformers", action="store_true")
    args = parser.parse_args()

    config = dataclasses.replace(get_preset(args.model), moe_dispatch=args.dispatch)
    tokens = np.random.RandomState(0).randint(0, config.vocab_size, (args.batch, args.seq))
    model = Transformer(config)
    params = jax.jit(model.init)(jax.random.key(0), jnp.asarray(tokens[:, :8], jnp.int32))
    params = jax.tree.map(np.asarray, __import__("flax").linen.meta.unbox(params))
    forward = jax.jit(lambda p, t: model.apply(p, t).logits_btx)
    jt = jnp.asarray(tokens, jnp.int32)
    n_tokens = args.batch * args.seq
    ours = _time(lambda: forward(params, jt).block_until_ready(), args.steps)
    print(f"a1jax        {args.model} {args.dispatch:>8}: {ours:.3f} s/forward  "
          f"{n_tokens / ours:,.0f} tokens/s  (jax {jax.__version__}, "
          f"{jax.devices()[0].platform}, {os.cpu_count()} cpus)", flush=True)
    if args.skip_transformers:
        return
    import torch
    from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

    from a1jax.convert.mapping import to_hf_tensors

    hf_config = Qwen3_5MoeTextConfig(**config.to_hf_dict())
    hf_config._attn_implementation = "sdpa"
    hf = Qwen3_5MoeForCausalLM(hf_config).eval()
    hf.load_state_dict({k: torch.from_numpy(v) for k, v in
                        to_hf_tensors(params["params"], config).items()}, strict=False)
    tt = torch.from_numpy(tokens).long()

    def run_hf():
        with torch.no_grad():
            return hf(tt, use_cache=False).logits

    theirs = _time(run_hf, args.steps)
    print(f"transformers {args.model}: {theirs:.3f} s/forward  {n_tokens / theirs:,.0f} tokens/s  "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)", flush=True)
    print(f"a1jax forward model={args.model} batch={args.batch} seq={args.seq} "
          f"tokens_per_s={n_tokens / ours:.0f} transformers_tokens_per_s={n_tokens / theirs:.0f} "
          f"speedup={theirs / ours:.2f}")


if __name__ == "__main__":
    main()
