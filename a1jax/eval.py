r"""Evaluate an agent by success rate: episodes on held-out tasks, by domain and horizon.

    python -m a1jax.eval --model HF_DIR|CHECKPOINT --domains kb_search,calculator,files \
        --horizons 1,2,4,8,16 --n 64 --runs 3 --seed 0 --out DIR [--greedy | sampling flags] \
        [--batch 8] [--max-turns 100] [--max-turn-tokens 1024] [--max-context 32768] \
        [--mesh data=2,expert=4] [--tokenizer DIR]
    python -m a1jax.eval --replay ...     # the reference trajectories as the policy: 100%
    python -m a1jax.eval --endpoint http://127.0.0.1:8000/v1 [--served-model NAME] ...
                                          # a served model (launch/serve.sh) as the policy

Tasks are synthetic (`a1jax.data.synth`) with task seeds EVAL_SEED_BASE + seed, never a
training seed (training uses the experiment's small `seed`). Each task runs `--runs` times
(sampling seeds differ per run). Writes DIR/episodes.jsonl (one record per episode, as it
ends: a rerun skips the episodes already there), DIR/results.json, DIR/results.md and
DIR/success_by_horizon.png: per domain and horizon, Avg@runs (mean pass@1 over the runs),
Pass@runs (solved in any run), Best@1 (the best run's rate), `reference` (the share of the
tasks their reference solutions solve within the same budgets: below 1, a cell is capped for a
model that imitates them, and a warning says so before any episode runs), how episodes ended
(finished / truncated / aborted), and the mean turns, tool calls, malformed calls and assistant
tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from a1jax import cli, devices
from a1jax.data.synth import EVAL_SEED_BASE
from a1jax.errors import A1Error

def eval_seed(seed: int) -> int:
    return EVAL_SEED_BASE + seed


def summarize(records: list[dict[str, Any]], runs: int) -> list[dict[str, Any]]:
    """One row per (domain, horizon) from episode records (`Episode.record()`)."""
    cells: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in records:
        cells[(r["domain"], r["metadata"]["horizon"])].append(r)
    rows = []
    for (domain, horizon), recs in sorted(cells.items()):
        by_run: dict[int, list[float]] = defaultdict(list)
        by_task: dict[int, float] = defaultdict(float)
        for r in recs:
            reward = r["metadata"]["episode"]["reward"]
            by_run[r["metadata"]["run"]].append(reward)
            by_task[r["metadata"]["index"]] = max(by_task[r["metadata"]["index"]], reward)
        rates = [float(np.mean(v)) for _, v in sorted(by_run.items())]
        eps = [r["metadata"]["episode"] for r in recs]
        mean = lambda key: float(np.mean([e[key] for e in eps]))
        rows.append({
            "domain": domain, "horizon": horizon, "tasks": len(by_task), "episodes": len(recs),
            f"avg@{runs}": float(np.mean(rates)), f"pass@{runs}": float(np.mean(
                list(by_task.values()))), "best@1": max(rates),
            **{s: sum(e["status"] == s for e in eps) / len(eps)
               for s in ("finished", "truncated", "aborted")},
            "turns": mean("turns"), "tool_calls": mean("tool_calls"),
            "malformed_calls": mean("malformed_calls"),
            "assistant_tokens": mean("assistant_tokens")})
    return rows


def markdown(rows: list[dict[str, Any]], runs: int, header: str = "") -> str:
    cols = ["domain", "horizon", f"avg@{runs}", f"pass@{runs}", "best@1"]
    cols += ["reference"] if rows and "reference" in rows[0] else []
    cols += ["finished", "truncated", "aborted", "turns", "tool_calls", "malformed_calls",
             "assistant_tokens"]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ([header, ""] if header else []) + [
        "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(row[c]) for c in cols) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], runs: int, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for domain in sorted({r["domain"] for r in rows}):
        mine = [r for r in rows if r["domain"] == domain]
        ax.plot([r["horizon"] for r in mine], [r[f"avg@{runs}"] for r in mine], marker="o",
                label=domain)
    ax.set_xscale("log", base=2)
    horizons = sorted({r["horizon"] for r in rows})
    ax.set_xticks(horizons, [str(h) for h in horizons])
    ax.set_xlabel("evaluation horizon (tool steps)")
    ax.set_ylabel(f"success (avg@{runs})")
    ax.set_ylim(-0.05, 1.05)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def success_during_training(engine, tokenizer, settings: dict[str, Any], seed: int
                            ) -> dict[str, float]:
    """One greedy run of `settings` (experiment.agent_eval_settings) with the engine's current
    parameters: {"success": overall, "success/DOMAIN/hH": per cell, "finished": fraction}."""
    from a1jax.agent.environment import make_task
    from a1jax.agent.episode import Budgets, EnginePolicy, Renderer, run_episodes
    from a1jax.data.chat_template import template_for
    from a1jax.generate import default_stop_tokens
    from a1jax.infer.sampling import SamplingParams

    renderer = Renderer(tokenizer, template_for(tokenizer))
    budgets = Budgets(max_turns=settings["max_turns"],
                      max_turn_tokens=settings["max_turn_tokens"],
                      max_context=settings["max_context"])
    sampling = SamplingParams(temperature=0.0, max_new_tokens=settings["max_turn_tokens"],
                              stop_tokens=tuple(default_stop_tokens(engine.config, tokenizer)))
    tasks = [make_task(d, h, eval_seed(seed), i) for d in settings["domains"]
             for h in settings["horizons"] for i in range(settings["n"])]
    episodes = run_episodes(tasks, EnginePolicy(engine, sampling), renderer,
                            slots=engine.batch, budgets=budgets)
    rows = summarize([e.record() for e in episodes], runs=1)
    out = {"success": float(np.mean([e.reward for e in episodes])),
           "finished": float(np.mean([e.status == "finished" for e in episodes])),
           "assistant_tokens": float(np.mean([e.assistant_tokens for e in episodes]))}
    out.update({f"success/{r['domain']}/h{r['horizon']}": r["avg@1"] for r in rows})
    return out


def read_episodes(path: str) -> list[dict[str, Any]]:
    """The records of an episodes.jsonl written as episodes ended (none if it does not exist).
    A last line cut short by a kill is dropped from the file: that episode runs again."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    records = []
    for k, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if k < len(lines) - 1:
                raise A1Error(f"{path}: line {k + 1} is not JSON") from None
            print(f"{path}: its last line was cut short (an interrupted write); dropped")
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.writelines(lines[:-1])
            os.replace(path + ".tmp", path)
            return records
    if lines and not lines[-1].endswith("\n"):  # whole, but cut before its newline
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n")
    return records


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise A1Error(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise A1Error(f"{flag}: expected positive integers, got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    from a1jax.generate import add_sampling_args, sampling_from_args

    parser = argparse.ArgumentParser(prog="python -m a1jax.eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    policy = parser.add_mutually_exclusive_group(required=True)
    policy.add_argument("--model", help="Hugging Face directory or a1jax checkpoint")
    policy.add_argument("--replay", action="store_true",
                        help="replay the reference trajectories (checks the harness: 100%%)")
    policy.add_argument("--endpoint", help="an OpenAI-compatible server's base URL, e.g. "
                        "http://127.0.0.1:8000/v1 (launch/serve.sh): chat completions with "
                        "tools=[...] as the policy")
    parser.add_argument("--served-model", help="with --endpoint: the served model's name "
                        "(default: the only one the server serves)")
    parser.add_argument("--request-timeout", type=float, default=600.0,
                        help="with --endpoint: seconds to wait for one reply")
    parser.add_argument("--domains", default="kb_search,calculator,files")
    parser.add_argument("--horizons", default="1,2,4,8,16")
    parser.add_argument("--n", type=int, default=64, help="tasks per domain and horizon")
    parser.add_argument("--runs", type=int, default=3, help="runs per task (Avg@runs)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--tokenizer", help="default: the model's own (with --endpoint: the "
                        "served directory when it is on this machine), else a1jax's")
    parser.add_argument("--batch", type=int, default=8, help="episodes decoded together")
    parser.add_argument("--max-turns", type=int, default=100)
    parser.add_argument("--max-turn-tokens", type=int, default=1024)
    parser.add_argument("--max-response-tokens", type=int, default=32_768)
    parser.add_argument("--max-context", type=int, default=32_768)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--mesh", default="", help="axis sizes, e.g. data=2,expert=4")
    add_sampling_args(parser)
    args = parser.parse_args(argv)
    domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    horizons = _ints(args.horizons, "--horizons")
    if args.n < 1 or args.runs < 1 or args.batch < 1:
        raise A1Error("--n, --runs and --batch must be >= 1")
    mesh_axes = devices.parse_axes(args.mesh)
    devices.simulate_for(mesh_axes)
    from tqdm import tqdm

    from a1jax.agent.environment import ENVIRONMENTS, make_task
    from a1jax.agent.episode import Budgets, EnginePolicy, Renderer, run_episodes
    from a1jax.agent.replay import ReplayPolicy, reference_success
    from a1jax.data.chat_template import template_for
    from a1jax.data.tokenizer import load_tokenizer
    from a1jax.generate import default_stop_tokens

    unknown = [d for d in domains if d not in ENVIRONMENTS]
    if unknown:
        raise A1Error(f"unknown domain {unknown[0]!r}; known: {', '.join(sorted(ENVIRONMENTS))}")
    budgets = Budgets(args.max_turns, args.max_turn_tokens, args.max_response_tokens,
                      args.max_context)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    if args.served_model and not args.endpoint:
        raise A1Error("--served-model goes with --endpoint")
    if args.replay:
        tokenizer = load_tokenizer(args.tokenizer)
    elif args.endpoint:
        from a1jax.agent.endpoint import ChatClient, EndpointPolicy

        client = ChatClient(args.endpoint, timeout=args.request_timeout)
        served = client.resolve_model(args.served_model)
        root = served.get("root")
        local = isinstance(root, str) and os.path.isfile(os.path.join(root, "tokenizer.json"))
        tokenizer = load_tokenizer(args.tokenizer or (root if local else None))
    else:
        from a1jax.infer.engine import Engine
        from a1jax.infer.load import load_model, tokenizer_dir

        tokenizer = load_tokenizer(args.tokenizer or tokenizer_dir(args.model))  # checked first
        config, params = load_model(args.model, args.dtype)
        if len(tokenizer) > config.vocab_size:
            raise A1Error(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary "
                          f"{config.vocab_size}: pass the model's own tokenizer (--tokenizer)")
        spec = devices.mesh_spec(mesh_axes)
        engine = Engine(config, params, batch=args.batch, max_len=args.max_context, spec=spec)
    renderer = Renderer(tokenizer, template_for(tokenizer))

    tasks = [make_task(d, h, eval_seed(args.seed), i) for d in domains for h in horizons
             for i in range(args.n)]
    reference = reference_success(tasks, renderer, budgets, args.batch)
    for (domain, horizon), share in sorted(reference.items()):
        if share < 1:
            print(f"warning: {domain} h{horizon}: the reference solutions solve "
                  f"{round(share * args.n)} of {args.n} tasks within these budgets (--max-context "
                  f"{args.max_context}, --max-turns {args.max_turns}, --max-turn-tokens "
                  f"{args.max_turn_tokens}): a model imitating them is capped at {share:.3f} "
                  "there (the 'reference' column)")
    path = os.path.join(args.out, "episodes.jsonl")
    records = read_episodes(path)
    have = {r["id"] for r in records}
    todo = {run: [t for t in tasks if f"{t.id}-run{run}" not in have] for run in range(args.runs)}
    total = sum(len(v) for v in todo.values())
    if records:
        print(f"resuming: {len(records)} episodes already in {path}, {total} to run")
    bar = tqdm(total=total, desc="episodes", unit="ep", dynamic_ncols=True)
    with open(path, "a", encoding="utf-8") as out:
        def on_done(ep):
            record = ep.record()
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            records.append(record)
            bar.update(1)
            bar.set_postfix(solved=f"{sum(r['metadata']['episode']['reward'] for r in records):.0f}"
                            f"/{len(records)}")

        for run, pending in todo.items():
            if not pending:
                continue
            if args.replay:
                policy = ReplayPolicy(renderer, args.batch)
            elif args.endpoint:
                sampling = sampling_from_args(
                    args, args.max_turn_tokens, default_stop_tokens(None, tokenizer)).replace(
                    seed=args.seed * 1000 + run)
                policy = EndpointPolicy(client, served["id"], renderer, sampling, args.batch)
            else:
                stops = default_stop_tokens(config, tokenizer)
                sampling = sampling_from_args(args, args.max_turn_tokens, stops).replace(
                    seed=args.seed * 1000 + run)
                policy = EnginePolicy(engine, sampling)
            try:
                run_episodes(pending, policy, renderer, slots=args.batch, budgets=budgets,
                             on_done=on_done, run=run)
            except A1Error as e:
                bar.close()
                raise type(e)(f"{e}\n{len(records)} episodes are kept in {path}; the same "
                              f"command resumes from them") from None
    bar.close()
    wanted = {f"{t.id}-run{run}" for t in tasks for run in range(args.runs)}
    records = [r for r in records if r["id"] in wanted]
    resumed = len(records) - total  # the time below is this run's: these took none of it
    rows = [{**row, "reference": reference[(row["domain"], row["horizon"])]}
            for row in summarize(records, args.runs)]
    took = time.perf_counter() - start
    who = ("the replayed references" if args.replay else
           f"{served['id']} served at {args.endpoint}" if args.endpoint else args.model)
    header = (f"Success of {who} on "
              f"held-out tasks (task seed {eval_seed(args.seed)}), {args.n} tasks x {args.runs} "
              f"run(s) per cell; {took:.0f} s" + (
                  f" for the {total} episodes run now ({resumed} resumed)." if resumed else "."))
    cli.write_json(os.path.join(args.out, "results.json"), {
        "model": args.model, "replay": args.replay, "endpoint": args.endpoint,
        "served_model": served["id"] if args.endpoint else None, "seed": args.seed,
        "task_seed": eval_seed(args.seed), "runs": args.runs, "n": args.n,
        "budgets": vars(budgets), "wall_time_s": took, "rows": rows})
    table = markdown(rows, args.runs, header)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    plot(rows, args.runs, os.path.join(args.out, "success_by_horizon.png"))
    print(table)
    print(f"wrote {args.out}/results.json, results.md, success_by_horizon.png, episodes.jsonl")
    return 0


if __name__ == "__main__":
    cli.run(main)
