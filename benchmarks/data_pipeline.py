"""Input-pipeline throughput against what training consumes (issue 5, acceptance 6).

Measures, on ONE CPU core, rendered + tokenized + masked + packed tokens per second through the
real grain pipeline (`a1jax.data.pipeline.make_dataset`, no prefetch threads) over synthetic
trajectories of ~32K tokens from all three domains; then the tokens per second one training step
of the `bench` model consumes on the same machine (forward + backward + AdamW, all cores, jit),
and their ratio, which must be at least 10.

    python benchmarks/data_pipeline.py [--n-per-domain 4] [--seq-len 32768]
        [--model bench] [--model-seq-len 2048] [--steps 3] [--skip-model]

The training figure uses --model-seq-len (default 2048) to keep CPU time short; the step costs
more per token at 32K (attention is quadratic), so this overstates consumption, which makes the
ratio conservative.
"""

from __future__ import annotations

import os

# One core for the data side: the tokenizer's Rust thread pool and grain read inline.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The train step runs as the tests do, on 8 host devices (the model uses one): with a single host
# device, XLA's CPU client was seen to hang in block_until_ready on a 2-core machine (jax 0.10.2).
if "device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from a1jax.data import synth  # noqa: E402
from a1jax.data.chat_template import default_template  # noqa: E402
from a1jax.data.pipeline import JsonlSource, PipelineConfig, make_dataset  # noqa: E402
from a1jax.data.tokenizer import TrajectoryEncoder, load_tokenizer  # noqa: E402

# Horizons that give ~32K tokens per trajectory with the shipped tokenizer.
HORIZON_32K = {"kb_search": 200, "calculator": 300, "files": 250}


def train_tokens_per_second(model_name: str, seq_len: int, steps: int) -> float:
    """Tokens/s of a jitted train step (forward, backward, AdamW) of `model_name` on one
    sequence of `seq_len` tokens."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from a1jax.model import Transformer, get_preset

    config = get_preset(model_name)
    model = Transformer(config)
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                          jnp.zeros((1, 8), jnp.int32)))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: (0.02 * rng.normal(size=x.shape)).astype(np.float32), shapes)
    optimizer = optax.adamw(1e-4, weight_decay=0.1)
    opt_state = optimizer.init(params)
    tokens = rng.integers(0, config.vocab_size, (1, seq_len + 1)).astype(np.int32)
    batch = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:],
             "loss_mask": np.ones((1, seq_len), np.int32),
             "segment_ids": np.ones((1, seq_len), np.int32),
             "positions": np.arange(seq_len, dtype=np.int32)[None]}

    def loss_fn(p, b):
        logits = model.apply({"params": p}, b["tokens"], b["segment_ids"],
                             b["positions"]).logits_btx
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, b["targets"][..., None], axis=-1)[..., 0]
        return jnp.sum(nll * b["loss_mask"]) / jnp.maximum(1, jnp.sum(b["loss_mask"]))

    @jax.jit
    def step(p, s, b):
        loss, grads = jax.value_and_grad(loss_fn)(p, b)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    params, opt_state, loss = step(params, opt_state, batch)  # compile
    jax.block_until_ready(loss)
    start = time.perf_counter()
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, batch)
    jax.block_until_ready(loss)
    return steps * seq_len / (time.perf_counter() - start)


def pipeline_tokens_per_second(n_per_domain: int, seq_len: int,
                               prefix_masks: bool) -> tuple[float, dict]:
    """Tokens/s (non-padding tokens of the batches) of the full pipeline on the calling core.

    With `prefix_masks`, the template loses its generation blocks (same text), so the masks come
    from rendering prefixes: the cost for a tokenizer directory's own template (a Qwen3.5
    download), which has none.
    """
    trajectories = [synth.make_trajectory(d, h, seed=0, index=i)
                    for d, h in sorted(HORIZON_32K.items()) for i in range(n_per_domain)]
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write("".join(json.dumps(t) + "\n" for t in trajectories))
    source = JsonlSource([f.name])  # validation happens at `prepare` time: not timed
    os.unlink(f.name)
    template = default_template()
    if prefix_masks:
        template = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", template)
    encoder = TrajectoryEncoder(load_tokenizer(), template=template)

    # Stage costs, on the same trajectories.
    start = time.perf_counter()
    rendered = [encoder.render(source[i]) for i in range(len(source))]
    render_s = time.perf_counter() - start
    start = time.perf_counter()
    lengths = [len(encoder.encode_rendered(r)) for r in rendered]
    tokenize_s = time.perf_counter() - start

    cfg = PipelineConfig(seq_len=seq_len, batch_size=1, seed=0, num_epochs=1,
                         length_policy="truncate", prefetch_threads=0, num_packing_bins=2)
    start = time.perf_counter()
    n_tokens = sum(int((b["segment_ids"] > 0).sum()) for b in make_dataset(source, encoder, cfg))
    seconds = time.perf_counter() - start
    stages = {"trajectories": len(source), "mean_tokens": int(np.mean(lengths)),
              "render_and_mask_tok_s": sum(lengths) / render_s,
              "tokenize_tok_s": sum(lengths) / tokenize_s, "packed_tokens": n_tokens}
    return n_tokens / seconds, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-per-domain", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=32768)
    parser.add_argument("--model", default="bench")
    parser.add_argument("--model-seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--prefix-masks", action="store_true",
                        help="find masks by rendering prefixes (templates without generation "
                             "blocks)")
    args = parser.parse_args()

    consumed = None
    if not args.skip_model:  # before pinning: the trainer gets every core
        consumed = train_tokens_per_second(args.model, args.model_seq_len, args.steps)
        print(f"train step   {args.model} seq={args.model_seq_len}: {consumed:,.0f} tokens/s "
              f"({os.cpu_count()} cpus)", flush=True)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    produced, stages = pipeline_tokens_per_second(args.n_per_domain, args.seq_len,
                                                  args.prefix_masks)
    how = "prefix renders" if args.prefix_masks else "generation blocks"
    print(f"pipeline     1 core, masks from {how}: {produced:,.0f} tokens/s over "
          f"{stages['trajectories']} "
          f"trajectories of ~{stages['mean_tokens']:,} tokens (render+mask "
          f"{stages['render_and_mask_tok_s']:,.0f} tok/s, tokenize "
          f"{stages['tokenize_tok_s']:,.0f} tok/s)", flush=True)
    ratio = "n/a" if consumed is None else f"{produced / consumed:.1f}"
    print(f"a1jax data_pipeline seq_len={args.seq_len} pipeline_tokens_per_s={produced:.0f} "
          f"train_tokens_per_s={consumed if consumed is None else round(consumed)} "
          f"ratio={ratio} (needs >= 10)")


if __name__ == "__main__":
    main()
