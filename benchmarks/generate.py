"""Decoding throughput on the CPU: a1jax's engine against transformers' `generate` on the same
config and weights, in one run. Prefill tokens/s (the prompt through the chunked form) and decode
tokens/s (new tokens, one at a time, through each side's cache) at each batch size, greedy,
every row generating exactly --new tokens; then the cache bytes at --context tokens per row.

    python benchmarks/generate.py --model bench [--batch 1,8,64] [--prompt 128] [--new 128]
"""

from __future__ import annotations

import argparse
import os
import time

import flax.linen as nn
import jax
import numpy as np

from a1jax.infer.engine import Engine
from a1jax.infer.sampling import SamplingParams
from a1jax.model import Transformer, get_preset
from a1jax.model.cache import cache_bytes


def a1jax_rates(config, params, batch: int, prompt: np.ndarray, new: int) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s), each timed after a warm-up run that compiles."""
    engine = Engine(config, params, batch=batch, max_len=prompt.shape[1] + new,
                    prefill_chunk=prompt.shape[1])
    sampling = SamplingParams(temperature=0, max_new_tokens=new)
    rows = {r: prompt[r].tolist() for r in range(batch)}
    times = []
    for _ in range(2):  # the first run compiles
        engine.reset()
        start = time.perf_counter()
        engine.extend(rows)
        jax.block_until_ready(engine.state)
        middle = time.perf_counter()
        out = engine.generate(range(batch), sampling)
        end = time.perf_counter()
        assert all(len(o.tokens) == new for o in out.values())
        times.append((middle - start, end - middle))
    prefill, decode = times[-1]
    return batch * prompt.shape[1] / prefill, batch * new / decode


def transformers_rates(hf, prompt: np.ndarray, new: int) -> tuple[float, float]:
    import torch

    ids = torch.from_numpy(prompt).long()
    times = []
    for _ in range(2):
        with torch.no_grad():
            start = time.perf_counter()
            hf(ids, use_cache=True)
            middle = time.perf_counter()
            out = hf.generate(ids, do_sample=False, max_new_tokens=new, min_new_tokens=new,
                              eos_token_id=None, pad_token_id=0)
            end = time.perf_counter()
        assert out.shape[1] == prompt.shape[1] + new
        # generate = its own prefill + the decode steps: the decode time is the rest.
        times.append((middle - start, (end - middle) - (middle - start)))
    prefill, decode = times[-1]
    b = prompt.shape[0]
    return b * prompt.shape[1] / prefill, b * new / decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bench")
    parser.add_argument("--batch", default="1,8,64")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--context", type=int, default=32_768, help="for the cache bytes")
    parser.add_argument("--skip-transformers", action="store_true")
    args = parser.parse_args()
    batches = [int(b) for b in args.batch.split(",")]

    config = get_preset(args.model)
    model = Transformer(config)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), np.zeros((1, 8), np.int32)))
    params = jax.tree.map(np.asarray, params["params"])
    hf = None
    if not args.skip_transformers:
        import torch
        from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

        from a1jax.convert.mapping import to_hf_tensors

        hf_config = Qwen3_5MoeTextConfig(**config.to_hf_dict())
        hf_config._attn_implementation = "sdpa"
        hf = Qwen3_5MoeForCausalLM(hf_config).eval()
        hf.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in
                            to_hf_tensors(params, config).items()}, strict=False)
    print(f"model {args.model}, prompt {args.prompt} tokens, {args.new} new tokens per row, "
          f"greedy; jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cpus",
          flush=True)
    print("| batch | a1jax prefill tok/s | a1jax decode tok/s | transformers prefill tok/s | "
          "transformers decode tok/s | decode ratio |")
    print("|---|---|---|---|---|---|")
    rng = np.random.RandomState(0)
    for batch in batches:
        prompt = rng.randint(3, config.vocab_size, (batch, args.prompt)).astype(np.int32)
        ours = a1jax_rates(config, params, batch, prompt, args.new)
        theirs = transformers_rates(hf, prompt, args.new) if hf is not None else (0.0, 0.0)
        ratio = f"{ours[1] / theirs[1]:.2f}x" if theirs[1] else "-"
        print(f"| {batch} | {ours[0]:,.0f} | {ours[1]:,.0f} | {theirs[0]:,.0f} | "
              f"{theirs[1]:,.0f} | {ratio} |", flush=True)
    for name in (args.model, "agents_a1_35b"):
        c = get_preset(name).replace(dtype="bfloat16" if name == "agents_a1_35b" else "float32")
        print(f"cache at {args.context:,} tokens, one row, {name} ({c.dtype} K/V, fp32 state): "
              f"{cache_bytes(c, 1, args.context) / 2**20:,.1f} MiB")


if __name__ == "__main__":
    main()
