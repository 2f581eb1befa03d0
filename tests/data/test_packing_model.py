"""A packed batch from the pipeline through the real model (issue 5, acceptance 3): no token
attends across segments, positions restart per segment, and the loss over the packed row equals
the sum of the per-trajectory losses."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from a1jax.data.pipeline import JsonlSource, PipelineConfig, make_dataset
from a1jax.data.tokenizer import TrajectoryEncoder, load_tokenizer
from a1jax.model import Transformer, get_preset

SEQ = 256


def masked_loss(logits_tx, targets_t, mask_t):
    logp = jax.nn.log_softmax(logits_tx.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets_t[:, None], axis=-1)[:, 0]
    return float(jnp.sum(nll * mask_t))


def short_trajectory(i):
    return {"id": f"s{i}", "domain": "demo", "messages": [
        {"role": "user", "content": f"What is {i} + {i * 7}?" + " Please." * i},
        {"role": "assistant", "content": f"{i} + {i * 7} = {8 * i}",
         "reasoning_content": "Add them." + " Carefully." * i},
        {"role": "user", "content": "And doubled?"},
        {"role": "assistant", "content": f"{16 * i}", "reasoning_content": "Double it."}]}


def test_packed_batch_through_the_model(tmp_path):
    path = tmp_path / "short.jsonl"
    path.write_text("".join(json.dumps(short_trajectory(i)) + "\n" for i in range(5)))
    source = JsonlSource([str(path)])
    encoder = TrajectoryEncoder(load_tokenizer())
    cfg = PipelineConfig(seq_len=SEQ, batch_size=1, seed=0, prefetch_threads=0)
    batch = next(iter(make_dataset(source, encoder, cfg)))
    assert batch["segment_ids"][0].max() >= 2  # at least two trajectories share the row

    config = dataclasses.replace(get_preset("tiny"), vocab_size=len(encoder.tokenizer))
    model = Transformer(config)
    # Random weights of the model's shapes (eval_shape: no init to compile).
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                          jnp.zeros((1, 8), jnp.int32)))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: (0.05 * rng.normal(size=x.shape)).astype(np.float32), shapes)
    # One jitted shape for the packed row and every trajectory alone (its row padded after it,
    # which causal attention cannot see), so the test compiles once.
    logits = jax.jit(lambda t, s, p: model.apply({"params": params}, t, s, p).logits_btx[0])
    packed = logits(batch["tokens"], batch["segment_ids"], batch["positions"])
    packed_loss = masked_loss(packed, batch["targets"][0], batch["loss_mask"][0])
    total = 0.0
    for s in np.unique(batch["segment_ids"][0]):
        if s == 0:
            continue
        seg = np.nonzero(batch["segment_ids"][0] == s)[0]
        n = len(seg)
        alone_tokens = np.zeros((1, SEQ), np.int32)
        alone_tokens[0, :n] = batch["tokens"][0, seg]
        alone_ids = (np.arange(SEQ) < n).astype(np.int32)[None]
        alone = logits(alone_tokens, alone_ids, np.arange(SEQ, dtype=np.int32)[None])[:n]
        np.testing.assert_allclose(packed[seg], alone, atol=2e-5, rtol=0)
        total += masked_loss(alone, batch["targets"][0, seg], batch["loss_mask"][0, seg])
    np.testing.assert_allclose(packed_loss, total, rtol=1e-5)
