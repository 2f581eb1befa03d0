"""The experiment config: every key a stage file may set, and how the runner reads them.

An experiment file (`experiments/...py`) defines `get_config(arg)`; it starts from `base()` here,
which declares every key with its default, and changes what its recipe needs. The ConfigDict is
locked, so a misspelt key (in the file or on the command line, `--config.optim.lr=...`) is an
error before anything is built. `arg` is the text after the file's colon on the command line,
`name=value` pairs separated by commas:

    python -m a1jax.train --config experiments/curriculum/stage1_foundation.py:model=tiny,smoke=True

The model is a preset name plus overrides; the preset's dimensions are the model's unless
`init_from` is a Hugging Face directory, whose config.json must then agree with them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import math
from typing import Any, Mapping

import ml_collections
from ml_collections import config_dict

from a1jax.data import synth
from a1jax.errors import A1Error
from a1jax.model import ModelConfig, get_preset
from a1jax.model.presets import PRESETS
from a1jax.sharding import MeshSpec, get_layout
from a1jax.train.optim import OptimConfig


class ExperimentError(A1Error):
    """An experiment config that cannot run, found before anything is compiled."""


# Synthetic domains the demo's data generator knows (a1jax.data.synth).
DOMAINS = ("kb_search", "calculator", "files")


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = "experiment"  # its name; the workdir's checkpoints are checked against it
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.preset = "tiny"  # a1jax.model.presets: tiny, bench, agents_a1_35b
    # Overrides of the preset (None: the preset's value). Anything else in ModelConfig can be
    # set through `extra`, "field=value,field=value".
    c.model.vocab_size = config_dict.placeholder(int)
    c.model.dtype = config_dict.placeholder(str)  # float32 | bfloat16 (compute)
    c.model.moe_dispatch = config_dict.placeholder(str)  # dense | dropless | expert_parallel
    c.model.moe_capacity_factor = config_dict.placeholder(float)
    c.model.remat = config_dict.placeholder(str)  # none | full | dots
    # Scan over repeats of the layer pattern (one compiled block, stacked parameters); see
    # ModelConfig.scan_layers. Checkpoints of either form load into either.
    c.model.scan_layers = config_dict.placeholder(bool)
    c.model.extra = ""
    # "none", or "yarn": when seq_len exceeds the model's native context, YaRN RoPE scaling by
    # seq_len / native (Qwen3.5's native 262,144 covers every stage, so it never applies there).
    c.model.rope_scaling = "none"

    # "" (random), a Hugging Face directory (stage 1 from Qwen3.5-35B-A3B), or an a1jax checkpoint:
    # a run's workdir, its checkpoints/ directory, or one step directory. Only the parameters are
    # taken; the optimizer starts fresh.
    c.init_from = ""
    c.requires_init = False  # stages after the first: refuse to start from random weights

    c.mesh = ml_collections.ConfigDict()
    c.mesh.layout = "fsdp"  # a1jax.sharding.layouts.LAYOUTS, or "" to use `axes` alone
    c.mesh.axes = ""  # "data=2,expert=2,sequence=2" (one may be -1: the rest of the devices)
    c.mesh.rules = ""  # overrides of the logical rules: "act_seq=sequence;embed=data+expert"
    c.mesh.num_devices = 0  # 0: every device; else the first N (ablations on a subset)

    c.data = ml_collections.ConfigDict()
    # A dataset written by `python -m a1jax.data.prepare`: its TFDS data directory (holding
    # trajectory_dataset/) or the version directory itself. "": synthetic trajectories are
    # generated into WORKDIR/data (domains of the mixture, horizons in the range below).
    c.data.dir = ""
    c.data.tokenizer = ""  # tokenizer directory; "": the one a1jax ships
    c.data.mixture = ml_collections.ConfigDict({d: 1.0 / len(DOMAINS) for d in DOMAINS})
    c.data.horizon_min = 1  # tool-call steps per synthetic trajectory
    c.data.horizon_max = 3
    c.data.synthetic_per_domain = 64
    c.data.eval_fraction = 0.1
    c.data.length_policy = "truncate"  # drop | truncate (a trajectory longer than seq_len)
    c.data.eval_batches = 2  # held-out batches per eval

    c.seq_len = 1024
    c.batch_size = 8  # sequences per optimizer step, all processes together
    c.microbatches = 1
    # XLA options for the train step's compile only ("xla_name=value,..."), beside the
    # launchers' XLA_FLAGS: what one experiment needs and others must not get (stage 3 turns
    # the GPU's pipelined collectives off to fit its memory). Scheduling only, not numerics:
    # not in the run's identity.
    c.xla_options = ""
    c.steps = 100
    c.token_budget = 0  # > 0: steps = ceil(token_budget / (batch_size * seq_len))

    c.optim = ml_collections.ConfigDict(dataclasses.asdict(OptimConfig()))
    del c.optim.total_steps  # the stage's steps
    c.z_loss_coef = 0.0

    c.log_every = 5
    c.eval_every = 25
    # The model as an agent during training: greedy episodes on held-out tasks (a1jax.eval's
    # loop and environments), success by domain and horizon logged as kind "agent_eval" every
    # `every` steps and at the end (0: off).
    c.agent_eval = ml_collections.ConfigDict()
    c.agent_eval.every = 0
    c.agent_eval.domains = ",".join(DOMAINS)
    c.agent_eval.horizons = "1,2"
    c.agent_eval.n = 4  # tasks per domain and horizon
    c.agent_eval.batch = 8  # episodes decoded together (a multiple of the mesh's row shards)
    c.agent_eval.max_turns = 8
    c.agent_eval.max_turn_tokens = 256
    c.agent_eval.max_context = 4096
    # After SFT (a1jax.rl.learner, experiments/paper/): "sft" trains on trajectories; "grpo"
    # (a domain teacher) and "opd" (multi-teacher on-policy distillation) learn from the policy's
    # own episodes: each step rolls out `batch_size` episodes (batch_size / group_size prompts,
    # group_size samples each) with the current parameters, scores them, and updates once.
    c.rl = ml_collections.ConfigDict()
    c.rl.algorithm = "sft"  # sft | grpo | opd
    c.rl.domains = "kb_search"  # the rolled-out tasks' domains, comma-separated (opd: all)
    c.rl.horizon_min = 1
    c.rl.horizon_max = 2
    c.rl.group_size = 4  # samples per prompt (grpo's G); opd takes 1
    c.rl.temperature = 1.0
    # The rollouts' other sampling settings (a1jax.infer.sampling.SamplingParams; off by
    # default, as the paper's teachers sample). Agents-A1's release settings, what a1jax.eval
    # samples with, are temperature 0.85, top_p 0.95, top_k 20, presence_penalty 1.1. The
    # sampler records each token's log-probability under the distribution it drew from, so the
    # truncated importance weight (importance_cap) corrects for any of them.
    c.rl.top_k = 0
    c.rl.top_p = 1.0
    c.rl.min_p = 0.0
    c.rl.presence_penalty = 0.0
    c.rl.repetition_penalty = 1.0
    c.rl.max_turns = 8  # model calls per episode; the context is seq_len
    c.rl.max_turn_tokens = 256
    c.rl.advantage = "grpo"  # grpo | dr_grpo | rloo (a1jax.rl.losses.ADVANTAGES)
    c.rl.dynamic_sampling = True  # drop groups whose rewards do not vary
    c.rl.clip_low = 0.2  # the paper's search teacher: [0.2, 0.28]
    c.rl.clip_high = 0.28
    c.rl.kl_coef = 0.001  # k3 KL to the starting (reference) policy; 0: no reference kept
    c.rl.entropy_coef = 1e-4
    c.rl.importance_cap = 2.0  # truncated importance weight for the sampler/trainer mismatch
    # The task reward: the verifier's 0/1, minus turn_penalty per model call past free_turns
    # (the paper's linear turn penalty), minus format_penalty per malformed call, minus
    # repeat_penalty per tool call that repeats an earlier one (same tool, same arguments).
    c.rl.turn_penalty = 0.0
    c.rl.free_turns = 8
    c.rl.format_penalty = 0.0
    c.rl.repeat_penalty = 0.0
    # Ours: an episode not solved earns progress_reward x the share of the steps every solution
    # takes that it took (Environment.progress: files defines it as the share of the inbox read),
    # so that GRPO can tell the failures of a group apart; in [0, 1), below any solved episode.
    c.rl.progress_reward = 0.0
    c.rl.reward = ""  # "": the task reward; "package.module:function": episode -> float
    c.distill = ml_collections.ConfigDict()
    c.distill.teachers = ""  # "kb_search=DIR,calculator=DIR,files=DIR", or "*=DIR" for all
    c.distill.top_k = 64  # the paper does not state k
    # renormalised (the paper) | tail_bin (top-k plus one bin for the rest) | full_vocab (the
    # exact reverse KL: the teacher's whole distribution, [batch, time, vocabulary] of it) |
    # sampled_token (the single-sample reverse-KL estimator: the teacher's log-probability of
    # the token the student sampled; top_k is not used)
    c.distill.mode = "renormalised"
    c.distill.resident = True  # every teacher kept loaded; False: load, score, drop per step

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 25
    c.checkpoint.keep = 2  # the latest K, plus the stage's final step, always kept
    c.checkpoint.async_save = True

    # A step whose loss or gradient norm is NaN or infinite: "skip" (the update is not applied,
    # the step is counted as skipped; more than `max_skipped` stops the run) or "stop" (the run
    # stops with a message; the last checkpoint stays the last good state).
    c.nonfinite = "skip"
    c.max_skipped = 10
    c.lock()
    return c


def parse_arg(arg: str | None, **defaults: Any) -> dict[str, Any]:
    """`"model=tiny,smoke=True"` -> {"model": "tiny", "smoke": True}, typed like `defaults`
    and limited to their names (a misspelt argument is an error)."""
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in defaults:
            raise ExperimentError(f"unknown experiment argument {item!r}; arguments are "
                                  f"{', '.join(f'{k}=' for k in defaults)}")
        kind = type(defaults[name])
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ExperimentError(f"experiment argument {name} takes True or False")
            out[name] = value.lower() in ("true", "1")
        else:
            try:
                out[name] = kind(value)
            except ValueError:
                raise ExperimentError(f"experiment argument {name}={value!r} is not a "
                                      f"{kind.__name__}") from None
    return out


def _pairs(text: str, what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in filter(None, (s.strip() for s in text.replace(";", ",").split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ExperimentError(f"{what}: {item!r} is not name=value")
        pairs.append((name.strip(), value.strip()))
    return pairs


def model_config(c: ml_collections.ConfigDict) -> ModelConfig:
    if c.model.preset not in PRESETS:
        raise ExperimentError(f"model.preset {c.model.preset!r} is unknown; known: "
                              f"{', '.join(PRESETS)}")
    changes: dict[str, Any] = {k: c.model[k] for k in
                               ("vocab_size", "dtype", "moe_dispatch", "moe_capacity_factor",
                                "remat", "scan_layers") if c.model[k] is not None}
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    for name, value in _pairs(c.model.extra, "model.extra"):
        if name not in fields:
            raise ExperimentError(f"model.extra names unknown model field {name!r}")
        try:
            changes[name] = json.loads(value)
        except json.JSONDecodeError:
            changes[name] = value
    try:
        config = get_preset(c.model.preset).replace(**changes)
        if c.model.rope_scaling not in ("none", "yarn"):
            raise ExperimentError(f"model.rope_scaling must be 'none' or 'yarn', got "
                                  f"{c.model.rope_scaling!r}")
        native = config.max_position_embeddings
        if c.model.rope_scaling == "yarn" and config.rope_type == "default" and c.seq_len > native:
            config = config.replace(rope_type="yarn", rope_factor=c.seq_len / native,
                                    rope_original_max_position_embeddings=native,
                                    max_position_embeddings=c.seq_len)
        return config
    except (TypeError, A1Error) as e:
        raise ExperimentError(f"model config: {e}") from None


def parse_rules(text: str, what: str = "mesh.rules") -> list[tuple[str, Any]]:
    """Rule overrides as written in `mesh.rules`: `"embed=;act_seq=sequence;exp=data+expert"`
    maps embed to no mesh axis (replicated), act_seq to `sequence`, exp to data and expert."""
    return [(name, tuple(value.split("+")) if "+" in value else (value or None))
            for name, value in _pairs(text, what)]


def mesh_spec(c: ml_collections.ConfigDict, num_devices: int | None = None) -> MeshSpec:
    """The layout resolved for `num_devices` (default: mesh.num_devices, else every device)."""
    num_devices = num_devices or c.mesh.num_devices or None
    axes = _mesh_axes(c)
    rules = parse_rules(c.mesh.rules)
    if not c.mesh.layout and not axes:
        raise ExperimentError("set mesh.layout or mesh.axes")
    return MeshSpec.create(c.mesh.layout or None, axes or None, rules, num_devices)


def _mesh_axes(c: ml_collections.ConfigDict) -> dict[str, int]:
    """mesh.axes ("data=2,expert=-1") as sizes."""
    axes = {}
    for name, value in _pairs(c.mesh.axes, "mesh.axes"):
        try:
            axes[name] = int(value)
        except ValueError:
            raise ExperimentError(f"mesh.axes: size of {name} must be an integer, got "
                                  f"{value!r}") from None
    return axes


def devices_needed(c: ml_collections.ConfigDict) -> int:
    """The fewest devices the layout runs on: the product of its fixed axis sizes (an axis of
    -1 takes what is left, at least 1), or mesh.num_devices if larger. Needs no devices."""
    sizes = dict(get_layout(c.mesh.layout).axes) if c.mesh.layout else {}
    sizes.update(_mesh_axes(c))
    return max(math.prod(v for v in sizes.values() if v > 0), c.mesh.num_devices)


def num_steps(c: ml_collections.ConfigDict) -> int:
    if c.token_budget > 0:
        per_step = c.batch_size * c.seq_len
        return -(-c.token_budget // per_step)
    if c.steps <= 0:
        raise ExperimentError(f"steps must be positive, got {c.steps}")
    return c.steps


def xla_options(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """`c.xla_options` as jax.jit's compiler_options: {"xla_name": bool | int | str}."""
    out = {}
    for part in filter(None, (p.strip() for p in c.xla_options.split(","))):
        name, eq, value = part.partition("=")
        if not eq or not name.startswith("xla_"):
            raise ExperimentError(f"xla_options: expected xla_NAME=VALUE[,...], got {part!r}")
        out[name] = {"true": True, "false": False}.get(value.lower(), value)
        if isinstance(out[name], str) and re.fullmatch(r"-?\d+", value):
            out[name] = int(value)
    return out


def optim_config(c: ml_collections.ConfigDict) -> OptimConfig:
    return OptimConfig(total_steps=num_steps(c), **c.optim.to_dict())


def validate(c: ml_collections.ConfigDict) -> None:
    """The checks that need no devices and no data."""
    xla_options(c)
    if c.nonfinite not in ("skip", "stop"):
        raise ExperimentError(f"nonfinite must be 'skip' or 'stop', got {c.nonfinite!r}")
    for key in ("seq_len", "batch_size", "microbatches", "log_every", "eval_every",
                "checkpoint.every", "checkpoint.keep", "data.eval_batches"):
        node, _, leaf = key.rpartition(".")
        value = (c[node] if node else c)[leaf]
        if value <= 0:
            raise ExperimentError(f"{key} must be positive, got {value}")
    unknown = sorted(set(c.data.mixture) - set(DOMAINS)) if not c.data.dir else []
    if unknown:
        raise ExperimentError(f"data.mixture names {unknown[0]!r}, which the synthetic "
                              f"generator does not know ({', '.join(DOMAINS)}); set data.dir "
                              "to a prepared dataset for other domains")
    if c.agent_eval.every < 0:
        raise ExperimentError(f"agent_eval.every must be >= 0 (0: off), got {c.agent_eval.every}")
    if c.agent_eval.every:
        agent_eval_settings(c)
    if not 0 <= c.seed < synth.EVAL_SEED_BASE:
        raise ExperimentError(f"seed must be in [0, {synth.EVAL_SEED_BASE}): seeds from "
                              f"{synth.EVAL_SEED_BASE} on make a1jax.eval's held-out tasks")
    if not 1 <= c.data.horizon_min <= c.data.horizon_max:
        raise ExperimentError(f"data horizon range [{c.data.horizon_min}, "
                              f"{c.data.horizon_max}] is empty")
    config = model_config(c)
    if c.seq_len > config.max_position_embeddings:
        raise ExperimentError(
            f"seq_len {c.seq_len} exceeds the model's context max_position_embeddings="
            f"{config.max_position_embeddings}; set --config.model.rope_scaling=yarn to extend it")
    num_steps(c)
    if c.rl.algorithm != "sft":
        rl_settings(c)


RL_ALGORITHMS = ("sft", "grpo", "opd")


def rl_settings(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """`rl` and `distill` as typed values, checked: algorithm, domains, horizons, group_size,
    prompts (batch_size / group_size), teachers {domain: path} and the loss options."""
    from a1jax.rl.losses import ADVANTAGES, SVA_MODES

    r, d = c.rl, c.distill
    if r.algorithm not in RL_ALGORITHMS:
        raise ExperimentError(f"rl.algorithm must be one of {', '.join(RL_ALGORITHMS)}, got "
                              f"{r.algorithm!r}")
    domains = [x.strip() for x in r.domains.split(",") if x.strip()]
    unknown = [x for x in domains if x not in DOMAINS]
    if not domains or unknown:
        raise ExperimentError(f"rl.domains: {r.domains!r}; known: {', '.join(DOMAINS)}")
    if not 1 <= r.horizon_min <= r.horizon_max:
        raise ExperimentError(f"rl horizon range [{r.horizon_min}, {r.horizon_max}] is empty")
    group = r.group_size if r.algorithm == "grpo" else 1
    if r.algorithm == "grpo" and group < 2:
        raise ExperimentError(f"rl.group_size must be >= 2 for grpo (advantages compare the "
                              f"samples of a prompt), got {group}")
    if c.batch_size % group:
        raise ExperimentError(f"batch_size {c.batch_size} must be a multiple of rl.group_size "
                              f"{group} (prompts x samples per prompt)")
    if r.advantage not in ADVANTAGES:
        raise ExperimentError(f"rl.advantage must be one of {', '.join(ADVANTAGES)}, got "
                              f"{r.advantage!r}")
    if d.mode not in SVA_MODES + ("full_vocab",):
        raise ExperimentError(f"distill.mode must be one of {', '.join(SVA_MODES)}, "
                              f"full_vocab, got {d.mode!r}")
    for key in ("turn_penalty", "format_penalty", "repeat_penalty"):
        if r[key] < 0:
            raise ExperimentError(f"rl.{key} is subtracted from the reward: it must be >= 0, "
                                  f"got {r[key]}")
    if not 0 <= r.progress_reward < 1:
        raise ExperimentError("rl.progress_reward is what an episode not solved can earn: it must "
                              f"be in [0, 1), got {r.progress_reward}")
    for key in ("max_turns", "max_turn_tokens"):
        if r[key] < 1:
            raise ExperimentError(f"rl.{key} must be positive, got {r[key]}")
    if r.temperature <= 0:
        raise ExperimentError(f"rl.temperature must be > 0 (on-policy samples), got "
                              f"{r.temperature}")
    if r.algorithm == "opd" and d.mode == "sampled_token" and r.temperature != 1.0:
        raise ExperimentError(f"distill.mode=sampled_token estimates the reverse KL from the "
                              f"student's own samples: rl.temperature must be 1.0, got "
                              f"{r.temperature}")
    changed = [f"{k}={r[k]}" for k in SAMPLING_KEYS if r[k] != RL_ADDED[k]]
    if r.algorithm == "opd" and d.mode == "sampled_token" and changed:
        raise ExperimentError(f"distill.mode=sampled_token estimates the reverse KL from the "
                              f"student's own samples: rl.{', rl.'.join(changed)} must be off")
    rollout_sampling(c)  # SamplingParams' own checks, before anything compiles
    if r.reward and ":" not in r.reward:
        raise ExperimentError(f"rl.reward: {r.reward!r} is not 'package.module:function'")
    teachers: dict[str, str] = {}
    if r.algorithm == "opd":
        vocab = model_config(c).vocab_size
        if d.mode in ("renormalised", "tail_bin") and not 1 <= d.top_k <= vocab:
            raise ExperimentError(f"distill.top_k must be in [1, {vocab}] (the vocabulary), got "
                                  f"{d.top_k}")
        given = dict(_pairs(d.teachers, "distill.teachers"))
        for name in given:
            if name != "*" and name not in DOMAINS:
                raise ExperimentError(f"distill.teachers names {name!r}, not a domain "
                                      f"({', '.join(DOMAINS)}) or '*'")
        for domain in domains:
            path = given.get(domain, given.get("*"))
            if not path:
                raise ExperimentError(f"domain {domain} has no teacher: set distill.teachers "
                                      f"(\"{domain}=DIR,...\" or \"*=DIR\")")
            teachers[domain] = path
    # full_vocab: the paper's renormalised form over every token is the exact reverse KL.
    top_k = {"full_vocab": model_config(c).vocab_size, "sampled_token": 1}.get(d.mode, d.top_k)
    return {"algorithm": r.algorithm, "domains": domains, "group_size": group,
            "prompts": c.batch_size // group, "teachers": teachers,
            "horizons": (r.horizon_min, r.horizon_max), "top_k": top_k,
            "loss_mode": "renormalised" if d.mode == "full_vocab" else d.mode}


SAMPLING_KEYS = ("top_k", "top_p", "min_p", "presence_penalty", "repetition_penalty")


def rollout_sampling(c: ml_collections.ConfigDict, **fields):
    """The rollouts' SamplingParams: rl.temperature and the rl keys SAMPLING_KEYS, plus
    `fields` (max_new_tokens, stop_tokens, seed)."""
    from a1jax.infer.sampling import SamplingParams

    try:
        return SamplingParams(temperature=c.rl.temperature,
                              **{k: c.rl[k] for k in SAMPLING_KEYS}, **fields)
    except A1Error as e:
        raise ExperimentError(f"rl: {e}") from None


def agent_eval_settings(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """`agent_eval` as typed values: domains, horizons, n, batch and the episode budgets."""
    a = c.agent_eval
    domains = [d.strip() for d in a.domains.split(",") if d.strip()]
    unknown = [d for d in domains if d not in DOMAINS]
    if not domains or unknown:
        raise ExperimentError(f"agent_eval.domains: {a.domains!r}; known: {', '.join(DOMAINS)}")
    try:
        horizons = [int(h) for h in a.horizons.split(",") if h.strip()]
    except ValueError:
        horizons = []
    if not horizons or min(horizons) < 1:
        raise ExperimentError(f"agent_eval.horizons must be positive integers, got "
                              f"{a.horizons!r}")
    for key in ("n", "batch", "max_turns", "max_turn_tokens", "max_context"):
        if a[key] < 1:
            raise ExperimentError(f"agent_eval.{key} must be positive, got {a[key]}")
    return {"domains": domains, "horizons": horizons, "n": a.n, "batch": a.batch,
            "max_turns": a.max_turns, "max_turn_tokens": a.max_turn_tokens,
            "max_context": a.max_context}


# Model fields that say how to compute, not what the parameters are: a checkpoint made with other
# values of these loads, and a resumed run may change them.
COMPUTE_FIELDS = frozenset({
    "dtype", "deltanet_chunk_size", "deltanet_impl", "moe_dispatch", "moe_capacity_factor",
    "remat", "scan_layers", "attention_impl", "attention_block_size", "context_parallel",
    "loss_chunk_size", "eos_token_id",
    "initializer_range", "router_aux_loss_coef", "max_position_embeddings", "rope_type",
    "rope_factor", "rope_original_max_position_embeddings", "rope_beta_fast", "rope_beta_slow"})


def parameter_fields(config: ModelConfig) -> dict[str, Any]:
    """The model config without COMPUTE_FIELDS: equal for two configs whose parameters match."""
    return {k: v for k, v in config.to_json_dict().items() if k not in COMPUTE_FIELDS}


# rl keys added after runs were made, with their defaults
RL_ADDED = {"progress_reward": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
            "presence_penalty": 0.0, "repetition_penalty": 1.0}


def identity(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """What makes two runs the same experiment (a workdir's checkpoints must match it):
    the stage, the model, the data and the step's shape; not steps, logging or layout, which a
    resumed run may change."""
    out = {"stage": c.stage, "model": parameter_fields(model_config(c)),
           "seed": c.seed, "seq_len": c.seq_len, "batch_size": c.batch_size,
           "data": {"dir": c.data.dir, "mixture": c.data.mixture.to_dict(),
                    "horizon": [c.data.horizon_min, c.data.horizon_max]}}
    if c.rl.algorithm != "sft":  # an SFT run's identity is what it was before rl existed
        # A key added later is left out at its default: runs made before it keep their identity
        # (and resume, or count as finished) as long as they do what they did.
        out["rl"] = {k: v for k, v in c.rl.to_dict().items()
                     if k not in RL_ADDED or v != RL_ADDED[k]}
        if c.rl.algorithm == "opd":  # how teachers are held is not what they teach
            out["distill"] = {k: v for k, v in c.distill.to_dict().items() if k != "resident"}
    return out


def fingerprint(c: ml_collections.ConfigDict) -> str:
    return hashlib.sha256(json.dumps(identity(c), sort_keys=True).encode()).hexdigest()[:16]


def smoke(c: ml_collections.ConfigDict) -> None:
    """A handful of steps on tiny data: seconds, for checks."""
    c.steps = 4
    c.token_budget = 0
    c.seq_len = min(c.seq_len, 2048)
    c.data.synthetic_per_domain = 12
    c.data.eval_batches = 1
    c.log_every = 1
    c.eval_every = 2
    c.checkpoint.every = 2


def as_json(c: ml_collections.ConfigDict) -> Mapping[str, Any]:
    return json.loads(c.to_json())
