r"""Score token sequences with a model: logits and the log-probability of each next token.

    python -m a1jax.score --model HF_DIR|CHECKPOINT --tokens tokens.json --out scores.npz \
        [--dtype float32]

The model is a Hugging Face directory or an a1jax checkpoint (a run workdir, its checkpoints/
root: the latest step, or one step directory), whose model config its `meta` item records.

tokens.json holds a JSON list of token-id lists of equal length. The .npz gets `logits`
(float32, [batch, length, vocab]) and `logprobs` (float32, [batch, length - 1]: the
log-probability of token t+1 given tokens 0..t).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from a1jax import cli
from a1jax.errors import A1Error
from a1jax.infer.load import load_model
from a1jax.model import DTYPES, ModelConfig, Transformer


def read_tokens(path: str, vocab_size: int) -> np.ndarray:
    """[batch, length] int32 from a JSON list of equal-length lists of ids in [0, vocab_size)."""
    rows = cli.read_json(path)
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
        raise A1Error(f"{path}: expected a non-empty JSON list of token-id lists")
    lengths = sorted({len(r) for r in rows})
    if len(lengths) > 1:
        raise A1Error(f"{path}: token lists have different lengths ({', '.join(map(str, lengths))});"
                      " pad them to one length")
    if lengths[0] < 1:
        raise A1Error(f"{path}: token lists are empty")
    for i, row in enumerate(rows):
        for j, tok in enumerate(row):
            if not isinstance(tok, int) or isinstance(tok, bool):
                raise A1Error(f"{path}: row {i}, position {j}: {tok!r} is not an integer token id")
            if not 0 <= tok < vocab_size:
                raise A1Error(f"{path}: row {i}, position {j}: token id {tok} is out of range "
                              f"[0, {vocab_size})")
    return np.asarray(rows, dtype=np.int32)


def score(config: ModelConfig, params: dict, tokens_bt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits [b, t, vocab], next-token logprobs [b, t-1]), both float32."""

    @jax.jit
    def forward(params, tokens_bt):
        logits_btx = Transformer(config).apply({"params": params}, tokens_bt).logits_btx
        logp_btx = jax.nn.log_softmax(logits_btx[:, :-1], axis=-1)
        logp_bt = jnp.take_along_axis(logp_btx, tokens_bt[:, 1:, None], axis=-1)[..., 0]
        return logits_btx, logp_bt

    logits, logprobs = forward(params, jnp.asarray(tokens_bt))
    return np.asarray(logits, np.float32), np.asarray(logprobs, np.float32)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m a1jax.score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Hugging Face directory or a1jax checkpoint")
    parser.add_argument("--tokens", required=True, help="JSON list of token-id lists")
    parser.add_argument("--out", required=True, help="output .npz")
    parser.add_argument("--dtype", default="float32", choices=[d for d in DTYPES if d != "float64"],
                        help="compute dtype")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    config, params = load_model(args.model, args.dtype)
    tokens = read_tokens(args.tokens, config.vocab_size)
    logits, logprobs = score(config, params, tokens)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    np.savez(args.out, logits=logits, logprobs=logprobs)
    b, t = tokens.shape
    print(f"scored {b} x {t} tokens in {time.perf_counter() - start:.1f}s: mean next-token "
          f"logprob {logprobs.mean():.4f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
