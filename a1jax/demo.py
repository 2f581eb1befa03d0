"""The demo: what a1jax is, end to end, on a CPU in a minute.

Until the three-stage curriculum lands it shows the pieces it is made of: the parameter counts
of the real Agents-A1 shapes; a tiny random model written as a Hugging Face directory, scored by
a1jax, and the same logits from transformers; then synthetic agent trajectories rendered in the
Qwen3.5 chat format, packed, and trained on for a few steps on the 8-device CPU mesh
(data 2 x expert 2 x sequence 2, experts exchanged by all-to-all).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Sequence

import numpy as np

from a1jax import cli


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m a1jax.demo")
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--steps", type=int, default=30, help="training steps at the end")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)

    _step("Agents-A1 (Qwen3.5-35B-A3B) parameter counts, from shapes alone")
    subprocess.run([sys.executable, "-m", "a1jax.model_info", "--model", "agents_a1_35b"],
                   check=True)

    _step("A tiny random model of the same architecture, written in Hugging Face format")
    import flax.linen as nn
    import jax

    from a1jax.convert.hf_save import write_hf_dir
    from a1jax.model import Transformer, get_preset

    config = get_preset("tiny")
    hf_dir = os.path.join(args.workdir, "tiny_random_hf")
    if not os.path.isdir(hf_dir):
        tokens = np.zeros((1, 1), np.int32)
        params = nn.meta.unbox(Transformer(config).init(jax.random.key(0), tokens))["params"]
        write_hf_dir(hf_dir, config, jax.tree.map(np.asarray, params))
    print(f"wrote {hf_dir}")

    _step("Scoring a sequence with a1jax (python -m a1jax.score)")
    tokens = np.random.RandomState(0).randint(0, config.vocab_size, (2, 48)).tolist()
    tokens_path = os.path.join(args.workdir, "tokens.json")
    with open(tokens_path, "w") as f:
        json.dump(tokens, f)
    scores = os.path.join(args.workdir, "scores.npz")
    subprocess.run([sys.executable, "-m", "a1jax.score", "--model", hf_dir, "--tokens",
                    tokens_path, "--out", scores], check=True)

    _step("The same weights in transformers (Qwen3_5MoeForCausalLM, fp32, eager)")
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        print("transformers/torch not installed: skipping the comparison")
        return 0
    model = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager",
                                                 dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = model(torch.tensor(tokens), use_cache=False).logits.numpy()
    ours = np.load(scores)["logits"]
    print(f"max |a1jax - transformers| logit difference: {np.abs(ours - theirs).max():.2e} "
          f"(logits up to {np.abs(theirs).max():.2f})")
    train_steps(args.workdir, args.steps)
    return 0


SEQ_LEN = 1024


def train_steps(workdir: str, steps: int) -> None:
    import dataclasses
    import time

    import jax

    from a1jax.data import synth
    from a1jax.data.pipeline import JsonlSource, PipelineConfig, make_dataset
    from a1jax.data.tokenizer import TrajectoryEncoder, load_tokenizer
    from a1jax.model import get_preset
    from a1jax.sharding import MeshSpec
    from a1jax.train.optim import OptimConfig
    from a1jax.train.sharded import build_trainer

    _step("Synthetic agent trajectories (tool calls, observations, failed calls, recoveries)")
    paths = []
    for domain in ("kb_search", "calculator", "files"):
        path = os.path.join(workdir, f"{domain}.jsonl")
        with open(path, "w") as f:
            for trajectory in synth.generate(domain, horizon=3, n=32, seed=0):
                f.write(json.dumps(trajectory) + "\n")
        paths.append(path)
        print(f"wrote {path}: 32 trajectories")

    _step(f"Training the tiny model for {steps} steps on 8 CPU devices "
          "(data 2 x expert 2 x sequence 2, expert-parallel MoE)")
    tokenizer = load_tokenizer()  # the small tokenizer a1jax ships, Qwen special tokens included
    config = dataclasses.replace(get_preset("tiny"), vocab_size=len(tokenizer),
                                 moe_dispatch="expert_parallel")
    batch_size, seq_len = 8, SEQ_LEN
    data = iter(make_dataset(JsonlSource(paths), TrajectoryEncoder(tokenizer),
                             PipelineConfig(seq_len=seq_len, batch_size=batch_size, seed=0,
                                            length_policy="truncate")))
    spec = MeshSpec.create(axes={"data": 2, "expert": 2, "sequence": 2})
    trainer = build_trainer(config, OptimConfig(learning_rate=3e-3, warmup_fraction=0.1,
                                                total_steps=steps),
                            spec, batch=batch_size, seq=seq_len)
    state = trainer.init(jax.random.key(0))
    start = time.perf_counter()
    for step in range(1, steps + 1):
        batch = next(data)
        state, metrics = trainer.step(state, trainer.put_batch(batch))
        if step == 1 or step % 5 == 0 or step == steps:
            print(f"step {step:3d}  loss {float(metrics['loss']):.3f}  "
                  f"trained tokens {int(metrics['trained_tokens']):5d}  "
                  f"grad norm {float(metrics['grad_norm']):.2f}  "
                  f"{time.perf_counter() - start:.0f}s (first step includes compiling)",
                  flush=True)


if __name__ == "__main__":
    cli.run(main)
