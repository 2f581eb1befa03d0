"""The train step compiled for a mesh: shardings from the logical rules, state donated.

    trainer = build_trainer(model_config, optim_config, MeshSpec.create("expert"), batch=8, seq=512)
    state = trainer.init(jax.random.key(0))
    state, metrics = trainer.step(state, trainer.put_batch(batch))
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from a1jax.model import ModelConfig
from a1jax.model.transformer import convert_layers
from a1jax.sharding.mesh import MeshSpec, logical_spec, make_mesh, param_shardings, validate_layout
from a1jax.train.optim import OptimConfig, make_optimizer
from a1jax.train.step import (BATCH_KEYS, TrainState, eval_step, init_params, init_state,
                              state_from_params, train_step)


@dataclasses.dataclass
class Trainer:
    mesh: Mesh
    spec: MeshSpec
    model_config: ModelConfig
    state_sharding: TrainState
    batch_sharding: NamedSharding
    _init: Callable
    _from_params: Callable
    _step: Callable
    _eval: Callable
    batch_shape: tuple[int, int] = (0, 0)  # the global batch: (sequences, tokens)
    # Compiled steps by batch signature (compiled ahead of the first call; see `step`).
    _compiled: dict = dataclasses.field(default_factory=dict)
    _optimizer: Any = None

    @contextlib.contextmanager
    def context(self):
        """The mesh and the logical rules, active while tracing (constraints read them)."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.spec.rules):
            yield

    def init(self, key: jax.Array) -> TrainState:
        """A fresh state. The compiled init runs once a run and is not kept: on a CPU its
        executable stays in host memory beside the step's for the whole run (0.15 GiB of the
        bench model's 3.16 GiB peak), so it is dropped from the jit cache and its heap handed
        back. A second call compiles it again."""
        with self.context():
            state = self._init(key)
        jax.block_until_ready(state)
        # Its compiled programs; this also empties JAX's trace cache for every jitted function
        # (they retrace on a later call that misses their own fast path; the step, compiled
        # ahead of time in `_compiled`, is unaffected).
        self._init.clear_cache()
        release_host_memory()
        return state

    def state_from_params(self, params: Any) -> TrainState:
        """Step 0 and a fresh optimizer state around given parameters (imported or restored),
        which must be laid out as `state_sharding.params`. The parameters are donated: the state
        holds them in place, with no random init made first and no second copy."""
        with self.context():
            return self._from_params(params)

    def step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """One training step. The first call with a batch signature compiles the step and hands
        the compiler's freed heap back to the OS before the step first runs, so the step's
        buffers do not come on top of it (`release_host_memory`)."""
        signature = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in sorted(batch.items()))
        with self.context():
            compiled = self._compiled.get(signature)
            if compiled is None:
                compiled = self._compiled[signature] = self._step.lower(state, batch).compile()
                release_host_memory()
            return compiled(state, batch)

    def evaluate(self, params: Any, batch: dict) -> dict:
        with self.context():
            return self._eval(params, batch)

    def process_rows(self) -> list[int]:
        """The global batch rows that this process's devices hold, whole or in sequence pieces
        (every row with one process). The data reader reads exactly these."""
        shape = self.batch_shape
        rows: set[int] = set()
        for device, index in self.batch_sharding.devices_indices_map(shape).items():
            if device.process_index == jax.process_index():
                rows.update(range(*index[0].indices(shape[0])))
        return sorted(rows)

    def put_batch(self, batch: dict) -> dict:
        """Host arrays -> global arrays laid out as the step expects. With one process `batch`
        is the global batch; with several, each passes the rows `process_rows()` names, in that
        order, and each device takes its block of them: rows under data/expert parallelism,
        a piece of a row's time axis under sequence parallelism."""
        if jax.process_count() == 1:
            return {k: jax.device_put(np.asarray(batch[k], np.int32), self.batch_sharding)
                    for k in BATCH_KEYS}
        shape = self.batch_shape
        position = {r: i for i, r in enumerate(self.process_rows())}
        if np.asarray(batch["tokens"]).shape != (len(position), shape[1]):
            raise ValueError(f"put_batch: this process holds {len(position)} rows of "
                             f"{shape[1]} tokens, got {np.asarray(batch['tokens']).shape}")

        def block(host, index):
            rows = [position[r] for r in range(*index[0].indices(shape[0]))]
            return host[rows][:, index[1]]

        out = {}
        for k in BATCH_KEYS:
            host = np.asarray(batch[k], np.int32)
            out[k] = jax.make_array_from_callback(
                shape, self.batch_sharding, lambda index, host=host: block(host, index))
        return out

    def abstract_state(self) -> TrainState:
        """The state's shapes and dtypes, without allocating it (for ahead-of-time compiles)."""
        key = jax.eval_shape(lambda: jax.random.key(0))  # abstract: nothing runs on the mesh
        with self.context():
            return jax.eval_shape(self._init, key)

    def restore_target(self, stacked: bool | None = None) -> TrainState:
        """Abstract arrays carrying the state's shardings, to restore a checkpoint onto; with
        `stacked` given, for the decoder's parameters in that form (a checkpoint written with
        the other `scan_layers`; `to_layer_form` then converts what was restored)."""
        c = self.model_config
        if stacked is None or stacked == c.scan_layers:
            abstract, sharding = self.abstract_state(), self.state_sharding
        else:
            abstract, sharding = _abstract_state(c.replace(scan_layers=stacked),
                                                 self._optimizer, self.mesh, self.spec.rules)
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            abstract, sharding)

    def to_layer_form(self, tree: Any) -> Any:
        """A TrainState or params tree whose decoder parameters are stacked or not -> the form
        and layout of this trainer's state (`ModelConfig.scan_layers`). For a checkpoint written
        with the other setting: for a moment both forms are in memory."""
        c = self.model_config
        if isinstance(tree, TrainState):
            target = self.state_sharding
        else:
            target = self.state_sharding.params
        convert = functools.partial(convert_layers, c=c, stacked=c.scan_layers)
        with self.context():
            return jax.jit(convert, out_shardings=target)(tree)

    def lower(self, state_shapes: Any, batch_shapes: dict):
        with self.context():
            return self._step.lower(state_shapes, batch_shapes)


def release_host_memory() -> None:
    """Returns the heap pages that XLA's compiler has freed to the OS (glibc's `malloc_trim`).
    glibc keeps them for reuse; where a step's buffers are allocated apart from that heap (an
    accelerator's host side, several CPU devices, or `A1JAX_KEEP_HEAP=0`: see
    a1jax/host_memory.py), the process peak would otherwise be the compiler's leftovers plus
    the step: 0.5 GiB more for the bench model on a CPU. Does nothing where glibc is absent."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def build_trainer(model_config: ModelConfig, optim_config: OptimConfig, spec: MeshSpec, *,
                  batch: int, seq: int, microbatches: int = 1, z_loss_coef: float = 0.0,
                  devices: Sequence[Any] | None = None,
                  compiler_options: dict[str, Any] | None = None) -> Trainer:
    """Validates the layout against the model and batch (clear errors before any compile), then
    jits init and step with explicit shardings (the step with `compiler_options`: XLA options
    for its compile alone)."""
    boxed = jax.eval_shape(functools.partial(init_params, model_config=model_config),
                           jax.random.key(0))
    validate_layout(spec, boxed, num_experts=model_config.num_experts,
                    dispatch=model_config.moe_dispatch, batch=batch, seq=seq,
                    microbatches=microbatches)
    mesh = make_mesh(spec, devices)
    optimizer = make_optimizer(optim_config)
    replicated = NamedSharding(mesh, P())
    _, state_sharding = _abstract_state(model_config, optimizer, mesh, spec.rules, boxed)
    p_shard = state_sharding.params
    batch_sharding = NamedSharding(mesh, logical_spec(("act_batch", "act_seq"), spec.rules))
    init = jax.jit(functools.partial(init_state, model_config=model_config, optimizer=optimizer),
                   out_shardings=state_sharding)
    from_params = jax.jit(functools.partial(state_from_params, optimizer=optimizer),
                          in_shardings=(p_shard,), out_shardings=state_sharding,
                          donate_argnums=0)
    step = jax.jit(
        functools.partial(train_step, model_config=model_config, optimizer=optimizer,
                          schedule=optim_config.schedule(), microbatches=microbatches,
                          z_loss_coef=z_loss_coef),
        in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, replicated),
        donate_argnums=0, compiler_options=compiler_options or None)
    evaluate = jax.jit(functools.partial(eval_step, model_config=model_config),
                       in_shardings=(p_shard, batch_sharding), out_shardings=replicated)
    return Trainer(mesh, spec, model_config, state_sharding, batch_sharding, init, from_params,
                   step, evaluate, (batch, seq), _optimizer=optimizer)


def _abstract_state(model_config: ModelConfig, optimizer: optax.GradientTransformation,
                    mesh: Mesh, rules, boxed: Any = None) -> tuple[TrainState, TrainState]:
    """The state's shapes and dtypes, and its shardings from the logical rules."""
    if boxed is None:
        boxed = jax.eval_shape(functools.partial(init_params, model_config=model_config),
                               jax.random.key(0))
    replicated = NamedSharding(mesh, P())
    params = nn.meta.unbox(boxed)
    p_shard = param_shardings(boxed, mesh, rules)
    abstract_opt = jax.eval_shape(optimizer.init, params)
    opt_shard = optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt, p_shard,
                                      transform_non_params=lambda _: replicated)
    step = jax.ShapeDtypeStruct((), np.int32)
    return (TrainState(step, params, abstract_opt),
            TrainState(replicated, p_shard, opt_shard))
