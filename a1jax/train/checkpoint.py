"""Orbax checkpoints of a run: train state, data iterator state and the resolved config, together.

A run's checkpoints live in WORKDIR/checkpoints, an Orbax CheckpointManager root. Each step
directory holds four items:

    params     the model parameters (StandardSave; sharded arrays are written by their owners)
    opt_state  the optax state (absent in checkpoints imported from Hugging Face)
    data       the data iterator's state, JSON (absent in imported checkpoints)
    meta       JSON: {"model_config", "tokenizer", "tokenizer_sha256", "stage", "experiment",
               "identity", "fingerprint", "skipped", "seconds", "hf_source"}

Orbax writes each step into a temporary directory and renames it when complete, so a step that
was being written when the process died is never listed, and resuming always takes the latest
complete one. Restoring takes the target's shardings, so a checkpoint written on one mesh
restores onto any other layout or device count.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from a1jax.errors import A1Error
from a1jax.train.step import TrainState

ITEMS = ("params", "opt_state", "data", "meta")


class CheckpointError(A1Error):
    """A checkpoint that cannot be used as asked."""


def resolve(path: str) -> tuple[str, int | None]:
    """`path` as (checkpoint root, step): a run workdir (holding checkpoints/), a root (holding
    numbered steps), or a step directory (its number is the step)."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"no checkpoint at {path}: not a directory")
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return os.path.join(path, "checkpoints"), None
    name = os.path.basename(path)
    if name.isdigit() and os.path.isdir(os.path.join(path, "params")):
        return os.path.dirname(path), int(name)
    return path, None


class _NoReadOnlyWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # The unformatted message: formatting another thread's record here could raise.
        return not (isinstance(record.msg, str)
                    and record.msg.startswith("Given directory is read only"))


@contextlib.contextmanager
def _quiet_read_only():
    """Orbax warns `Given directory is read only=DIR` whenever a manager is opened read-only,
    which a1jax does on purpose to read a finished stage or an imported checkpoint (up to three
    times in each stage that starts from one): that line is dropped while such a manager is
    made."""
    quiet = _NoReadOnlyWarning()
    logger = logging.getLogger("absl")
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class Checkpointer:
    """Saves and restores a run's steps under `root`.

    keep: the latest `keep` steps are kept, and `final_step` (the stage's last) always is.
    """

    def __init__(self, root: str, *, every: int = 1, keep: int = 2,
                 final_step: int | None = None, async_save: bool = True,
                 read_only: bool = False):
        self.root = os.path.abspath(root)
        preserve = [policies.LatestN(keep)]
        if final_step is not None:
            preserve.append(policies.CustomSteps([final_step]))
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=0 if read_only else every,
            preservation_policy=policies.AnyPreservationPolicy(preserve),
            enable_async_checkpointing=async_save, read_only=read_only,
            create=not read_only)
        handlers = {"params": ocp.StandardCheckpointHandler(),
                    "opt_state": ocp.StandardCheckpointHandler(),
                    "data": ocp.JsonCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        with _quiet_read_only() if read_only else contextlib.nullcontext():
            self._manager = ocp.CheckpointManager(self.root, options=options,
                                                  item_handlers=handlers)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, state: TrainState, data_state: Mapping[str, Any] | None,
             meta: Mapping[str, Any], *, force: bool = False) -> bool:
        """Saves `state` at `state.step` if the interval says so (or `force`); returns whether
        a save started. Saves are asynchronous: `wait()` before relying on the files."""
        step = int(jax.device_get(state.step))
        items = {"params": ocp.args.StandardSave(state.params),
                 "opt_state": ocp.args.StandardSave(state.opt_state),
                 "meta": ocp.args.JsonSave(dict(meta))}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(dict(data_state))
        return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def meta(self, step: int | None = None) -> dict[str, Any]:
        step = self._step(step)
        return self._manager.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def params_stacked(self, step: int | None = None) -> bool:
        """Whether the step's decoder parameters are stacked (written with `scan_layers`)."""
        return "layers" in self._manager.item_metadata(self._step(step))["params"]

    def restore_state(self, target: TrainState, step: int | None = None
                      ) -> tuple[TrainState, dict[str, Any] | None]:
        """The full state at `step` (default: latest), laid out like `target` (abstract arrays
        with shardings, e.g. `Trainer.abstract_state()` with the trainer's shardings), and the
        data iterator state."""
        step = self._step(step)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target.params),
            opt_state=ocp.args.StandardRestore(target.opt_state),
            data=ocp.args.JsonRestore()))
        state = TrainState(jax.device_put(jax.numpy.asarray(step, jax.numpy.int32),
                                          target.step.sharding),
                           restored["params"], restored["opt_state"])
        return state, restored["data"]

    def restore_params(self, target: Any = None, step: int | None = None) -> Any:
        """Only the parameters (to start a new stage from), laid out like `target`; without a
        target, on one device (small models: tests, comparisons)."""
        step = self._step(step)
        if target is None:
            device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype,
                                                                 sharding=device),
                                  self._manager.item_metadata(step)["params"])
        return self._manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target)))["params"]

    def _step(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"no complete checkpoint in {self.root}")
        elif step not in self.steps():
            raise CheckpointError(f"no checkpoint for step {step} in {self.root} (has "
                                  f"{', '.join(map(str, self.steps())) or 'none'})")
        return step


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the shardings to restore onto."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)
