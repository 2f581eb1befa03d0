"""Batches and sharded gradient evaluation shared by the train-step tests."""

import functools

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from a1jax.sharding import MeshSpec
from a1jax.train.optim import OptimConfig
from a1jax.train.sharded import build_trainer
from a1jax.train.step import accumulate_grads


def make_batch(vocab: int, batch: int, seq: int, seed: int = 0, segments: int = 1) -> dict:
    """A fixed random batch; `segments` > 1 packs that many equal segments into each row."""
    rs = np.random.RandomState(seed)
    tokens = rs.randint(0, vocab, (batch, seq))
    length = seq // segments
    segment_ids = np.repeat(np.arange(1, segments + 1), length)[None].repeat(batch, 0)
    positions = np.tile(np.arange(length), segments)[None].repeat(batch, 0)
    targets = np.concatenate([tokens[:, 1:], tokens[:, :1]], axis=1)
    last = np.zeros((batch, seq), bool)
    last[:, length - 1::length] = True  # no next token inside the segment
    loss_mask = ((rs.rand(batch, seq) > 0.3) & ~last).astype(np.int32)
    return dict(tokens=tokens.astype(np.int32), targets=targets.astype(np.int32),
                loss_mask=loss_mask, segment_ids=segment_ids.astype(np.int32),
                positions=positions.astype(np.int32))


def sharded_grads(model_config, spec: MeshSpec, params, batch: dict, microbatches: int = 1,
                  devices=None):
    """(loss, grads, trainer) on the layout: params and batch placed as the train step places
    them, gradients computed by the same function the step uses."""
    b, t = batch["tokens"].shape
    trainer = build_trainer(model_config, OptimConfig(), spec, batch=b, seq=t,
                            microbatches=microbatches, devices=devices)
    p_shard = trainer.state_sharding.params
    fn = jax.jit(functools.partial(accumulate_grads, model_config=model_config,
                                   microbatches=microbatches),
                 in_shardings=(p_shard, trainer.batch_sharding),
                 out_shardings=(p_shard, NamedSharding(trainer.mesh, P())))
    placed = jax.device_put(params, p_shard)
    with trainer.context():
        grads, metrics = fn(placed, trainer.put_batch(batch))
    return float(metrics["loss"]), grads, placed, trainer


def grads64(model_config, spec: MeshSpec, params, batch: dict, devices) -> tuple[float, list]:
    """(loss, [(path, grad)]) of `sharded_grads` in fp64: x64 on, params and compute dtype
    float64. x64 is on only inside: other tests keep fp32 defaults."""
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
        loss, grads, _, _ = sharded_grads(model_config.replace(dtype="float64"), spec, params64,
                                          batch, devices=devices)
        flat = jax.tree_util.tree_flatten_with_path(grads)[0]
        flat = [(path, np.asarray(g)) for path, g in flat]
    assert all(g.dtype == np.float64 for _, g in flat), "gradients fell back to fp32"
    return loss, flat
