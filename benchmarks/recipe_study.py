r"""The toy recipe study of docs/recipe.md: one full-domain SFT model, then for each training seed
the GRPO teachers and the distilled student, every model evaluated on the same held-out tasks.

    python benchmarks/recipe_study.py --workdir runs/recipe_study --seeds 0,1,2 [--eval-n 16] \
        [--eval-horizons 1,2] [--parallel-teachers 2] [--part-set PART:KEY=VALUE ...] \
        [--rollout-eval]

Each seed is `python -m a1jax.recipe` in WORKDIR/seed-N with `teacher_grpo:seed=N` and
`opd_multi_teacher:seed=N` (the seed of their rollouts); the SFT part is the same for every seed
(run once in the first seed's folder, linked into the others; `--sft-seed` names another
seed's, so that a seed can be added later), so the spread over seeds is the spread of the RL
parts' training. Evaluation: `a1jax.eval`'s default sampling (the paper's release settings),
task seed offset 0, `--eval-runs` runs per task. Writes WORKDIR/study.md: per domain and horizon,
the SFT model's avg@runs and, over the seeds, the mean and the range of each teacher's (on its
own domain) and of the student's, the reference solutions' own success within the evaluation's
budgets (`reference`: below 1, the context or turn budget cuts them off), and, from the same
episodes, what each model does (`behaviour`: whether kb_search searches the named person,
whether calculator's first call has the right operator, whether files episodes read every
listed file, and files success rescored under today's verifier, which checks moves and reads).
Rerunning resumes: finished parts are skipped, evaluations extend their episodes.
`--parallel-teachers N` trains N of a seed's teachers at a time (`a1jax.recipe --only`, after the
SFT part), then runs the rest.
`--rollout-eval` evaluates every model again on the same tasks at the sampling the teachers'
rollouts use (by default temperature 1, nothing cut) and adds that table.
`--gains EVALS` writes each model's gain over the SFT model per domain, with an interval over
tasks, from finished evaluations (seed-N/EVALS/PART/episodes.jsonl; a part evaluated on none of
the seeds, as in a study of one teacher, is left out), and with two seeds or more the mean gain
with an interval over the training seeds.
`--part-set` overrides a part's setting after the study's own (docs/recipe.md's runs/recipe6
starts the SFT from runs/recipe5's and extends it to horizon 3 this way).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import scipy.stats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the study trains: sizes for the 2-core CPU (one simulated device), h1-2 tasks. The SFT
# decays to half its peak, as the horizon study's (docs/horizon.md: decay to zero left `tiny`
# unable to copy numbers); teachers at lr 2e-4 (a 1e-3 pilot collapsed, docs/recipe.md).
PARTS = [
    "--layout", "fsdp", "--set", "mesh.num_devices=1", "--set", "model.moe_dispatch=dropless",
    "--part-set", "sft_full_domain:steps=5000",
    "--part-set", "sft_full_domain:optim.end_lr_fraction=0.5",
    "--part-set", "sft_full_domain:data.horizon_max=2",
    "--part-set", "sft_full_domain:data.synthetic_per_domain=10000",
    "--part-set", "sft_full_domain:checkpoint.every=500",
    "--part-set", "sft_full_domain:eval_every=500",
    "--part-set", "sft_full_domain:log_every=50",
    "--part-set", "teacher_grpo:rl.horizon_max=2", "--part-set", "teacher_grpo:steps=60",
    "--part-set", "teacher_grpo:batch_size=32", "--part-set", "teacher_grpo:rl.group_size=8",
    "--part-set", "teacher_grpo:optim.learning_rate=2e-4",
    "--part-set", "opd_multi_teacher:rl.horizon_max=2",
    "--part-set", "opd_multi_teacher:steps=30",
    "--part-set", "opd_multi_teacher:batch_size=12",
    "--part-set", "opd_multi_teacher:optim.learning_rate=3e-4",
]


def rows(path: str, key: str = "") -> dict[tuple[str, int], float]:
    """An evaluation's avg@runs (or `key`) per (domain, horizon), from its results.json."""
    with open(os.path.join(path, "results.json")) as f:
        results = json.load(f)
    key = key or f"avg@{results['runs']}"
    return {(r["domain"], r["horizon"]): r[key] for r in results["rows"] if key in r}


DOMAINS = ("kb_search", "calculator", "files")  # a1jax.recipe's default, one teacher each
OPERATORS = {"add": "+", "subtract": "-", "multiply by": "*"}
# `--rollout-eval`'s sampling: what the teachers' GRPO rollouts use (their experiment.json's
# rl.temperature and the rl keys below; teacher_grpo.py's default: temperature 1.0, nothing cut
# or penalised), where a1jax.eval's default, the study's own evaluation, is Agents-A1's release
# settings (temperature 0.85, top-p 0.95, top-k 20, presence penalty 1.1). runs/recipe14
# (docs/recipe.md): the two disagree; the release settings lift the SFT model about as much as
# GRPO does at temperature 1, and files' teachers gain only there.
SAMPLING_FLAGS = {"temperature": "--temperature", "top_p": "--top-p", "top_k": "--top-k",
                  "min_p": "--min-p", "presence_penalty": "--presence-penalty",
                  "repetition_penalty": "--repetition-penalty"}


def rollout_sampling_flags(workdir: str, seed: int) -> list[str]:
    """a1jax.eval's sampling flags for the rollouts of the seed's first teacher (a key its
    experiment.json lacks predates it: its default, which the run used)."""
    from a1jax import experiment

    with open(os.path.join(workdir, f"seed-{seed}", f"teacher_grpo_{DOMAINS[0]}",
                           "experiment.json")) as f:
        rl = json.load(f)["rl"]
    return [a for key, flag in SAMPLING_FLAGS.items()
            for a in (flag, str(rl.get(key, experiment.RL_ADDED.get(key))))]


def _calls(messages: list[dict]):
    """An episode in order: (message, None, None) for the task and each observation, and at each
    assistant message, (None, call, its observation's text) for each of its tool calls (the tool
    messages after it answer its calls in order), before those observations."""
    for i, m in enumerate(messages):
        if m["role"] in ("user", "tool"):
            yield m, None, None
        for k, c in enumerate(m.get("tool_calls") or () if m["role"] == "assistant" else ()):
            answer = messages[i + 1 + k] if i + 1 + k < len(messages) else {}
            yield None, c["function"], (answer.get("content") or "" if answer.get("role") == "tool"
                                        else "")


def _arguments(arguments: object) -> dict:
    """A call's arguments as a dict: JSON text decoded (as synth writes some, and real logs
    do), {} where they are neither."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return {}
    return arguments if isinstance(arguments, dict) else {}


def behaviour(episodes_path: str) -> dict[str, float]:
    """What the success rates alone do not show, from a model's evaluated episodes:
    kb_search: the share of episodes that ever search for the person the task starts from
    (without it an answer is a guess), the share that search for a name neither the task nor an
    earlier observation holds (a miscopied name: synth's own misspelt searches count too), the
    share that repeat a search after it matched nothing, and the share that search the mentor of
    the person the task asks about (one link past the chain; runs/recipe14's failures: a
    miscopied or one-too-far name searched until the turns ran out); calculator: the share whose
    first call uses the operator of the task's first operation, and the share whose calculator
    calls that returned a value apply exactly the task's operations (operator and number) in
    order (runs/recipe14's horizon-3 failures apply another line's); files: the share whose first
    `read_file` opens a file of the inbox (a copy of a listed path), the share that reads every
    listed file, the share that read a miscopied name (an /inbox path no listing held, other
    than by a '-' for the '_'; runs/recipe14's horizon-3 failures; synth's own references do so
    at 8% a read since 36fcac8) and of those the share that listed /inbox again after it
    (synth's recovery), and the share solved under today's
    `Files.verify` (the episode's calls replayed
    into a fresh world: results written before it checked the moves, or the reads, counted the
    report alone, or the report and the moves), and that share again over the tasks with two or
    more even files, whose report holds a sum the model must add up (synth's files tools have no
    arithmetic: runs/recipe11's SFT model and files teacher solved none of 27 such tasks), and of
    those tasks' episodes that call the calculator, the share whose last call adds exactly the
    even values and the share whose report's sum copies its result."""
    from a1jax.agent.environment import make_environment, make_task

    named, right_op, read, checked, every, summed = [], [], [], [], [], []
    miscopied, repeated, applied, overshot, given, copied = [], [], [], [], [], []
    misread, relisted = [], []
    with open(episodes_path) as f:
        for line in f:
            e = json.loads(line)
            calls = [c["function"] for m in e["messages"] for c in m.get("tool_calls") or ()]
            args = [_arguments(c["arguments"]) for c in calls]
            if e["domain"] == "kb_search":
                named.append(any(c["name"] == "search" and a.get("query") == e["verifier"]["start"]
                                 for c, a in zip(calls, args)))
                kb, reached = e["verifier"]["kb"], e["verifier"]["start"]
                for _ in range(e["verifier"]["hops"]):
                    reached = kb[reached]["mentor"]
                seen, failed, wrong, again, past = "", set(), False, False, False
                for message, call, result in _calls(e["messages"]):
                    if message is not None:
                        seen += (message.get("content") or "") + "\n"
                        continue
                    query = call["arguments"].get("query") if isinstance(
                        call["arguments"], dict) else None
                    if call["name"] == "search" and isinstance(query, str):
                        wrong |= query not in seen
                        past |= query == kb.get(reached, {}).get("mentor")
                        again |= query in failed
                        if result.startswith("No documents match"):
                            failed.add(query)
                miscopied.append(wrong)
                repeated.append(again)
                overshot.append(past)
            if e["domain"] == "files":
                paths = [a.get("path") for c, a in zip(calls, args) if c["name"] == "read_file"]
                inbox = {f"/inbox/{f}" for f in e["verifier"]["inbox"]}
                read.append(bool(paths) and paths[0] in inbox)
                every.append(inbox <= set(paths))
                wrong = next((i for i, (c, a) in enumerate(zip(calls, args))
                              if c["name"] == "read_file"
                              and str(a.get("path")).startswith("/inbox/")
                              and a["path"] not in inbox
                              and a["path"].replace("-", "_") not in inbox), None)
                misread.append(wrong is not None)
                if wrong is not None:
                    relisted.append(any(c["name"] == "list_dir" and a.get("path") == "/inbox"
                                        for c, a in zip(calls[wrong + 1:], args[wrong + 1:])))
                meta, last = e["metadata"], e["messages"][-1]
                env = make_environment("files")
                env.reset(make_task("files", meta["horizon"], meta["seed"], meta["index"]))
                env.step([{"name": c["name"], "arguments": c["arguments"]} for c in calls])
                checked.append(meta["episode"]["status"] == "finished"
                               and env.verify(last.get("content") or ""))
                evens = sorted(v for v in e["verifier"]["inbox"].values() if v % 2 == 0)
                if len(evens) >= 2:
                    summed.append(checked[-1])
                    # Where a sum fails (runs/recipe14 rebuilt): the values sent to the
                    # calculator, or the copy of its result into the report.
                    added = [(call["arguments"], result.strip()) for _, call, result
                             in _calls(e["messages"]) if call and call["name"] == "calculator"]
                    if added:
                        sent, returned = added[-1]
                        sent = str(sent.get("expression", "")) if isinstance(sent, dict) else ""
                        given.append(sorted(map(int, re.findall(r"\d+", sent))) == evens)
                        report = re.search(r"sum=(\d+)", last.get("content") or "")
                        copied.append(bool(report) and report.group(1) == returned)
            if e["domain"] == "calculator":
                done = []  # (operator, number) of each calculator call that returned a value
                for _, call, result in _calls(e["messages"]):
                    if call and call["name"] == "calculator" and result.strip().isdigit():
                        found = re.match(r"\W*\d+\s*([-+*])\s*(\d+)",
                                         str(call["arguments"].get("expression", ""))
                                         if isinstance(call["arguments"], dict) else "")
                        done.append(found and (found.group(1), int(found.group(2))))
                applied.append(done == [(OPERATORS[op], n) for op, n in e["verifier"]["ops"]])
            if e["domain"] == "calculator" and calls:
                first = str(next(iter(args[0].values()), ""))
                op = re.match(r"\W*\d+\s*([-+*])", first)
                right_op.append(bool(op) and op.group(1)
                                == OPERATORS[e["verifier"]["ops"][0][0]])
    out = {}
    if named:
        out["kb_search: searched the start person"] = float(np.mean(named))
    if miscopied:
        out["kb_search: searched a name no text held"] = float(np.mean(miscopied))
        out["kb_search: repeated a search that matched nothing"] = float(np.mean(repeated))
        out["kb_search: searched one link past the chain"] = float(np.mean(overshot))
    if read:
        out["files: first read opens a listed file"] = float(np.mean(read))
    if every:
        out["files: read every listed file"] = float(np.mean(every))
        out["files: read a miscopied name"] = float(np.mean(misread))
        out["files: listed /inbox again after a miscopied name"] = (
            float(np.mean(relisted)) if relisted else float("nan"))
    if checked:
        out["files: solved, reads and moves checked"] = float(np.mean(checked))
    if summed:
        out["files: solved, of tasks with 2+ even files (a sum)"] = float(np.mean(summed))
    if summed:  # nan where no sum's episode called the calculator (the rows stay: the table
        # reads every model's by the SFT model's names)
        out["files: a sum's last calculator call adds exactly the even values"] = float(
            np.mean(given)) if given else float("nan")
        out["files: a sum's report copies that call's result"] = float(
            np.mean(copied)) if copied else float("nan")
    if right_op:
        out["calculator: first call's operator right"] = float(np.mean(right_op))
    if applied:
        out["calculator: applied the task's operations, in order"] = float(np.mean(applied))
    return out


def spread(values: list[float]) -> str:
    """Mean [min, max] over the seeds."""
    return (f"{np.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"
            if len(values) > 1 else f"{values[0]:.3f}")


def behaviour_table(workdir: str, seeds: list[int]) -> str:
    """`behaviour` of the SFT model, each domain's teacher and the student, over the seeds."""
    def of(seed: int, stage: str) -> dict[str, float]:
        return behaviour(os.path.join(workdir, f"seed-{seed}", "eval", stage, "episodes.jsonl"))

    sft = of(seeds[0], "sft_full_domain")
    students = [of(seed, "opd_multi_teacher") for seed in seeds]
    lines = ["| share of episodes | SFT | teacher | OPD student |", "|---|---|---|---|"]
    for name, base in sft.items():
        teachers = [of(seed, f"teacher_grpo_{name.split(':')[0]}")[name] for seed in seeds]
        lines.append(f"| {name} | {base:.3f} | {spread(teachers)} | "
                     f"{spread([s[name] for s in students])} |")
    return "\n".join(lines) + "\n"


def table(workdir: str, seeds: list[int], runs: int, evals_dir: str = "eval") -> str:
    """The study's table from each seed's `evals_dir` (`eval`, or `eval-rollout`)."""
    sft = rows(os.path.join(workdir, f"seed-{seeds[0]}", evals_dir, "sft_full_domain"))
    per_seed = []
    for seed in seeds:
        evals = os.path.join(workdir, f"seed-{seed}", evals_dir)
        got = {"opd": rows(os.path.join(evals, "opd_multi_teacher"))}
        for domain in sorted({d for d, _ in sft}):
            got.update({("teacher", d, h): v for (d, h), v in
                        rows(os.path.join(evals, f"teacher_grpo_{domain}")).items()})
        per_seed.append(got)

    # The reference solutions' own success within each evaluation's budgets, the lowest over
    # the evaluations of the cell (a1jax.eval's `reference`; absent in older results).
    stages = ["opd_multi_teacher"] + [f"teacher_grpo_{d}" for d in sorted({d for d, _ in sft})]
    evals = [os.path.join(workdir, f"seed-{seeds[0]}", evals_dir, "sft_full_domain")] + [
        os.path.join(workdir, f"seed-{seed}", evals_dir, stage) for seed in seeds
        for stage in stages]
    ceiling: dict[tuple[str, int], float] = {}
    for path in evals:
        for cell, value in rows(path, "reference").items():
            ceiling[cell] = min(ceiling.get(cell, 1.0), value)
    lines = [f"| domain | horizon | SFT avg@{runs} | teacher avg@{runs} | OPD student "
             f"avg@{runs} | reference |", "|---|---|---|---|---|---|"]
    for (domain, horizon), base in sorted(sft.items()):
        teacher = [s[("teacher", domain, horizon)] for s in per_seed]
        student = [s["opd"][(domain, horizon)] for s in per_seed]
        cap = ceiling.get((domain, horizon))
        lines.append(f"| {domain} | {horizon} | {base:.3f} | {spread(teacher)} | "
                     f"{spread(student)} | {'-' if cap is None else f'{cap:.3f}'} |")
    return "\n".join(lines) + "\n"


def task_success(path: str) -> dict[tuple[str, int, int], float]:
    """Each task's success rate over its runs, by (domain, horizon, task index), from an
    evaluation's episodes.jsonl."""
    if not os.path.exists(path):
        raise SystemExit(f"{path}: no such evaluation (a1jax.eval --out {os.path.dirname(path)})")
    runs: dict[tuple[str, int, int], list[float]] = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            key = (r["domain"], r["metadata"]["horizon"], r["metadata"]["index"])
            runs.setdefault(key, []).append(float(r["metadata"]["episode"]["reward"]))
    return {k: float(np.mean(v)) for k, v in runs.items()}


def gain(base: dict, model: dict, domain: str, resamples: int = 2000,
         seed: int = 0) -> tuple[float, float, float, float, int]:
    """(base, model, lo, hi, tasks): the two models' success over the domain's tasks both were
    evaluated on (every horizon, each task weighing the same) and a 95% paired bootstrap
    interval of the difference, tasks resampled within each horizon. The interval is over
    held-out tasks, for one trained model: it says whether the evaluation resolves the
    difference, not how another training seed would do."""
    keys = sorted(k for k in base.keys() & model.keys() if k[0] == domain)
    diff = np.array([model[k] - base[k] for k in keys])
    horizons = np.array([k[1] for k in keys])
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(horizons == h) for h in np.unique(horizons)]
    means = [np.concatenate([diff[rng.choice(g, len(g))] for g in groups]).mean()
             for _ in range(resamples)]
    lo, hi = np.percentile(means, [2.5, 97.5])
    return (float(np.mean([base[k] for k in keys])), float(np.mean([model[k] for k in keys])),
            float(lo), float(hi), len(keys))


def gains_table(workdir: str, seeds: list[int], evals_dir: str) -> str:
    """Each teacher on its domain and each student on every domain against the SFT model, from
    the seeds' `evals_dir`: the domain's success over horizons and its paired interval."""
    def episodes(seed: int, part: str) -> str:
        return os.path.join(workdir, f"seed-{seed}", evals_dir, part, "episodes.jsonl")

    sft = task_success(episodes(seeds[0], "sft_full_domain"))
    lines = ["| model | seed | domain | tasks | SFT | model | gain [95% over tasks] |",
             "|---|---|---|---|---|---|---|"]
    # A study of some parts (`--only teacher_grpo_files`) has no evaluation of the others on any
    # seed: they are left out. A part evaluated on some seeds and not others stops the table
    # (task_success's error), rather than averaging over fewer seeds than asked for.
    models = [(part, domains) for part, domains in
              [(f"teacher_grpo_{d}", (d,)) for d in DOMAINS] + [("opd_multi_teacher", DOMAINS)]
              if any(os.path.exists(episodes(seed, part)) for seed in seeds)]
    if not models:
        raise SystemExit(f"{workdir}: no teacher or student evaluated in "
                         f"seed-{{{','.join(map(str, seeds))}}}/{evals_dir}")
    gains: dict[tuple[str, str], list[float]] = {}
    for seed in seeds:
        for part, domains in models:
            model = task_success(episodes(seed, part))
            for domain in domains:
                base, value, lo, hi, n = gain(sft, model, domain)
                gains.setdefault((part, domain), []).append(value - base)
                lines.append(f"| {part} | {seed} | {domain} | {n} | {base:.3f} | {value:.3f} | "
                             f"{value - base:+.3f} [{lo:+.3f}, {hi:+.3f}] |")
    if len(seeds) < 2:
        return "\n".join(lines) + "\n"
    # Over training seeds: how another seed's teacher or student would do, the question the
    # intervals over tasks above leave open. Student's t on the seeds' gains (few seeds: wide).
    lines += ["", f"Over training seeds {','.join(map(str, seeds))} (each seed's gain as above; "
              "mean and 95% Student-t interval over the seeds):", "",
              "| model | domain | gain per seed | mean gain [95% over seeds] |", "|---|---|---|---|"]
    t = scipy.stats.t.ppf(0.975, len(seeds) - 1)
    for part, domains in models:
        for domain in domains:
            values = np.array(gains[(part, domain)])
            half = t * values.std(ddof=1) / np.sqrt(len(values))
            lines.append(f"| {part} | {domain} | {', '.join(f'{v:+.3f}' for v in values)} | "
                         f"{values.mean():+.3f} [{values.mean() - half:+.3f}, "
                         f"{values.mean() + half:+.3f}] |")
    return "\n".join(lines) + "\n"


def teachers(cmd: list[str], out: str, at_once: int, poll: float = 5.0) -> None:
    """Each domain's teacher in its own process (`a1jax.recipe --only`), `at_once` at a time,
    logged to OUT/logs/teacher_grpo_DOMAIN.log; raises if one fails. A `tiny` teacher's process
    reaches 11.5-12.5 GB resident here (runs/recipe5; where it goes was not broken down): on a
    24 GB box 2 at once were killed for memory after 55 steps, so the default is 1."""
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    waiting, running, failed = list(DOMAINS), [], []
    while waiting or running:
        while waiting and len(running) < at_once:
            part = f"teacher_grpo_{waiting.pop(0)}"
            log = open(os.path.join(out, "logs", f"{part}.log"), "a")
            running.append((part, subprocess.Popen(cmd + ["--only", part], cwd=REPO,
                                                   stdout=log, stderr=subprocess.STDOUT), log))
            print(f"   {part}: logging to {log.name}", flush=True)
        # Whichever finishes first frees its place (waiting on the oldest would leave a core idle
        # while a shorter teacher is done).
        while all(proc.poll() is None for _, proc, _ in running):
            time.sleep(poll)
        done = next(r for r in running if r[1].poll() is not None)
        running.remove(done)
        part, proc, log = done
        if proc.returncode:
            failed.append(f"{part} (exit {proc.returncode})")
        log.close()
    if failed:
        raise SystemExit(f"teachers failed: {', '.join(failed)}; their logs are in {out}/logs")


def rollout_evals(workdir: str, seeds: list[int], args: argparse.Namespace) -> list[list[str]]:
    """`--rollout-eval`'s `a1jax.eval` commands: every model of the study (the SFT model once,
    each seed's teachers on their own domains, its student on all) on the study's tasks at the
    seed's teachers' rollout sampling (`rollout_sampling_flags`), into
    seed-N/eval-rollout/PART, with the budgets `a1jax.recipe` evaluates every part under: the
    last part's (the seed's opd_multi_teacher/experiment.json: rl.max_turns,
    rl.max_turn_tokens, seq_len)."""
    cmds = []
    for seed in seeds:
        with open(os.path.join(workdir, f"seed-{seed}", "opd_multi_teacher",
                               "experiment.json")) as f:
            config = json.load(f)
        parts = [("sft_full_domain", DOMAINS)] if seed == seeds[0] else []
        parts += [(f"teacher_grpo_{d}", (d,)) for d in DOMAINS]
        parts.append(("opd_multi_teacher", DOMAINS))
        for part, domains in parts:
            model = os.path.join(workdir, f"seed-{seed}", part)
            cmds.append([sys.executable, "-m", "a1jax.eval", "--model", model,
                         "--out", os.path.join(workdir, f"seed-{seed}", "eval-rollout", part),
                         "--domains", ",".join(domains), "--horizons", args.eval_horizons,
                         "--n", str(args.eval_n), "--runs", str(args.eval_runs), "--seed", "0",
                         "--max-turns", str(config["rl"]["max_turns"]),
                         "--max-turn-tokens", str(config["rl"]["max_turn_tokens"]),
                         "--max-context", str(config["seq_len"]),
                         *rollout_sampling_flags(workdir, seed)])
    return cmds


def recipe_command(out: str, seed: int, args: argparse.Namespace) -> list[str]:
    """One seed's `a1jax.recipe` command: the study's PARTS, then `args.part_set` (later
    overrides win), then the seed of the RL parts."""
    extra = [a for item in args.part_set for a in ("--part-set", item)]
    return [sys.executable, "-m", "a1jax.recipe", "--workdir", out, "--model", "tiny",
            *PARTS, *extra, "--part-set", f"teacher_grpo:seed={seed}",
            "--part-set", f"opd_multi_teacher:seed={seed}",
            "--eval-n", str(args.eval_n), "--eval-runs", str(args.eval_runs),
            "--eval-horizons", args.eval_horizons]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--parallel-teachers", type=int, default=1, metavar="N",
                   help="train (and evaluate) N teachers at once, `a1jax.recipe --only` each "
                   "(the same work as in sequence; 2 on 2 cores: about 1.4x the throughput and "
                   "about 25 GB at the teachers' sizes)")
    p.add_argument("--eval-n", type=int, default=16)
    p.add_argument("--eval-runs", type=int, default=3)
    p.add_argument("--eval-horizons", default="1,2")
    p.add_argument("--part-set", action="append", default=[], metavar="PART:KEY=VALUE",
                   help="an `a1jax.recipe --part-set` after the study's own (they win), e.g. "
                   "sft_full_domain:init_from=DIR to start the SFT from another run's")
    p.add_argument("--rollout-eval", action="store_true",
                   help="also evaluate every model at the teachers' rollout sampling "
                   "(their rl.temperature, top_k, top_p, min_p and penalties; by default "
                   "temperature 1, nothing cut) and add its table to study.md")
    p.add_argument("--gains", default="", metavar="EVALS",
                   help="train and evaluate nothing: write WORKDIR/gains-EVALS.md, each teacher "
                   "and student against the SFT model per domain with a paired interval over "
                   "tasks, from the seeds' EVALS folders (eval, or the a1jax.eval outputs of "
                   "more tasks: docs/recipe.md), and over two seeds or more their mean gain with "
                   "a Student-t interval over the seeds")
    p.add_argument("--sft-seed", type=int, default=None, metavar="N",
                   help="the seed whose folder holds the SFT model every other seed links "
                   "(default: the first of --seeds); a seed added to a finished study: "
                   "--seeds 3 --sft-seed 0")
    p.add_argument("--only", default="", metavar="PART[,PART]",
                   help="run only these parts of each seed (`a1jax.recipe --only`, evaluated "
                   "the same way) and write no table: a study done a part at a time")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    workdir = os.path.abspath(args.workdir)
    if args.gains:
        text = gains_table(workdir, seeds, args.gains)
        with open(os.path.join(workdir, f"gains-{args.gains}.md"), "w") as f:
            f.write(text)
        print(text)
        return 0
    sft_seed = seeds[0] if args.sft_seed is None else args.sft_seed
    shared = os.path.join(workdir, f"seed-{sft_seed}", "sft_full_domain")
    if sft_seed not in seeds and not os.path.isdir(shared):
        p.error(f"--sft-seed {sft_seed}: {shared} does not exist (train it first: --seeds "
                f"{sft_seed})")
    # The seed that trains the SFT model runs first: the others start from it.
    for seed in sorted(seeds, key=lambda s: s != sft_seed):
        out = os.path.join(workdir, f"seed-{seed}")
        os.makedirs(out, exist_ok=True)
        if seed != sft_seed and not os.path.exists(os.path.join(out, "sft_full_domain")):
            os.symlink(shared, os.path.join(out, "sft_full_domain"))
        cmd = recipe_command(out, seed, args)
        print(f"== seed {seed}: {' '.join(cmd[1:])}", flush=True)
        if args.only:
            subprocess.run(cmd + ["--only", args.only], cwd=REPO, check=True)
            continue
        if args.parallel_teachers > 1:
            subprocess.run(cmd + ["--only", "sft_full_domain"], cwd=REPO, check=True)
            teachers(cmd, out, args.parallel_teachers)
        subprocess.run(cmd, cwd=REPO, check=True)
        if not os.path.exists(os.path.join(out, "eval", "opd_multi_teacher", "results.json")):
            print(f"seed {seed} stopped before its last evaluation (a signal); rerun the same "
                  "command to resume it", flush=True)
            return 1
    if args.only:
        return 0
    text = (f"Held-out success (task seed offset 0, {args.eval_n} tasks x {args.eval_runs} runs "
            f"per cell) of one SFT model and, over training seeds {args.seeds}, its GRPO "
            "teachers (each on its own domain) and the student distilled from them: mean "
            "[min, max] over the seeds. `python benchmarks/recipe_study.py --workdir "
            f"{args.workdir} --seeds {args.seeds} --eval-n {args.eval_n} --eval-horizons "
            f"{args.eval_horizons}{' --rollout-eval' if args.rollout_eval else ''}"
            f"{''.join(' --part-set ' + item for item in args.part_set)}`."
            "\n\n"
            + table(workdir, seeds, args.eval_runs)
            + "\nBehind the success rates, on the same episodes (`behaviour` in the script):\n\n"
            + behaviour_table(workdir, seeds))
    if args.rollout_eval:
        for cmd in rollout_evals(workdir, seeds, args):
            print(f"== {' '.join(cmd[1:])}", flush=True)
            subprocess.run(cmd, cwd=REPO, check=True)
        text += ("\nThe same models and tasks at the teachers' rollout sampling (`--rollout-eval`: "
                 + " ".join(rollout_sampling_flags(workdir, seeds[0])) + "):\n\n"
                 + table(workdir, seeds, args.eval_runs, "eval-rollout"))
    with open(os.path.join(workdir, "study.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
