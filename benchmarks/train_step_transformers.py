"""The peer of benchmarks/train_step.py: the same model, batch and AdamW step in transformers
(PyTorch, CPU), so that the two are measured side by side on the same machine.

    python benchmarks/train_step_transformers.py --model bench --batch 4 --seq 1024 --steps 5

Runs in its own process, so its peak RSS is its own. transformers' Qwen3.5-MoE uses its
pure-PyTorch Gated DeltaNet on a CPU (the fused kernels need a GPU) and its eager per-expert
loop for the MoE. The last line reads `transformers tokens_per_s=N peak_rss_gib=M loss=L`.

By default PyTorch runs with glibc's allocator as a transformers user gets it: `import a1jax`
(for the preset) would otherwise apply a1jax's CPU heap settings to this process too
(a1jax/host_memory.py). `--keep-heap` applies them, for a peer with the same allocator.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bench")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--attention", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--keep-heap", action="store_true",
                        help="apply a1jax's CPU heap settings to this process as well")
    args = parser.parse_args()
    os.environ["A1JAX_KEEP_HEAP"] = "1" if args.keep_heap else "0"  # before importing a1jax

    import torch
    from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

    from a1jax.model import get_preset

    config = get_preset(args.model)
    hf_config = Qwen3_5MoeTextConfig(**config.to_hf_dict())
    hf_config._attn_implementation = args.attention
    torch.manual_seed(0)
    model = Qwen3_5MoeForCausalLM(hf_config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    rs = np.random.RandomState(0)  # the batch benchmarks/train_step.py uses
    tokens = torch.from_numpy(rs.randint(0, config.vocab_size, (args.batch, args.seq + 1))).long()
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def step() -> float:
        logits = model(inputs, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                 targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    first_loss = step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times))
    tokens_per_s = args.batch * args.seq / step_s
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"transformers {args.model} (torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, {'a1jax' if args.keep_heap else 'default'} heap): first loss "
          f"{first_loss:.4f}; step {step_s:.3f}s (median of {args.steps}; "
          f"fastest {min(times):.3f}s); {tokens_per_s:,.0f} tokens/s; peak RSS {peak:.2f} GiB")
    print(f"transformers tokens_per_s={tokens_per_s:.0f} peak_rss_gib={peak:.2f} "
          f"loss={first_loss:.6f}")


if __name__ == "__main__":
    main()
