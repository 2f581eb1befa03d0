"""Runs one experiment (one curriculum stage) in a workdir, resuming whatever is there.

    WORKDIR/experiment.json  the resolved experiment config
    WORKDIR/checkpoints/     Orbax steps (a1jax.train.checkpoint)
    WORKDIR/data/            synthetic trajectories and their TFDS dataset (when data.dir is "")
    WORKDIR/metrics.jsonl    train and eval records; WORKDIR/tensorboard/ the same as events
    WORKDIR/summary.json     written when the stage finishes: its figures, and that it is done

Everything that can be wrong with the config, the init checkpoint or the workdir is checked by
`check` before the step is compiled. The loop: one jitted step per batch, metrics every step,
eval every `eval_every` (and at step 0, so a stage started from the previous stage's weights
shows that stage's loss), a checkpoint every `checkpoint.every` and at the end. SIGTERM or SIGINT
finishes the current step, writes a checkpoint and returns (status "preempted", exit 0).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from a1jax import cli, experiment
from a1jax.convert import hf_load
from a1jax.data.tokenizer import (TrajectoryEncoder, check_tokenizer, load_tokenizer,
                                  tokenizer_digest)
from a1jax.errors import A1Error
from a1jax.model import ModelConfig
from a1jax.model.transformer import convert_layers
from a1jax.sharding import MeshSpec
from a1jax.train import checkpoint as ckpt_lib
from a1jax.train import data as data_lib
from a1jax.train.metrics import MetricsLog, Progress
from a1jax.train.sharded import Trainer, build_trainer

class RunError(A1Error):
    """A run that cannot start or go on."""


@dataclasses.dataclass
class Plan:
    """What `check` established: everything the run needs before building the step."""

    config: ml_collections.ConfigDict
    workdir: str
    model_config: ModelConfig
    spec: MeshSpec
    steps: int
    tokenizer_dir: str | None
    init_kind: str  # "random", "hf" or "checkpoint"
    init_path: str | None
    init_step: int | None


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key} ({y!r} there, {x!r} here)")
    return out


def check(c: ml_collections.ConfigDict, workdir: str, num_devices: int | None = None,
          check_init: bool = True) -> Plan:
    """Every check that needs no compile: the config, the layout against the devices, the init
    checkpoint, the workdir's own checkpoints. Raises A1Error with what to fix."""
    experiment.validate(c)
    model_config = experiment.model_config(c)
    if num_devices is None and c.mesh.num_devices > jax.device_count():
        raise RunError(f"mesh.num_devices={c.mesh.num_devices} but there are only "
                       f"{jax.device_count()} devices")
    spec = experiment.mesh_spec(c, num_devices)
    workdir = os.path.abspath(workdir)

    tokenizer_dir = c.data.tokenizer or None
    if check_init or tokenizer_dir:
        try:
            size = len(load_tokenizer(tokenizer_dir))
        except (OSError, ValueError) as e:
            raise RunError(f"data.tokenizer: cannot load {tokenizer_dir}: {e}") from None
        if size > model_config.vocab_size:
            raise RunError(f"the tokenizer has {size} tokens but the model's vocab_size is "
                           f"{model_config.vocab_size}; set --config.model.vocab_size")

    init_kind, init_path, init_step = "random", None, None
    if c.requires_init and not c.init_from and check_init:
        raise RunError(f"{c.stage} starts from the previous stage's weights: set "
                       "--config.init_from to its workdir or checkpoint (a1jax.curriculum "
                       "sets it)")
    if c.init_from and check_init:
        init_kind, init_path, init_step = weights_source(c.init_from, model_config, "init_from",
                                                         tokenizer_dir)

    root = os.path.join(workdir, "checkpoints")
    if os.path.isdir(root):
        existing = ckpt_lib.Checkpointer(root, read_only=True)
        if existing.latest_step() is not None:
            meta = existing.meta()
            if meta.get("fingerprint") != experiment.fingerprint(c):
                diff = _differences(experiment.identity(c), meta.get("identity", {}))
                raise RunError(
                    f"workdir {workdir} holds checkpoints of another experiment "
                    f"({meta.get('stage')}); differs in {'; '.join(diff[:3]) or 'its identity'}."
                    " Use another --workdir, or delete that one to start over")
            check_tokenizer(meta.get("tokenizer_sha256"), tokenizer_dir,
                            f"the run in workdir {workdir}", "set data.tokenizer to the one it "
                            "was trained with, or use another --workdir")
    return Plan(c, workdir, model_config, spec, experiment.num_steps(c), tokenizer_dir,
                init_kind, init_path, init_step)


def weights_source(path: str, model_config: ModelConfig, what: str,
                   tokenizer_dir: str | None) -> tuple[str, str, int | None]:
    """Where a model's weights come from, checked against `model_config`'s parameters and (a
    checkpoint's) the tokenizer it will be read with: ("hf", directory, None) or ("checkpoint",
    checkpoint root, step). `what` names the setting in errors."""
    given, path = path, os.path.abspath(path)
    if not os.path.exists(path):
        raise RunError(f"{what} {given}: no such file or directory")
    step = None
    if os.path.isfile(os.path.join(path, "config.json")):
        kind = "hf"
        theirs = hf_load.read_config(path)
    else:
        kind = "checkpoint"
        path, step = ckpt_lib.resolve(path)
        reader = ckpt_lib.Checkpointer(path, read_only=True)
        if reader.latest_step() is None:
            raise RunError(f"{what} {given}: no complete checkpoint there")
        meta = reader.meta(step)
        step = step if step is not None else reader.latest_step()
        theirs = ModelConfig.from_json_dict(meta["model_config"])
        check_tokenizer(meta.get("tokenizer_sha256"), tokenizer_dir, f"{what} {given}",
                        "set data.tokenizer to the one it was trained with")
    diff = _differences(experiment.parameter_fields(model_config),
                        experiment.parameter_fields(theirs))
    if diff:
        raise RunError(f"{what} {given} is a different model: {'; '.join(diff[:3])}")
    return kind, path, step


def load_weights(kind: str, path: str, step: int | None, trainer: Trainer,
                 report: Callable[[str], None], what: str = "initialising from"):
    """The parameters of a `weights_source`, laid out as the trainer's state holds them;
    `report` is told "{what} {path} ..."."""
    config = trainer.model_config
    if kind == "hf":
        report(f"{what} Hugging Face checkpoint {path}")
        _, params, _ = hf_load.load_params(path, config)
        params = convert_layers(params, config, config.scan_layers)
        return jax.device_put(params, trainer.state_sharding.params)
    report(f"{what} {path} step {step} (parameters only)")
    reader = ckpt_lib.Checkpointer(path, read_only=True)
    stacked = reader.params_stacked(step)
    params = reader.restore_params(trainer.restore_target(stacked).params, step)
    return trainer.to_layer_form(params) if stacked != config.scan_layers else params


def build(plan: Plan, devices=None) -> Trainer:
    c = plan.config
    if devices is None and c.mesh.num_devices:
        if c.mesh.num_devices > jax.device_count():
            raise RunError(f"mesh.num_devices={c.mesh.num_devices} but there are only "
                           f"{jax.device_count()} devices")
        devices = jax.devices()[:c.mesh.num_devices]
    return build_trainer(plan.model_config, experiment.optim_config(c), plan.spec,
                         batch=c.batch_size, seq=c.seq_len, microbatches=c.microbatches,
                         z_loss_coef=c.z_loss_coef, devices=devices,
                         compiler_options=experiment.xla_options(c))


class _Preemption:
    """SIGTERM / SIGINT set a flag the loop reads after each step (the step is never cut)."""

    def __init__(self):
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def requested(self) -> bool:
        flag = self.signal is not None
        if jax.process_count() > 1:  # every process must stop at the same step
            from jax.experimental import multihost_utils
            flag = bool(np.any(multihost_utils.process_allgather(np.array(flag))))
        return flag

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _init_state(plan: Plan, trainer: Trainer, report: Callable[[str], None]):
    if plan.init_kind == "random":
        return trainer.init(jax.random.key(plan.config.seed))
    return trainer.state_from_params(
        load_weights(plan.init_kind, plan.init_path, plan.init_step, trainer, report))


def start_workdir(c: ml_collections.ConfigDict, plan: Plan, report: Callable[[str], None]
                  ) -> dict[str, Any] | None:
    """The summary of `c` when plan.workdir already holds it finished (reported), else None
    after making the workdir and writing experiment.json there."""
    summary_path = os.path.join(plan.workdir, "summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            done = json.load(f)
        if done.get("fingerprint") == experiment.fingerprint(c) and done["steps"] >= plan.steps:
            report(f"{c.stage}: already finished in {plan.workdir}")
            return dict(done, status="already finished")
    os.makedirs(plan.workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(plan.workdir, "experiment.json"), "w") as f:
            f.write(c.to_json(indent=2, sort_keys=True))
    return None


def open_checkpoints(c: ml_collections.ConfigDict, plan: Plan
                     ) -> tuple[ckpt_lib.Checkpointer, dict[str, Any]]:
    """The run's Checkpointer (WORKDIR/checkpoints) and the meta its steps are saved with."""
    checkpoints = ckpt_lib.Checkpointer(
        os.path.join(plan.workdir, "checkpoints"), every=c.checkpoint.every,
        keep=c.checkpoint.keep, final_step=plan.steps, async_save=c.checkpoint.async_save)
    tokenizer = os.path.abspath(plan.tokenizer_dir) if plan.tokenizer_dir else None
    meta = {"model_config": plan.model_config.to_json_dict(), "tokenizer": tokenizer,
            "tokenizer_sha256": tokenizer_digest(plan.tokenizer_dir),
            "stage": c.stage, "experiment": experiment.as_json(c),
            "identity": experiment.identity(c), "fingerprint": experiment.fingerprint(c),
            "hf_source": None, "skipped": 0, "seconds": 0.0}
    return checkpoints, meta


def resume_state(checkpoints: ckpt_lib.Checkpointer, trainer: Trainer, plan: Plan, step: int):
    """The run's state at `step` and its saved position (the data iterator's, or an RL
    learner's), in this trainer's layout, whichever `scan_layers` wrote it."""
    stacked = checkpoints.params_stacked(step)
    state, position = checkpoints.restore_state(trainer.restore_target(stacked), step)
    if stacked != plan.model_config.scan_layers:
        state = trainer.to_layer_form(state)
    return state, position


def _evaluate(trainer: Trainer, params, batches) -> float:
    total, count = 0.0, 0.0
    for batch in batches:
        out = jax.device_get(trainer.evaluate(params, trainer.put_batch(batch)))
        total, count = total + float(out["loss_sum"]), count + float(out["count"])
    return total / max(count, 1.0)


def _agent_eval(c: ml_collections.ConfigDict, plan: Plan, tokenizer) -> Callable[[Any], dict]:
    """params -> success metrics (a1jax.eval's greedy episodes). The engine is built on the
    first call and keeps its compiled programs; it reads the training state's parameters in
    place, in their shardings (no copy)."""
    if not c.agent_eval.every:
        return lambda params: {}
    from a1jax.eval import success_during_training
    from a1jax.infer.engine import Engine

    settings = experiment.agent_eval_settings(c)
    engine = None

    def evaluate(params) -> dict:
        nonlocal engine
        if engine is None:
            engine = Engine(plan.model_config, params, batch=settings["batch"],
                            max_len=settings["max_context"], spec=plan.spec)
        engine.params = params
        return success_during_training(engine, tokenizer, settings, c.seed)

    return evaluate


def run(c: ml_collections.ConfigDict, workdir: str, *,
        batch_hook: Callable[[int, dict], dict] | None = None,
        report: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs (or resumes, or finds finished) the experiment `c` in `workdir`; returns the
    summary. `batch_hook(step, batch)` may replace a host batch before it is used (tests).
    A GRPO or OPD experiment (rl.algorithm) runs in `a1jax.rl.learner`."""
    if c.rl.algorithm != "sft":
        from a1jax.rl import learner
        return learner.run(c, workdir, report=report)
    plan = check(c, workdir)
    workdir = plan.workdir
    summary_path = os.path.join(workdir, "summary.json")
    done = start_workdir(c, plan, report)
    if done is not None:
        return done

    tokenizer = load_tokenizer(plan.tokenizer_dir)
    encoder = TrajectoryEncoder(tokenizer)
    if c.data.dir:
        directory = data_lib.dataset_dir(c.data.dir)
    else:
        report(f"{c.stage}: synthetic trajectories, horizons {c.data.horizon_min}-"
               f"{c.data.horizon_max}, mixture {c.data.mixture.to_dict()}")
        directory = data_lib.synthesize(c, os.path.join(workdir, "data"), encoder, report)
    report(f"{c.stage}: model {c.model.preset} ({plan.model_config.moe_dispatch} MoE), mesh "
           f"{plan.spec.describe()}, {plan.steps} steps of {c.batch_size} x {c.seq_len} tokens")
    trainer = build(plan)
    rows = trainer.process_rows()  # each process reads only the rows its devices hold
    train_it = data_lib.train_iterator(c, directory, encoder, rows)
    eval_data = data_lib.eval_batches(c, directory, encoder, rows)
    checkpoints, meta = open_checkpoints(c, plan)
    start = checkpoints.latest_step()
    if start is not None:
        state, data_state = resume_state(checkpoints, trainer, plan, start)
        train_it.set_state(data_state)
        saved = checkpoints.meta(start)
        meta.update(skipped=saved.get("skipped", 0), seconds=saved.get("seconds", 0.0),
                    hf_source=saved.get("hf_source"))
        report(f"{c.stage}: resumed from step {start} ({checkpoints.root})")
    else:
        start = 0
        state = _init_state(plan, trainer, report)
        if plan.init_kind == "checkpoint":
            meta["hf_source"] = ckpt_lib.Checkpointer(
                plan.init_path, read_only=True).meta(plan.init_step).get("hf_source")

    agent_eval = _agent_eval(c, plan, tokenizer)
    log = MetricsLog(workdir, start)
    eval_loss = None
    if start == 0:
        eval_loss = _evaluate(trainer, state.params, eval_data)
        log.write(0, "eval", {"loss": eval_loss})
        report(f"{c.stage}: step 0 eval loss {eval_loss:.4f}")
    progress = Progress(c.stage, start, plan.steps, c.log_every)
    tokens_per_step = c.batch_size * c.seq_len
    recent: list[float] = []
    status, step = "finished", start
    began = time.perf_counter()
    last = began
    with _Preemption() as preemption:
        for step in range(start + 1, plan.steps + 1):
            batch = next(train_it)
            if batch_hook is not None:
                batch = batch_hook(step, batch)
            state, metrics = trainer.step(state, trainer.put_batch(batch))
            m = jax.device_get(metrics)
            now = time.perf_counter()
            tokens_per_s, last = tokens_per_step / (now - last), now
            loss = float(m["loss"])
            if int(m["skipped"]):
                meta["skipped"] += 1
                progress.note(f"{c.stage}: step {step}: loss {loss} / grad norm "
                              f"{float(m['grad_norm'])} not finite; update skipped")
                if c.nonfinite == "stop" or meta["skipped"] > c.max_skipped:
                    why = ("nonfinite='stop'" if c.nonfinite == "stop" else
                           f"{meta['skipped']} skipped steps > max_skipped={c.max_skipped}")
                    checkpoints.wait()
                    good = checkpoints.latest_step()
                    log.close()
                    progress.close()
                    checkpoints.close()
                    raise RunError(f"{c.stage}: non-finite loss at step {step} ({why}); the "
                                   f"last good checkpoint is step {good} in {checkpoints.root}")
            else:
                recent = (recent + [loss])[-c.log_every:]
            record = {"loss": loss, "grad_norm": float(m["grad_norm"]),
                      "learning_rate": float(m["learning_rate"]),
                      "router_loss": float(m["router_loss"]),
                      "trained_tokens": int(m["trained_tokens"]), "dropped": int(m["dropped"]),
                      "skipped": int(m["skipped"]), "tokens_per_s": tokens_per_s}
            if step % c.log_every == 0 or step == plan.steps:
                record["expert_load"] = m["expert_load"]
            log.write(step, "train", record)
            progress.update(step, loss, tokens_per_s)
            if step % c.eval_every == 0 or step == plan.steps:
                eval_loss = _evaluate(trainer, state.params, eval_data)
                log.write(step, "eval", {"loss": eval_loss})
                progress.note(f"{c.stage}: step {step} eval loss {eval_loss:.4f}")
            if c.agent_eval.every and (step % c.agent_eval.every == 0 or step == plan.steps):
                success = agent_eval(state.params)
                log.write(step, "agent_eval", success)
                progress.note(f"{c.stage}: step {step} agent success {success['success']:.3f} "
                              f"({success['finished']:.0%} of episodes answered)")
            stop = preemption.requested()
            meta["seconds"] += time.perf_counter() - began
            began = time.perf_counter()
            checkpoints.save(state, train_it.get_state(), meta,
                             force=stop or step == plan.steps)
            last = time.perf_counter()  # tokens/s counts the step, not eval or saving
            if stop:
                status = "preempted"
                progress.note(f"{c.stage}: signal {preemption.signal}: checkpoint at step "
                              f"{step}, stopping")
                break
    checkpoints.wait()
    checkpoints.close()
    progress.close()
    log.close()
    summary = {"stage": c.stage, "status": status, "steps": step,
               "tokens": step * tokens_per_step,
               "train_loss": float(np.mean(recent)) if recent else None,
               "eval_loss": eval_loss, "seconds": round(meta["seconds"], 1),
               "skipped": meta["skipped"], "workdir": workdir,
               "checkpoint": os.path.join(checkpoints.root, str(step)),
               "fingerprint": meta["fingerprint"]}
    if status == "finished" and jax.process_index() == 0:
        cli.write_json(summary_path, summary, indent=2)
    return summary
