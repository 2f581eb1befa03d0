"""The learners after SFT: GRPO for a domain teacher, and multi-teacher on-policy distillation
with salient vocabulary alignment (OPD), as one loop:

    rollout  the current parameters act in the environments (a1jax.agent's episode loop, the
             engine reading the training state's parameters in place): batch_size episodes,
             batch_size / group_size prompts with group_size samples each, at rl.temperature (and
             rl.top_k, top_p, min_p and the penalties, off by default)
    score    grpo: each episode's reward (the verifier's 0/1 and the shaping terms, or
             rl.reward), advantages within its group, groups whose rewards do not vary dropped;
             opd: the routed teacher's top-k ids and log-probabilities at every position
    update   one optimizer step on the recorded tokens (never a re-rendering of them)

Everything else is the SFT runner's: `runner.check` before any compile, Orbax checkpoints (the
state, and the learner's position: step, policy version, episodes so far), metrics.jsonl and
TensorBoard, the progress line, SIGTERM/SIGINT finish the step and checkpoint. A step's tasks and
sampling seeds depend only on the experiment's seed and the step, so a rerun after kill -9
samples the same episodes from the same parameters and ends with the same weights.

WORKDIR/rollouts/step-NNNNNN.jsonl holds each step's episodes (`Episode.record()`, with the
policy version that sampled them, the shaped reward and the advantage). The learner is
synchronous: every episode is sampled by the parameters it then updates (staleness 0).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from a1jax import cli, experiment
from a1jax.agent.environment import make_task
from a1jax.agent.episode import Budgets, EnginePolicy, Episode, Renderer, run_episodes
from a1jax.errors import A1Error
from a1jax.rl.distill import opd_grads, teacher_topk
from a1jax.rl.losses import ADVANTAGES, groups_kept
from a1jax.rl.policy import grpo_grads, token_logprobs
from a1jax.sharding.mesh import logical_spec
from a1jax.train import runner
from a1jax.train.metrics import MetricsLog, Progress
from a1jax.train.step import TrainState, apply_update

DOMAIN_IDS = {d: i for i, d in enumerate(experiment.DOMAINS)}
# The update's metrics that are means over the trained tokens.
TOKEN_MEANS = ("policy_loss", "clip_fraction", "entropy", "kl", "importance_weight",
               "reverse_kl", "coverage", "teacher_mass", "student_entropy")


def repeated_calls(episode: Episode) -> int:
    """Tool calls that repeat an earlier call of the episode: the same tool with the same
    arguments (a call's observation cannot change by asking again in these environments)."""
    seen, repeats = set(), 0
    for msg in episode.messages:
        for call in msg.get("tool_calls") or ():
            args = call["function"]["arguments"]
            key = (call["function"]["name"],
                   args if isinstance(args, str) else json.dumps(args, sort_keys=True))
            repeats += key in seen
            seen.add(key)
    return repeats


def task_reward(episode: Episode, rl: ml_collections.ConfigDict) -> float:
    """The verifier's 0/1, plus rl.progress_reward x the environment's progress for an episode
    not solved (ours, not the paper's), minus rl.turn_penalty per model call past rl.free_turns
    (the paper's linear turn penalty), rl.format_penalty per malformed call and
    rl.repeat_penalty per repeated tool call (the paper's repetition penalty, read as repeated
    actions)."""
    over = max(0, episode.turns - rl.free_turns)
    solved = float(episode.reward)
    return (solved + (1.0 - solved) * rl.progress_reward * episode.progress
            - rl.turn_penalty * over
            - rl.format_penalty * episode.malformed_calls
            - rl.repeat_penalty * repeated_calls(episode))


def reward_function(c: ml_collections.ConfigDict) -> Callable[[Episode], float]:
    """rl.reward: "" for `task_reward`, else "package.module:function" (episode -> float)."""
    if not c.rl.reward:
        return functools.partial(task_reward, rl=c.rl)
    module, _, name = c.rl.reward.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise runner.RunError(f"rl.reward {c.rl.reward}: {e}") from None


def rollout_tasks(c: ml_collections.ConfigDict, settings: dict[str, Any], step: int) -> list:
    """The tasks of `step` (from 1), each repeated group_size times (a group is contiguous).
    Domains take turns over the prompts, so every batch holds every domain when there are at
    least as many prompts; horizons are drawn from the experiment's seed and the step. Task
    seeds are the experiment's (training) seed, never an evaluation seed."""
    rng = np.random.default_rng([c.seed, step])
    lo, hi = settings["horizons"]
    domains, prompts = settings["domains"], settings["prompts"]
    tasks = [make_task(domains[j % len(domains)], int(rng.integers(lo, hi + 1)), c.seed,
                       (step - 1) * prompts + j) for j in range(prompts)]
    return [t for t in tasks for _ in range(settings["group_size"])]


def episode_budgets(c: ml_collections.ConfigDict) -> Budgets:
    """A training episode's budgets: its turns, tokens per turn, and the context (seq_len)."""
    return Budgets(max_turns=c.rl.max_turns, max_turn_tokens=c.rl.max_turn_tokens,
                   max_response_tokens=c.seq_len, max_context=c.seq_len)


def capped_horizons(c: ml_collections.ConfigDict, settings: dict[str, Any], renderer: Renderer,
                    n: int = 8) -> list[str]:
    """A warning for each (domain, horizon) the run trains on whose reference solutions do not
    all fit a training episode's budgets (the first `n` of its training tasks replayed, as
    `a1jax.eval`'s `reference` column does): there a policy is rewarded only for a solution
    shorter than the reference, or for a guess (runs/recipe6 trained horizon 3 in a 1,024-token
    context that held no kb_search reference, docs/recipe.md)."""
    from a1jax.agent.replay import reference_success

    lo, hi = settings["horizons"]
    tasks = [make_task(d, h, c.seed, i) for d in settings["domains"] for h in range(lo, hi + 1)
             for i in range(n)]
    return [f"{c.stage}: warning: {domain} h{horizon}: {round(share * n)} of {n} training "
            f"tasks' reference solutions fit an episode (seq_len {c.seq_len}, rl.max_turns "
            f"{c.rl.max_turns}, rl.max_turn_tokens {c.rl.max_turn_tokens})"
            for (domain, horizon), share in sorted(reference_success(
                tasks, renderer, episode_budgets(c), slots=len(tasks)).items()) if share < 1]


def episode_batch(episodes: list[Episode], seq_len: int) -> dict[str, np.ndarray]:
    """The episodes' recorded tokens as a training batch, one episode per row (episodes fit:
    their context is seq_len). At position t: targets the token t + 1, loss_mask 1 where the
    policy produced it, sampler_logprobs the sampler's log-probability of it."""
    b = len(episodes)
    out = {k: np.zeros((b, seq_len), np.int32)
           for k in ("tokens", "targets", "loss_mask", "segment_ids", "positions")}
    out["sampler_logprobs"] = np.zeros((b, seq_len), np.float32)
    for i, ep in enumerate(episodes):
        n = len(ep.tokens)
        if n > seq_len:
            raise A1Error(f"episode {ep.task.id} has {n} tokens, more than seq_len {seq_len}")
        out["tokens"][i, :n] = ep.tokens
        out["segment_ids"][i, :n] = 1
        out["positions"][i, :n] = np.arange(n)
        out["targets"][i, :n - 1] = ep.tokens[1:]
        out["loss_mask"][i, :n - 1] = ep.model_mask[1:]
        out["sampler_logprobs"][i, :n - 1] = ep.logprobs[1:]
    return out


def route_topk(score: Callable[[str], tuple[jax.Array, jax.Array]], domains_b: np.ndarray
               ) -> tuple[jax.Array, jax.Array]:
    """Hard routing: rows of domain d take teacher d's top-k (`score(d)` scores the whole
    batch), each teacher asked once, in domain order."""
    ids = lps = None
    for name in sorted({experiment.DOMAINS[d] for d in domains_b.tolist()}):
        ids_d, lps_d = score(name)
        rows = jnp.asarray(domains_b == DOMAIN_IDS[name])[:, None, None]
        ids = ids_d if ids is None else jnp.where(rows, ids_d, ids)
        lps = lps_d if lps is None else jnp.where(rows, lps_d, lps)
    return ids, lps


def _grpo_update(state: TrainState, batch: dict, *, model_config, optimizer, schedule,
                 microbatches: int, options: dict):
    grads, metrics = grpo_grads(state.params, batch, model_config, microbatches, **options)
    return apply_update(state, grads, metrics, metrics["grpo_loss"], optimizer=optimizer,
                        schedule=schedule, apply=jnp.any(batch["loss_mask"] > 0))


def _opd_update(state: TrainState, batch: dict, *, model_config, optimizer, schedule,
                microbatches: int, mode: str):
    grads, metrics = opd_grads(state.params, batch, model_config, microbatches, mode)
    return apply_update(state, grads, metrics, metrics["sva_loss"], optimizer=optimizer,
                        schedule=schedule, apply=jnp.any(batch["loss_mask"] > 0))


def make_update(c: ml_collections.ConfigDict, trainer):
    """The jitted update of `c.rl.algorithm` on `trainer`'s mesh and model: (state, batch) ->
    (state, metrics), the state donated."""
    common = dict(model_config=trainer.model_config, optimizer=trainer._optimizer,
                  schedule=experiment.optim_config(c).schedule(), microbatches=c.microbatches)
    if c.rl.algorithm == "grpo":
        options = dict(clip=(c.rl.clip_low, c.rl.clip_high), kl_coef=c.rl.kl_coef,
                       entropy_coef=c.rl.entropy_coef, importance_cap=c.rl.importance_cap)
        update = functools.partial(_grpo_update, options=options, **common)
    else:
        mode = experiment.rl_settings(c)["loss_mode"]
        update = functools.partial(_opd_update, mode=mode, **common)
    return jax.jit(update, donate_argnums=0,
                   compiler_options=experiment.xla_options(c) or None)


def batch_shardings(trainer) -> dict[int, NamedSharding]:
    """Shardings of the update's batch arrays by rank: rows [b], [b, t] as the SFT batch, and
    [b, t, k] (the teacher's top-k) with k whole."""
    rows = logical_spec(("act_batch", "act_seq"), trainer.spec.rules)
    mesh = trainer.mesh
    return {1: NamedSharding(mesh, P(rows[0])), 2: NamedSharding(mesh, rows),
            3: NamedSharding(mesh, P(rows[0], rows[1], None))}


def abstract_batch(c: ml_collections.ConfigDict, trainer) -> dict[str, jax.ShapeDtypeStruct]:
    """The update's batch as shapes with shardings (for ahead-of-time compiles: a1jax.plan)."""
    b, t = c.batch_size, c.seq_len
    shapes: dict[str, tuple[tuple[int, ...], Any]] = {
        k: ((b, t), jnp.int32) for k in ("tokens", "loss_mask", "segment_ids", "positions")}
    if c.rl.algorithm == "grpo":
        shapes.update(targets=((b, t), jnp.int32), advantages=((b,), jnp.float32),
                      old_logprobs=((b, t), jnp.float32),
                      sampler_logprobs=((b, t), jnp.float32))
        if c.rl.kl_coef:
            shapes["ref_logprobs"] = ((b, t), jnp.float32)
    else:
        k = experiment.rl_settings(c)["top_k"]
        shapes.update(domains=((b,), jnp.int32), teacher_ids=((b, t, k), jnp.int32),
                      teacher_logprobs=((b, t, k), jnp.float32))
    shardings = batch_shardings(trainer)
    return {name: jax.ShapeDtypeStruct(shape, dtype, sharding=shardings[len(shape)])
            for name, (shape, dtype) in shapes.items()}


class Learner:
    """The compiled pieces of one run: the rollout engine, the scoring and the update."""

    def __init__(self, plan: runner.Plan, trainer, settings: dict[str, Any], tokenizer,
                 report: Callable[[str], None]):
        from a1jax.data.chat_template import template_for
        from a1jax.generate import default_stop_tokens
        from a1jax.infer.engine import Engine

        c, config = plan.config, plan.model_config
        self.c, self.plan, self.trainer, self.settings = c, plan, trainer, settings
        self.algorithm = settings["algorithm"]
        self.renderer = Renderer(tokenizer, template_for(tokenizer))
        self.budgets = episode_budgets(c)
        self.sampling = experiment.rollout_sampling(
            c, max_new_tokens=c.rl.max_turn_tokens,
            stop_tokens=tuple(default_stop_tokens(config, tokenizer)))
        self.engine_class = Engine
        self.engine = None
        self._shardings = batch_shardings(trainer)
        self._update = make_update(c, trainer)
        if self.algorithm == "grpo":
            self.reward = reward_function(c)
            self._logprobs = jax.jit(functools.partial(token_logprobs, model_config=config))
        elif settings["loss_mode"] == "sampled_token":  # the teacher's view of the sample
            self._topk = jax.jit(lambda p, b: (b["targets"][..., None], token_logprobs(
                p, b, model_config=config)[..., None]))
        else:
            self._topk = jax.jit(functools.partial(teacher_topk, model_config=config,
                                                   k=settings["top_k"]))
        self.reference = None  # grpo's reference policy (the starting weights)
        self.teachers: dict[str, Any] = {}  # opd: path -> parameters, when resident
        self.report = report

    def put(self, host: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return {k: jax.device_put(v, self._shardings[v.ndim]) for k, v in host.items()}

    def rollout(self, params, step: int) -> list[Episode]:
        c = self.c
        tasks = rollout_tasks(c, self.settings, step)
        if self.engine is None:
            self.engine = self.engine_class(self.plan.model_config, params, batch=len(tasks),
                                            max_len=c.seq_len, spec=self.plan.spec)
        self.engine.params = params
        seed = (c.seed * 1_000_003 + step) % 2**31
        policy = EnginePolicy(self.engine, self.sampling.replace(seed=seed))
        with self.trainer.context():
            episodes = run_episodes(tasks, policy, self.renderer, slots=len(tasks),
                                    budgets=self.budgets)
        for i, ep in enumerate(episodes):  # the sample's number within its group
            ep.run = i % self.settings["group_size"]
        return episodes

    def teacher(self, domain: str):
        kind, path, step = self.settings["teacher_sources"][domain]
        if path in self.teachers:
            return self.teachers[path]
        params = runner.load_weights(kind, path, step, self.trainer, self.report,
                                     f"teacher of {domain}:")
        if self.c.distill.resident:
            self.teachers[path] = params
        return params

    def score(self, state: TrainState, episodes: list[Episode], step: int
              ) -> tuple[dict[str, jax.Array], dict[str, Any]]:
        """The device batch of the update, and what the step reports about its episodes."""
        host = episode_batch(episodes, self.c.seq_len)
        stats: dict[str, Any] = {}
        if self.algorithm == "grpo":
            g = self.settings["group_size"]
            rewards = np.array([self.reward(ep) for ep in episodes], np.float32)
            rewards_pg = rewards.reshape(-1, g)
            kept_p = np.asarray(groups_kept(rewards_pg)) if self.c.rl.dynamic_sampling \
                else np.ones(len(rewards_pg), bool)
            adv = np.asarray(ADVANTAGES[self.c.rl.advantage](jnp.asarray(rewards_pg)))
            adv = np.where(kept_p[:, None], adv, 0.0).reshape(-1).astype(np.float32)
            host["advantages"] = adv
            host["loss_mask"] *= np.repeat(kept_p, g)[:, None].astype(np.int32)
            stats.update(shaped_reward=rewards, advantages=adv,
                         groups_kept=float(kept_p.mean()),
                         group_reward_std=float(rewards_pg.std(-1).mean()),
                         advantage_abs=float(np.abs(adv).mean()))
            batch = self.put(host)
            with self.trainer.context():
                batch["old_logprobs"] = self._logprobs(state.params, batch)
                if self.c.rl.kl_coef:
                    batch["ref_logprobs"] = self._logprobs(self.reference, batch)
            diff = (np.asarray(batch["old_logprobs"]) - host["sampler_logprobs"]) \
                * (host["loss_mask"] > 0)
            stats["sampler_logprob_diff"] = float(np.abs(diff).sum()
                                                  / max(host["loss_mask"].sum(), 1))
        else:
            domains_b = np.array([DOMAIN_IDS[ep.task.domain] for ep in episodes], np.int32)
            host["domains"] = domains_b
            del host["sampler_logprobs"]
            batch = self.put(host)
            with self.trainer.context():
                batch["teacher_ids"], batch["teacher_logprobs"] = route_topk(
                    lambda d: self._topk(self.teacher(d), batch), domains_b)
            del batch["targets"]  # the update reads the tokens (and teacher_ids)
        return batch, stats

    def update(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        with self.trainer.context():
            return self._update(state, batch)


def episode_metrics(episodes: list[Episode]) -> dict[str, float]:
    """Per step and per domain: success, reward (the verifier's), response tokens, turns,
    tool calls, malformed calls, how episodes ended, and the environment's progress."""
    def summary(eps: list[Episode], suffix: str = "") -> dict[str, float]:
        mean = lambda f: float(np.mean([f(e) for e in eps]))  # noqa: E731
        return {f"success{suffix}": mean(lambda e: e.reward),
                f"response_tokens{suffix}": mean(lambda e: e.assistant_tokens),
                f"turns{suffix}": mean(lambda e: e.turns),
                f"malformed_calls{suffix}": mean(lambda e: e.malformed_calls),
                f"finished{suffix}": mean(lambda e: e.status == "finished"),
                f"progress{suffix}": mean(lambda e: e.progress)}

    out = summary(episodes)
    out["tool_calls"] = float(np.mean([e.tool_calls for e in episodes]))
    for domain in sorted({e.task.domain for e in episodes}):
        out.update(summary([e for e in episodes if e.task.domain == domain], f"/{domain}"))
    return out


def _write_rollouts(workdir: str, step: int, episodes: list[Episode], stats: dict) -> None:
    folder = os.path.join(workdir, "rollouts")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"step-{step:06d}.jsonl")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for i, ep in enumerate(episodes):
            record = ep.record()
            record["metadata"]["episode"]["policy_version"] = step - 1
            if "shaped_reward" in stats:
                record["metadata"]["episode"]["shaped_reward"] = float(stats["shaped_reward"][i])
                record["metadata"]["episode"]["advantage"] = float(stats["advantages"][i])
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)


def check(c: ml_collections.ConfigDict, workdir: str, num_devices: int | None = None
          ) -> tuple[runner.Plan, dict[str, Any]]:
    """`runner.check`, then the learner's own: the teachers' checkpoints (each must exist and be
    this model's shape) and one process."""
    plan = runner.check(c, workdir, num_devices)
    settings = experiment.rl_settings(c)
    settings["teacher_sources"] = {
        domain: runner.weights_source(path, plan.model_config, f"teacher of {domain}",
                                      plan.tokenizer_dir)
        for domain, path in settings["teachers"].items()}
    if jax.process_count() > 1:
        raise runner.RunError("the RL learners run in one process (rollouts are not split "
                              "across processes yet)")
    return plan, settings


def run(c: ml_collections.ConfigDict, workdir: str, *,
        report: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs (or resumes, or finds finished) the GRPO or OPD experiment `c` in `workdir`."""
    from a1jax.data.tokenizer import load_tokenizer

    plan, settings = check(c, workdir)
    workdir = plan.workdir
    summary_path = os.path.join(workdir, "summary.json")
    done = runner.start_workdir(c, plan, report)
    if done is not None:
        return done
    tokenizer = load_tokenizer(plan.tokenizer_dir)
    algorithm, g = settings["algorithm"], settings["group_size"]
    report(f"{c.stage}: {algorithm} on {', '.join(settings['domains'])}, model {c.model.preset}, "
           f"mesh {plan.spec.describe()}, {plan.steps} steps of {settings['prompts']} prompts x "
           f"{g} samples")
    trainer = runner.build(plan)
    learner = Learner(plan, trainer, settings, tokenizer, report)
    for warning in capped_horizons(c, settings, learner.renderer):
        report(warning)
    checkpoints, meta = runner.open_checkpoints(c, plan)
    start = checkpoints.latest_step()
    position = {"step": 0, "policy_version": 0, "episodes": 0}
    if start is not None:
        state, position = runner.resume_state(checkpoints, trainer, plan, start)
        saved = checkpoints.meta(start)
        meta.update(skipped=saved.get("skipped", 0), seconds=saved.get("seconds", 0.0))
        report(f"{c.stage}: resumed from step {start} ({checkpoints.root})")
    else:
        start = 0
        state = runner._init_state(plan, trainer, report)
    if algorithm == "grpo" and c.rl.kl_coef:
        learner.reference = (
            trainer.init(jax.random.key(c.seed)).params if plan.init_kind == "random" else
            runner.load_weights(plan.init_kind, plan.init_path, plan.init_step, trainer,
                                lambda _: None))
    agent_eval = runner._agent_eval(c, plan, tokenizer)
    log = MetricsLog(workdir, start)
    progress = Progress(c.stage, start, plan.steps, c.log_every)
    status, step, held_out = "finished", start, None
    recent: list[float] = []
    began = time.perf_counter()
    with runner._Preemption() as preemption:
        for step in range(start + 1, plan.steps + 1):
            t0 = time.perf_counter()
            episodes = learner.rollout(state.params, step)
            t1 = time.perf_counter()
            batch, stats = learner.score(state, episodes, step)
            _write_rollouts(workdir, step, episodes, stats)
            t2 = time.perf_counter()
            state, metrics = learner.update(state, batch)
            m = jax.device_get(metrics)
            t3 = time.perf_counter()
            loss = float(m["grpo_loss" if algorithm == "grpo" else "sva_loss"])
            if int(m["skipped"]):
                meta["skipped"] += 1
                progress.note(f"{c.stage}: step {step}: loss {loss} not finite; update skipped")
                if c.nonfinite == "stop" or meta["skipped"] > c.max_skipped:
                    checkpoints.wait()
                    raise runner.RunError(f"{c.stage}: non-finite loss at step {step}; the "
                                          f"last good checkpoint is step "
                                          f"{checkpoints.latest_step()} in {checkpoints.root}")
            record = {k: float(v) for k, v in m.items() if np.ndim(v) == 0}
            trained = float(np.asarray(batch["loss_mask"]).sum())
            if not trained:  # token means over no token: not zeros, absent
                for name in TOKEN_MEANS:
                    record.pop(name, None)
            record.update(episode_metrics(episodes), policy_version=step - 1, staleness=0,
                          rollout_s=t1 - t0, score_s=t2 - t1, update_s=t3 - t2,
                          **{k: v for k, v in stats.items() if np.ndim(v) == 0})
            if algorithm == "grpo":
                record["reward_mean"] = float(np.mean(stats["shaped_reward"]))
            log.write(step, "train", record)
            recent = (recent + [record["success"]])[-c.log_every:]
            progress.update(step, loss, trained / max(t3 - t0, 1e-9))
            if c.agent_eval.every and (step % c.agent_eval.every == 0 or step == plan.steps):
                held_out = agent_eval(state.params)
                log.write(step, "agent_eval", held_out)
                progress.note(f"{c.stage}: step {step} held-out success "
                              f"{held_out['success']:.3f}")
            position = {"step": step, "policy_version": step,
                        "episodes": position["episodes"] + len(episodes)}
            stop = preemption.requested()
            meta["seconds"] += time.perf_counter() - began
            began = time.perf_counter()
            checkpoints.save(state, position, meta, force=stop or step == plan.steps)
            if stop:
                status = "preempted"
                progress.note(f"{c.stage}: signal {preemption.signal}: checkpoint at step "
                              f"{step}, stopping")
                break
    checkpoints.wait()
    checkpoints.close()
    progress.close()
    log.close()
    summary = {"stage": c.stage, "algorithm": algorithm, "status": status, "steps": step,
               "episodes": position["episodes"],
               "train_success": float(np.mean(recent)) if recent else None,
               "held_out_success": held_out["success"] if held_out else None,
               "seconds": round(meta["seconds"], 1), "skipped": meta["skipped"],
               "workdir": workdir, "checkpoint": os.path.join(checkpoints.root, str(step)),
               "fingerprint": meta["fingerprint"]}
    if status == "finished":
        cli.write_json(summary_path, summary, indent=2)
    return summary
