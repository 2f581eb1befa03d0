"""The demo: what a1jax is, end to end, on a CPU in a minute.

Until the training curriculum lands it shows the model: the parameter counts of the real
Agents-A1 shapes, a tiny random model written as a Hugging Face directory, scored by a1jax on
the 8-device CPU mesh's host, and the same logits from transformers.
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
    return 0


if __name__ == "__main__":
    cli.run(main)
