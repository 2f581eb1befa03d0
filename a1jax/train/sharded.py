"""The train step compiled for a mesh: shardings from the logical rules, state donated.

    trainer = build_trainer(model_config, optim_config, MeshSpec.create("expert"), batch=8, seq=512)
    state = trainer.init(jax.random.key(0))
    state, metrics = trainer.step(state, trainer.put_batch(batch))
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from a1jax.model import ModelConfig
from a1jax.sharding.mesh import MeshSpec, logical_spec, make_mesh, param_shardings, validate_layout
from a1jax.train.optim import OptimConfig, make_optimizer
from a1jax.train.step import (BATCH_KEYS, TrainState, eval_step, init_params, init_state,
                              train_step)


@dataclasses.dataclass
class Trainer:
    mesh: Mesh
    spec: MeshSpec
    model_config: ModelConfig
    state_sharding: TrainState
    batch_sharding: NamedSharding
    _init: Callable
    _step: Callable
    _eval: Callable

    @contextlib.contextmanager
    def context(self):
        """The mesh and the logical rules, active while tracing (constraints read them)."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.spec.rules):
            yield

    def init(self, key: jax.Array) -> TrainState:
        with self.context():
            return self._init(key)

    def step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        with self.context():
            return self._step(state, batch)

    def evaluate(self, params: Any, batch: dict) -> dict:
        with self.context():
            return self._eval(params, batch)

    def put_batch(self, batch: dict) -> dict:
        """Host arrays -> global arrays laid out as the step expects. With one process `batch`
        is the global batch; with several, each passes its own rows (the global batch's rows
        in process order, as the data pipeline's `shard_index` reads them)."""
        if jax.process_count() == 1:
            return {k: jax.device_put(np.asarray(batch[k], np.int32), self.batch_sharding)
                    for k in BATCH_KEYS}
        rows = np.asarray(batch["tokens"]).shape[0]
        shape = (rows * jax.process_count(), np.asarray(batch["tokens"]).shape[1])
        return {k: jax.make_array_from_process_local_data(
                    self.batch_sharding, np.asarray(batch[k], np.int32), shape)
                for k in BATCH_KEYS}

    def abstract_state(self) -> TrainState:
        """The state's shapes and dtypes, without allocating it (for ahead-of-time compiles)."""
        with self.context():
            return jax.eval_shape(self._init, jax.random.key(0))

    def lower(self, state_shapes: Any, batch_shapes: dict):
        with self.context():
            return self._step.lower(state_shapes, batch_shapes)


def build_trainer(model_config: ModelConfig, optim_config: OptimConfig, spec: MeshSpec, *,
                  batch: int, seq: int, microbatches: int = 1, z_loss_coef: float = 0.0,
                  devices: Sequence[Any] | None = None) -> Trainer:
    """Validates the layout against the model and batch (clear errors before any compile), then
    jits init and step with explicit shardings."""
    boxed = jax.eval_shape(functools.partial(init_params, model_config=model_config),
                           jax.random.key(0))
    validate_layout(spec, boxed, num_experts=model_config.num_experts,
                    dispatch=model_config.moe_dispatch, batch=batch, seq=seq,
                    microbatches=microbatches)
    mesh = make_mesh(spec, devices)
    optimizer = make_optimizer(optim_config)
    replicated = NamedSharding(mesh, P())
    p_shard = param_shardings(boxed, mesh, spec.rules)
    abstract_opt = jax.eval_shape(optimizer.init, nn.meta.unbox(boxed))
    opt_shard = optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt, p_shard,
                                      transform_non_params=lambda _: replicated)
    state_sharding = TrainState(replicated, p_shard, opt_shard)
    batch_sharding = NamedSharding(mesh, logical_spec(("act_batch", "act_seq"), spec.rules))
    init = jax.jit(functools.partial(init_state, model_config=model_config, optimizer=optimizer),
                   out_shardings=state_sharding)
    step = jax.jit(
        functools.partial(train_step, model_config=model_config, optimizer=optimizer,
                          schedule=optim_config.schedule(), microbatches=microbatches,
                          z_loss_coef=z_loss_coef),
        in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, replicated),
        donate_argnums=0)
    evaluate = jax.jit(functools.partial(eval_step, model_config=model_config),
                       in_shardings=(p_shard, batch_sharding), out_shardings=replicated)
    return Trainer(mesh, spec, model_config, state_sharding, batch_sharding, init, step, evaluate)
