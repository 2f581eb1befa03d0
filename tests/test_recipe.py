"""`python -m a1jax.recipe`: the paper's parts chained (SFT -> a GRPO teacher -> OPD from it),
evaluated, and skipped when finished; configs checked before anything compiles."""

import json
import math
import os
import sys

import pytest

from a1jax import recipe
from a1jax.errors import A1Error
from tests.conftest import benchmark_module

TWO_LAYERS = "model.extra=num_hidden_layers=2,layer_types=null"
ARGS = ["--model", "tiny", "--domains", "kb_search", "--smoke", "--set", TWO_LAYERS,
        "--set", "seq_len=1024",
        "--eval-n", "1", "--eval-runs", "1", "--eval-horizons", "1"]


def test_recipe_runs_in_order_then_skips_what_is_finished(tmp_path, capsys):
    workdir = str(tmp_path / "recipe")
    assert recipe.main(["--workdir", workdir] + ARGS) == 0
    first = capsys.readouterr().out
    parts = ["sft_full_domain", "teacher_grpo_kb_search", "opd_multi_teacher"]
    assert [line.split()[0] for line in first.splitlines()[-3:]] == parts
    for part in parts:
        with open(os.path.join(workdir, part, "summary.json")) as f:
            assert json.load(f)["status"] == "finished"
        assert os.path.exists(os.path.join(workdir, "eval", part, "results.json"))
    with open(os.path.join(workdir, "opd_multi_teacher", "experiment.json")) as f:
        opd = json.load(f)
    assert opd["init_from"] == os.path.join(workdir, "sft_full_domain")
    assert opd["distill"]["teachers"] == "kb_search=" + os.path.join(
        workdir, "teacher_grpo_kb_search")
    with open(os.path.join(workdir, "teacher_grpo_kb_search", "experiment.json")) as f:
        assert json.load(f)["init_from"] == os.path.join(workdir, "sft_full_domain")
    with open(os.path.join(workdir, "results.md")) as f:
        table = f.read()
    assert ("| domain | horizon | SFT avg@1 | teacher avg@1 | OPD student avg@1 | reference |"
            in table)
    assert "| kb_search | 1 | " in table
    from a1jax import plot
    assert [os.path.basename(p) for p in plot.plot(workdir, str(tmp_path / "plots"))] == [
        "loss.png", "expert_load.png", "rl_teacher_grpo_kb_search.png",
        "rl_opd_multi_teacher.png"]

    assert recipe.main(["--workdir", workdir] + ARGS) == 0
    again = capsys.readouterr().out
    for part in parts:
        assert f"{part}: already finished in {os.path.join(workdir, part)}" in again
    assert again.count("resuming: 1 episodes already in") == 3

    # --only: that part alone (its SFT start has finished), and no comparison table
    os.remove(os.path.join(workdir, "results.md"))
    assert recipe.main(["--workdir", workdir, "--only", "teacher_grpo_kb_search"] + ARGS) == 0
    alone = capsys.readouterr().out
    assert [line for line in alone.splitlines() if line.startswith("== ")] == [
        f"== teacher_grpo_kb_search ({os.path.join(workdir, 'teacher_grpo_kb_search')})"]
    assert alone.count("resuming: 1 episodes already in") == 1
    assert not os.path.exists(os.path.join(workdir, "results.md"))


def test_comparison_shows_the_lowest_reference_of_a_cell():
    row = lambda domain, avg, ref: {"domain": domain, "horizon": 3, "avg@3": avg,  # noqa: E731
                                    "reference": ref}
    table = recipe.comparison({
        "sft_full_domain": [row("files", 0.25, 1.0), row("kb_search", 0.0, 0.5)],
        "teacher_grpo_files": [row("files", 0.5, 0.75)],
        "opd_multi_teacher": [row("files", 0.375, 1.0), row("kb_search", 0.125, 0.5)]}, runs=3)
    assert table.splitlines()[2:] == ["| files | 3 | 0.250 | 0.500 | 0.375 | 0.750 |",
                                      "| kb_search | 3 | 0.000 | - | 0.125 | 0.500 |"]


def test_recipe_errors(tmp_path):
    with pytest.raises(A1Error) as e:
        recipe.main(["--workdir", str(tmp_path), "--domains", "kb_search,web"])
    assert str(e.value) == "--domains 'kb_search,web'; known: kb_search, calculator, files"
    with pytest.raises(A1Error) as e:
        recipe.main(["--workdir", str(tmp_path), "--smoke", "--set", "distill.top_k=0"])
    assert str(e.value) == "distill.top_k must be in [1, 4096] (the vocabulary), got 0"
    with pytest.raises(A1Error) as e:
        recipe.main(["--workdir", str(tmp_path), "--part-set", "teacher:steps=3"])
    assert str(e.value) == ("--part-set 'teacher:steps=3': expected PART:KEY=VALUE with PART one "
                            "of opd_multi_teacher, sft_full_domain, teacher_grpo, "
                            "teacher_grpo_calculator, teacher_grpo_files, teacher_grpo_kb_search")
    with pytest.raises(A1Error) as e:
        recipe.main(["--workdir", str(tmp_path), "--only", "teacher_grpo_web"])
    assert str(e.value) == ("--only 'teacher_grpo_web': expected parts among sft_full_domain, "
                            "teacher_grpo_kb_search, teacher_grpo_calculator, "
                            "teacher_grpo_files, opd_multi_teacher")
    os.makedirs(tmp_path / "teacher_grpo_files")
    with open(tmp_path / "teacher_grpo_files" / "summary.json", "w") as f:
        json.dump({"status": "finished"}, f)
    with pytest.raises(A1Error) as e:
        recipe.main(["--workdir", str(tmp_path), "--domains", "files,calculator", "--only",
                     "opd_multi_teacher"])
    assert str(e.value) == ("--only opd_multi_teacher: first finish what it starts from: "
                            "sft_full_domain, teacher_grpo_calculator")
    parts = recipe.configs("tiny", str(tmp_path), domains=["kb_search", "files"], part_sets=[
        "teacher_grpo:steps=7", "teacher_grpo_files:rl.group_size=2", "sft_full_domain:steps=9"])
    assert [(c.stage, c.steps, c.rl.group_size) for c in parts] == [
        ("sft_full_domain", 9, 4), ("teacher_grpo_kb_search", 7, 4),
        ("teacher_grpo_files", 7, 2), ("opd_multi_teacher", 20, 4)]
    # A part may be named with what it starts from: that runs first, in the recipe's order.
    chosen = recipe.selected(parts, "teacher_grpo_kb_search,sft_full_domain", str(tmp_path))
    assert [c.stage for c in chosen] == ["sft_full_domain", "teacher_grpo_kb_search"]
    with pytest.raises(A1Error) as e:
        recipe.selected(parts, "teacher_grpo_kb_search,opd_multi_teacher", str(tmp_path))
    assert str(e.value) == ("--only teacher_grpo_kb_search: first finish what it starts from: "
                            "sft_full_domain")


def test_study_starts_the_next_teacher_when_any_finishes(tmp_path):
    """benchmarks/recipe_study.py's `teachers`, two at a time: files starts when calculator's
    short run ends, not when the first started (kb_search) does; a failed one is named."""
    study = benchmark_module("recipe_study")
    script = ("import sys, time; part = sys.argv[-1]; "
              "time.sleep({'teacher_grpo_kb_search': 5.0}.get(part, 0.2)); "
              "print(part, time.time()); sys.exit(part.endswith('files'))")
    with pytest.raises(SystemExit) as e:
        study.teachers([sys.executable, "-c", script], str(tmp_path), 2, poll=0.05)
    assert str(e.value) == ("teachers failed: teacher_grpo_files (exit 1); their logs are in "
                            f"{tmp_path}/logs")
    ended = {d: float((tmp_path / "logs" / f"teacher_grpo_{d}.log").read_text().split()[1])
             for d in study.DOMAINS}
    assert ended["calculator"] < ended["files"] < ended["kb_search"]


def test_study_part_sets_win_over_its_own(tmp_path):
    """benchmarks/recipe_study.py --part-set: given after the study's PARTS, so a1jax.recipe
    applies them last (the SFT's steps and start); the seed still reaches the RL parts."""
    study = benchmark_module("recipe_study")
    args = study.argparse.Namespace(
        part_set=["sft_full_domain:steps=300", f"sft_full_domain:init_from={tmp_path}",
                  "teacher_grpo:rl.horizon_min=2"],
        eval_n=16, eval_runs=3, eval_horizons="1,2,3")
    cmd = study.recipe_command(str(tmp_path / "seed-1"), 1, args)
    sets = [cmd[k + 1] for k, a in enumerate(cmd) if a == "--set"]
    part_sets = [cmd[k + 1] for k, a in enumerate(cmd) if a == "--part-set"]
    sft, *teachers, opd = recipe.configs("tiny", str(tmp_path / "seed-1"),
                                         domains=study.DOMAINS, sets=sets, part_sets=part_sets)
    assert (sft.steps, sft.init_from, sft.data.horizon_max) == (300, str(tmp_path), 2)
    assert [(t.rl.horizon_min, t.rl.horizon_max, t.seed) for t in teachers] == [(2, 2, 1)] * 3
    assert (opd.seed, opd.rl.horizon_min) == (1, 1)
    assert cmd[-2:] == ["--eval-horizons", "1,2,3"]


def test_study_only_runs_the_named_parts_of_every_seed(tmp_path, monkeypatch, capsys):
    """benchmarks/recipe_study.py --only: each seed's a1jax.recipe with --only (seed 1 reads seed
    0's SFT through a link), and no table, which needs every part; --sft-seed links a seed added
    later to a finished study's SFT model, and names a missing one."""
    study = benchmark_module("recipe_study")
    ran = []
    monkeypatch.setattr(study.subprocess, "run", lambda cmd, **kw: ran.append(cmd))
    assert study.main(["--workdir", str(tmp_path), "--seeds", "0,1",
                       "--only", "teacher_grpo_files"]) == 0
    assert [(c[c.index("--workdir") + 1], c[-2:]) for c in ran] == [
        (str(tmp_path / f"seed-{s}"), ["--only", "teacher_grpo_files"]) for s in (0, 1)]
    assert os.readlink(tmp_path / "seed-1" / "sft_full_domain") == str(
        tmp_path / "seed-0" / "sft_full_domain")
    assert not (tmp_path / "study.md").exists()
    # A seed added later links the SFT model of the seed --sft-seed names, once that exists.
    later = ["--workdir", str(tmp_path), "--seeds", "3", "--sft-seed", "0", "--only",
             "teacher_grpo_files"]
    with pytest.raises(SystemExit) as e:
        study.main(later)
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f"error: --sft-seed 0: {tmp_path}/seed-0/sft_full_domain does not exist (train it "
        "first: --seeds 0)")
    assert len(ran) == 2 and not (tmp_path / "seed-3").exists()
    (tmp_path / "seed-0" / "sft_full_domain").mkdir(parents=True)
    assert study.main(later) == 0
    assert ran[-1][ran[-1].index("--workdir") + 1] == str(tmp_path / "seed-3")
    assert os.readlink(tmp_path / "seed-3" / "sft_full_domain") == str(
        tmp_path / "seed-0" / "sft_full_domain")
    # Named among later seeds, the SFT seed still runs first.
    study.main(["--workdir", str(tmp_path / "b"), "--seeds", "4,5", "--sft-seed", "5",
                "--only", "teacher_grpo_files"])
    assert [c[c.index("--workdir") + 1] for c in ran[-2:]] == [
        str(tmp_path / "b" / f"seed-{s}") for s in (5, 4)]
    assert os.readlink(tmp_path / "b" / "seed-4" / "sft_full_domain") == str(
        tmp_path / "b" / "seed-5" / "sft_full_domain")


def test_study_table_and_behaviour_show_the_cap_and_skipped_files(tmp_path):
    """benchmarks/recipe_study.py: the table's `reference` is the lowest over every evaluation
    of the cell; `behaviour` counts files episodes that read every listed file, and rescores them
    under `Files.verify`: a task whose files are all odd, answered right with one left unread, is
    not solved; and it scores the tasks with two or more even files (a sum) on their own."""
    from a1jax.data import schema, synth

    study = benchmark_module("recipe_study")

    def results(stage, seed, avg, ref):
        os.makedirs(tmp_path / f"seed-{seed}" / "eval" / stage)
        with open(tmp_path / f"seed-{seed}" / "eval" / stage / "results.json", "w") as f:
            json.dump({"runs": 3, "rows": [{"domain": "files", "horizon": 3, "avg@3": avg,
                                            "reference": ref}]}, f)

    results("sft_full_domain", 0, 0.25, 1.0)
    for seed, teacher, student, ref in [(0, 0.5, 0.375, 1.0), (1, 0.75, 0.5, 0.8125)]:
        results("teacher_grpo_files", seed, teacher, ref)
        results("opd_multi_teacher", seed, student, 1.0)
    assert study.table(str(tmp_path), [0, 1], 3).splitlines()[2] == (
        "| files | 3 | 0.250 | 0.625 [0.500, 0.750] | 0.438 [0.375, 0.500] | 0.812 |")

    traj = schema.validate(synth.make_trajectory("files", 3, synth.EVAL_SEED_BASE, 0))
    last = "/inbox/" + sorted(traj["verifier"]["inbox"])[-1]
    skipped, drop = [], False
    for m in traj["messages"]:  # the last file's read (and its answer) left out
        calls = m.get("tool_calls") or []
        if drop and m["role"] == "tool":
            drop = False
            continue
        if any(c["function"]["name"] == "read_file" and c["function"]["arguments"]["path"] == last
               for c in calls):
            drop = True
            continue
        skipped.append(m)
    meta = {"horizon": 3, "seed": synth.EVAL_SEED_BASE, "index": 0,
            "episode": {"status": "finished"}}
    # Two tasks with two even files each: one solved, one with a wrong sum.
    summed = [schema.validate(synth.make_trajectory("files", 3, synth.EVAL_SEED_BASE, i))
              for i in (1, 4)]
    assert [sum(v % 2 == 0 for v in t["verifier"]["inbox"].values()) for t in summed] == [2, 2]
    summed[1]["messages"][-1]["content"] += "1"  # sum=N -> sum=N1
    call = next(c["function"] for m in summed[1]["messages"] for c in m.get("tool_calls") or []
                if c["function"]["name"] == "calculator")
    call["arguments"]["expression"] = call["arguments"]["expression"].replace(" + ", " + 1", 1)
    with open(tmp_path / "episodes.jsonl", "w") as f:
        for messages, t, i in [(traj["messages"], traj, 0), (skipped, traj, 0),
                               (summed[0]["messages"], summed[0], 1),
                               (summed[1]["messages"], summed[1], 4)]:
            f.write(json.dumps({"domain": "files", "messages": messages,
                                "verifier": t["verifier"], "metadata": {**meta, "index": i}})
                    + "\n")
    assert all(v % 2 for v in traj["verifier"]["inbox"].values())
    assert skipped[-1] == traj["messages"][-1]  # the same right report
    got = study.behaviour(str(tmp_path / "episodes.jsonl"))
    assert got["files: read every listed file"] == 0.75
    assert got["files: solved, reads and moves checked"] == 0.5
    assert got["files: solved, of tasks with 2+ even files (a sum)"] == 0.5
    # Both sums call the calculator; the second sends a miscopied value and miscopies the result.
    assert got["files: a sum's last calculator call adds exactly the even values"] == 0.5
    assert got["files: a sum's report copies that call's result"] == 0.5
    # A model that never calls the calculator on a sum still has the rows (nan), so the
    # behaviour table, which reads every model by the SFT model's row names, does not fail.
    plain = [m for m in summed[0]["messages"] if m["role"] != "tool" and not any(
        c["function"]["name"] == "calculator" for c in m.get("tool_calls") or [])]
    with open(tmp_path / "no-calculator.jsonl", "w") as f:
        f.write(json.dumps({"domain": "files", "messages": plain, "verifier":
                            summed[0]["verifier"], "metadata": {**meta, "index": 1}}) + "\n")
    got = study.behaviour(str(tmp_path / "no-calculator.jsonl"))
    assert got["files: solved, of tasks with 2+ even files (a sum)"] == 1.0  # the sum right
    assert math.isnan(got["files: a sum's last calculator call adds exactly the even values"])
    assert math.isnan(got["files: a sum's report copies that call's result"])
    assert got["files: read a miscopied name"] == 0.0
    assert math.isnan(got["files: listed /inbox again after a miscopied name"])
    # A read of a miscopied name with synth's recovery (its page listed again), one without,
    # and one with a '-' for the '_' (a typo synth recovers from by reading again: not counted).
    recovered = next(t for t in (synth.make_trajectory("files", 3, synth.EVAL_SEED_BASE, i)
                                 for i in range(50))
                     if any("miscopied" in (m.get("reasoning_content") or "")
                            for m in t["messages"]))
    looped, dashed = json.loads(json.dumps(traj)), json.loads(json.dumps(traj))
    k = next(k for k, m in enumerate(traj["messages"]) for c in m.get("tool_calls") or []
             if c["function"]["arguments"].get("path") == last)  # a right read
    for t, path in [(looped, last.replace("_", "_1")), (dashed, last.replace("_", "-"))]:
        t["messages"][k]["tool_calls"][0]["function"]["arguments"]["path"] = path
    with open(tmp_path / "misread.jsonl", "w") as f:
        for t in (recovered, looped, dashed):
            meta_t = {**meta, "index": int(t["id"].split("-")[-1])}
            f.write(json.dumps({"domain": "files", "messages": t["messages"],
                                "verifier": t["verifier"], "metadata": meta_t}) + "\n")
    got = study.behaviour(str(tmp_path / "misread.jsonl"))
    assert got["files: read a miscopied name"] == 2 / 3
    assert got["files: listed /inbox again after a miscopied name"] == 0.5


def test_study_behaviour_counts_miscopied_and_repeated_searches(tmp_path):
    """benchmarks/recipe_study.py's kb_search behaviour: a search for a name that neither the
    task nor an earlier observation holds is miscopied (synth's own misspelt search counts), and
    searching it again after it matched nothing is a repeat, searching the mentor of the person
    asked about is one link past the chain; a clean reference is none of these. For
    calculator, the reference applies the task's operations and a call with another line's
    number does not."""
    from a1jax.data import schema, synth

    study = benchmark_module("recipe_study")
    clean, misspelt = (schema.validate(synth.make_trajectory("kb_search", 2,
                                                              synth.EVAL_SEED_BASE, i))
                       for i in (3, 1))
    failed = next(i for i, m in enumerate(misspelt["messages"])
                  if m["role"] == "tool" and m["content"].startswith("No documents match"))
    looped = misspelt["messages"][:failed + 1] + misspelt["messages"][failed - 1:]
    kb, reached = clean["verifier"]["kb"], clean["verifier"]["start"]
    for _ in range(clean["verifier"]["hops"]):
        reached = kb[reached]["mentor"]
    past = json.loads(json.dumps(clean["messages"][-3:-1]))  # the last search and its result
    past[0]["tool_calls"][0]["function"]["arguments"] = {"query": kb[reached]["mentor"]}
    past[1]["content"] = f"No documents match '{kb[reached]['mentor']}'."
    overshot = clean["messages"][:-1] + past + clean["messages"][-1:]
    with open(tmp_path / "episodes.jsonl", "w") as f:
        for t, messages in [(clean, clean["messages"]), (misspelt, misspelt["messages"]),
                            (misspelt, looped), (misspelt, looped), (clean, overshot)]:
            f.write(json.dumps({"domain": "kb_search", "messages": messages,
                                "verifier": t["verifier"]}) + "\n")
        calc = schema.validate(synth.make_trajectory("calculator", 3, synth.EVAL_SEED_BASE, 0))
        (first, n), (_, m) = calc["verifier"]["ops"][:2]
        assert n != m
        wrong = json.loads(json.dumps(calc["messages"]))
        call = [c for x in wrong for c in x.get("tool_calls") or ()][1]["function"]
        call["arguments"]["expression"] = call["arguments"]["expression"].replace(f" {m})",
                                                                                  f" {n})")
        for messages in (calc["messages"], wrong):
            f.write(json.dumps({"domain": "calculator", "messages": messages,
                                "verifier": calc["verifier"]}) + "\n")
    assert wrong != calc["messages"] and first in study.OPERATORS
    got = study.behaviour(str(tmp_path / "episodes.jsonl"))
    assert got == {"calculator: first call's operator right": 1.0,
                   "calculator: applied the task's operations, in order": 0.5,
                   "kb_search: searched the start person": 1.0,
                   "kb_search: searched a name no text held": 0.6,
                   "kb_search: repeated a search that matched nothing": 0.4,
                   "kb_search: searched one link past the chain": 0.2}


def test_study_rollout_eval_commands_and_table(tmp_path):
    """benchmarks/recipe_study.py --rollout-eval: each model once (the SFT model in the first
    seed only), at the seed's teachers' own rollout sampling (a key their experiment.json lacks:
    its default), with the budgets a1jax.recipe evaluates every part under (the last part's),
    into eval-rollout/; the table reads that folder."""
    import argparse

    from experiments.paper import teacher_grpo

    study = benchmark_module("recipe_study")
    args = argparse.Namespace(eval_horizons="1,2,3", eval_n=16, eval_runs=3)
    for seed in (0, 1):
        for part in ["sft_full_domain"] * (seed == 0) + [
                f"teacher_grpo_{d}" for d in study.DOMAINS] + ["opd_multi_teacher"]:
            os.makedirs(tmp_path / f"seed-{seed}" / part)
            with open(tmp_path / f"seed-{seed}" / part / "experiment.json", "w") as f:
                last = part == "opd_multi_teacher"
                sampling = {"temperature": 0.85, "top_k": 20, "presence_penalty": 1.1} \
                    if seed else {"temperature": 1.0}  # seed 0's predate the other keys
                json.dump({"rl": {"max_turns": 12 if last else 8,
                                  "max_turn_tokens": 256 + seed, **sampling},
                           "seq_len": 1536}, f)
    cmds = study.rollout_evals(str(tmp_path), [0, 1], args)
    assert {c[c.index("--max-turns") + 1] for c in cmds} == {"12"}
    assert [(c[c.index("--model") + 1], c[c.index("--domains") + 1]) for c in cmds] == [
        (str(tmp_path / f"seed-{s}" / p), d) for s, p, d in
        [(0, "sft_full_domain", "kb_search,calculator,files"),
         (0, "teacher_grpo_kb_search", "kb_search"), (0, "teacher_grpo_calculator", "calculator"),
         (0, "teacher_grpo_files", "files"),
         (0, "opd_multi_teacher", "kb_search,calculator,files"),
         (1, "teacher_grpo_kb_search", "kb_search"), (1, "teacher_grpo_calculator", "calculator"),
         (1, "teacher_grpo_files", "files"),
         (1, "opd_multi_teacher", "kb_search,calculator,files")]]
    assert cmds[-1][1:] == [
        "-m", "a1jax.eval", "--model", str(tmp_path / "seed-1" / "opd_multi_teacher"),
        "--out", str(tmp_path / "seed-1" / "eval-rollout" / "opd_multi_teacher"),
        "--domains", "kb_search,calculator,files", "--horizons", "1,2,3", "--n", "16",
        "--runs", "3", "--seed", "0", "--max-turns", "12", "--max-turn-tokens", "257",
        "--max-context", "1536", "--temperature", "0.85", "--top-p", "1.0", "--top-k", "20",
        "--min-p", "0.0", "--presence-penalty", "1.1", "--repetition-penalty", "1.0"]
    rl = teacher_grpo.get_config("model=tiny").rl
    assert cmds[0][cmds[0].index("--temperature"):] == [
        "--temperature", str(rl.temperature), "--top-p", str(rl.top_p), "--top-k", str(rl.top_k),
        "--min-p", str(rl.min_p), "--presence-penalty", str(rl.presence_penalty),
        "--repetition-penalty", str(rl.repetition_penalty)]

    for seed, stage, avg in [(0, "sft_full_domain", 0.25), (0, "teacher_grpo_files", 0.5),
                             (0, "opd_multi_teacher", 0.375)]:
        path = tmp_path / f"seed-{seed}" / "eval-rollout" / stage
        os.makedirs(path)
        with open(path / "results.json", "w") as f:
            json.dump({"runs": 3, "rows": [{"domain": "files", "horizon": 3, "avg@3": avg,
                                            "reference": 1.0}]}, f)
    assert study.table(str(tmp_path), [0], 3, "eval-rollout").splitlines()[2] == (
        "| files | 3 | 0.250 | 0.500 | 0.375 | 1.000 |")


def test_study_gains_pair_tasks_and_bound_the_difference(tmp_path):
    """benchmarks/recipe_study.py --gains: each model against the SFT model on the tasks both
    were evaluated on (each task's mean over its runs, every horizon weighing by its tasks), with
    a paired bootstrap interval over tasks: a difference the same on every task has an interval
    of that width 0; one on a single task of four spans zero."""
    study = benchmark_module("recipe_study")

    def write(part, rewards, seed=0, root=tmp_path):  # {(domain, horizon, index): [rewards]}
        path = root / f"seed-{seed}" / "eval-64" / part
        os.makedirs(path)
        with open(path / "episodes.jsonl", "w") as f:
            for (domain, horizon, index), runs in rewards.items():
                for run, reward in enumerate(runs):
                    f.write(json.dumps({"id": f"{domain}-h{horizon}-{index}-run{run}",
                                        "domain": domain, "metadata": {
                                            "horizon": horizon, "index": index, "run": run,
                                            "episode": {"reward": reward}}}) + "\n")

    sft = {(d, h, i): [0.0, 1.0, 0.0] for d in study.DOMAINS for h in (1, 2) for i in (0, 1)}
    sft[("files", 3, 0)] = [0.0] * 3  # evaluated for the SFT model only: not compared
    write("sft_full_domain", sft)
    for d in study.DOMAINS:  # every teacher solves one more run of every task
        write(f"teacher_grpo_{d}", {k: [1.0, 1.0, 0.0] for k in sft if k[0] == d and k[1] < 3})
    student = {k: v for k, v in sft.items() if k[1] < 3}
    student[("files", 2, 1)] = [1.0, 1.0, 1.0]  # one task of four solved in every run
    write("opd_multi_teacher", student)

    base = study.task_success(str(tmp_path / "seed-0" / "eval-64" / "sft_full_domain"
                                  / "episodes.jsonl"))
    assert base[("files", 3, 0)] == 0.0 and base[("kb_search", 1, 0)] == pytest.approx(1 / 3)
    assert study.main(["--workdir", str(tmp_path), "--seeds", "0", "--gains", "eval-64"]) == 0
    text = (tmp_path / "gains-eval-64.md").read_text().splitlines()
    assert text[2:5] == [
        f"| teacher_grpo_{d} | 0 | {d} | 4 | 0.333 | 0.667 | +0.333 [+0.333, +0.333] |"
        for d in study.DOMAINS]
    assert text[5:7] == [f"| opd_multi_teacher | 0 | {d} | 4 | 0.333 | 0.333 | +0.000 "
                         "[+0.000, +0.000] |" for d in ("kb_search", "calculator")]
    assert text[7].startswith("| opd_multi_teacher | 0 | files | 4 | 0.333 | 0.500 | +0.167 [")
    lo, hi = (float(x) for x in text[7].split("[")[1].rstrip("] |").split(", "))
    assert lo <= 0.0 < 0.167 < hi
    missing = tmp_path / "seed-1" / "eval-64" / "teacher_grpo_kb_search"
    with pytest.raises(SystemExit, match=f"^{missing}/episodes.jsonl: no such evaluation "
                       rf"\(a1jax.eval --out {missing}\)$"):
        study.main(["--workdir", str(tmp_path), "--seeds", "0,1", "--gains", "eval-64"])

    # A second training seed: teachers that gain nothing, the same student. Over the seeds, the
    # mean gain and a t interval (t(0.975, 1) = 12.706): the teachers' gains +0.333 and 0 give
    # +0.167 +- 12.706 * 0.236 / sqrt(2); the student's equal gains, a zero-width interval.
    for d in study.DOMAINS:
        write(f"teacher_grpo_{d}", {k: v for k, v in sft.items() if k[0] == d and k[1] < 3},
              seed=1)
    write("opd_multi_teacher", student, seed=1)
    assert study.main(["--workdir", str(tmp_path), "--seeds", "0,1", "--gains", "eval-64"]) == 0
    text = (tmp_path / "gains-eval-64.md").read_text().splitlines()
    assert text[8:14] == [f"| teacher_grpo_{d} | 1 | {d} | 4 | 0.333 | 0.333 | +0.000 "
                          "[+0.000, +0.000] |" for d in study.DOMAINS] + [
        row.replace("| 0 |", "| 1 |", 1) for row in text[5:8]]
    assert text[14:] == [
        "", "Over training seeds 0,1 (each seed's gain as above; mean and 95% Student-t interval "
        "over the seeds):", "", "| model | domain | gain per seed | mean gain [95% over seeds] |",
        "|---|---|---|---|"] + [
        f"| teacher_grpo_{d} | {d} | +0.333, +0.000 | +0.167 [-1.951, +2.284] |"
        for d in study.DOMAINS] + [
        f"| opd_multi_teacher | {d} | +0.000, +0.000 | +0.000 [+0.000, +0.000] |"
        for d in ("kb_search", "calculator")] + [
        "| opd_multi_teacher | files | +0.167, +0.167 | +0.167 [+0.167, +0.167] |"]

    # A study of one teacher (`--only teacher_grpo_files`): the parts evaluated on no seed are
    # left out; with none evaluated, an error names where it looked.
    one = tmp_path / "files-only"
    write("sft_full_domain", sft, root=one)
    with pytest.raises(SystemExit, match=rf"^{one}: no teacher or student evaluated in "
                       r"seed-\{0,1\}/eval-64$"):
        study.main(["--workdir", str(one), "--seeds", "0,1", "--gains", "eval-64"])
    for seed in (0, 1):
        write("teacher_grpo_files", {k: v for k, v in student.items() if k[0] == "files"},
              seed=seed, root=one)
    assert study.main(["--workdir", str(one), "--seeds", "0,1", "--gains", "eval-64"]) == 0
    assert (one / "gains-eval-64.md").read_text().splitlines() == [
        text[0], text[1], text[7].replace("opd_multi_teacher", "teacher_grpo_files"),
        text[13].replace("opd_multi_teacher", "teacher_grpo_files"), *text[14:19],
        text[-1].replace("opd_multi_teacher", "teacher_grpo_files")]
