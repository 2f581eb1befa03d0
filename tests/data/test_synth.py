"""Synthetic long-horizon tool-use tasks: deterministic, verifiable, horizon sets the length."""

import hashlib
import json
import re

import pytest

from a1jax.data import synth
from a1jax.data.schema import validate
from a1jax.data.tokenizer import TrajectoryEncoder, load_tokenizer
from a1jax.errors import A1Error

LONG_HORIZON = {"kb_search": 420, "calculator": 640, "files": 520}


@pytest.fixture(scope="module")
def encoder():
    return TrajectoryEncoder(load_tokenizer())


def test_deterministic_bytes():
    t = synth.make_trajectory("calculator", 3, seed=0, index=0)
    assert t == synth.make_trajectory("calculator", 3, seed=0, index=0)
    assert (t["id"], len(t["messages"]), synth.final_answer(t)) == ("calculator-h3-s0-0", 9, "656")
    assert hashlib.sha256(json.dumps(t).encode()).hexdigest()[:16] == "a4244f250d338ef0"
    assert synth.make_trajectory("calculator", 3, seed=1, index=0) != t


def test_cli_writes_the_same_file_twice(tmp_path, capsys):
    outs = []
    for name in ("a.jsonl", "b.jsonl"):
        assert synth.main(["--domain", "files", "--horizon", "3", "--n", "4", "--seed", "2",
                           "--out", str(tmp_path / name)]) == 0
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1] and outs[0].count(b"\n") == 4
    assert capsys.readouterr().out.splitlines()[0] == (
        f"wrote 4 files trajectories (horizon 3) to {tmp_path / 'a.jsonl'}")


@pytest.mark.parametrize("domain", sorted(synth.DOMAINS))
def test_tasks_are_valid_and_verified_with_failures_and_recoveries(domain):
    trajs = [validate(synth.make_trajectory(domain, 30, seed=3, index=i)) for i in range(3)]
    for t in trajs:
        assert synth.verify(t)
        assistants = [m for m in t["messages"] if m["role"] == "assistant"]
        assert all(m["reasoning_content"] for m in assistants)
        assert all(m.get("tool_calls") for m in assistants[:-1])
        assert assistants[-1]["content"].startswith("Final answer: ")
        tampered = json.loads(json.dumps(t))
        tampered["messages"][-1]["content"] = "Final answer: 12345 wrong"
        assert not synth.verify(tampered)
    results = [m["content"] for t in trajs for m in t["messages"] if m["role"] == "tool"]
    assert any(r.startswith(("error:", "No documents")) for r in results)  # failed calls ...
    if domain == "calculator":  # ... and several calls in one turn
        assert any(len(m.get("tool_calls") or []) == 2 for t in trajs for m in t["messages"])


@pytest.mark.parametrize("domain", sorted(synth.DOMAINS))
def test_horizon_spans_hundreds_to_beyond_64k_tokens(domain, encoder):
    short = len(encoder(validate(synth.make_trajectory(domain, 1, seed=0, index=0))))
    long = len(encoder(validate(synth.make_trajectory(domain, LONG_HORIZON[domain], 0, 0))))
    assert 300 < short < 1000
    assert long > 65536


def test_files_references_add_two_or_more_values_with_the_calculator():
    """The sum in a files report is the calculator's (a copy), not a mental addition
    (runs/recipe11, docs/recipe.md); one even value is copied as it is."""
    seen = set()
    for index in range(40):
        t = synth.make_trajectory("files", 3, seed=0, index=index)
        even = [v for _, v in sorted(t["verifier"]["inbox"].items()) if v % 2 == 0]
        calls = [c["function"] for m in t["messages"] for c in m.get("tool_calls") or []
                 if c["function"]["name"] == "calculator"]
        if len(even) < 2:
            assert calls == []
            continue
        (call,) = calls
        arguments = call["arguments"]
        if isinstance(arguments, str):
            arguments = json.loads(arguments)
        assert arguments == {"expression": " + ".join(map(str, even))}  # in the order read
        result = [m for m in t["messages"] if m["role"] == "tool"][-1]
        assert (result["name"], result["content"]) == ("calculator", str(sum(even)))
        assert synth.final_answer(t) == f"moved={len(even)} sum={sum(even)}"
        seen.add(len(even))
    assert seen == {2, 3}


def test_files_references_count_their_reads_and_list_again_after_a_miscopied_name():
    """Each read says which file of how many it is (the listing's total) before its path; a
    name miscopied (reasoning and call) is followed by its page listed again, as /inbox is
    then, and the read copied from there (runs/recipe14's model retried its wrong path)."""
    t = synth.make_trajectory("files", 25, seed=0, index=1)  # 4 miscopied names, 4 typos
    inbox, msgs = t["verifier"]["inbox"], t["messages"]
    calls = [(m["reasoning_content"], c["function"]["name"], c["function"]["arguments"], k)
             for k, m in enumerate(msgs) for c in m.get("tool_calls") or []]
    args = lambda a: json.loads(a) if isinstance(a, str) else a
    first = [json.loads(msgs[k + 1]["content"]) for _, name, _, k in calls[:2]]
    assert [(len(page["entries"]), page["total"]) for page in first] == [(20, 25), (5, 25)]
    reads = [re.fullmatch(r"Reading file (\d+) of 25: /inbox/(\S+), to check whether its value "
                          r"is even\.", reasoning) for reasoning, name, _, _ in calls
             if name == "read_file" and not reasoning.startswith("Wrong path")]
    assert all(reads)
    done = [(int(m[1]), m[2]) for m in reads if m[2] in inbox]
    assert done == list(enumerate(sorted(inbox), 1))  # every file once, in the listing's order
    miscopied = [(reasoning, args(a)["path"], k) for reasoning, name, a, k in calls
                 if name == "read_file" and args(a)["path"].removeprefix("/inbox/") not in inbox
                 and not reasoning.startswith("Wrong path") and "-" not in args(a)["path"]]
    assert len(miscopied) == 4
    for reasoning, path, k in miscopied:
        assert path in reasoning and msgs[k + 1]["content"] == f"error: {path}: no such file"
        relist = msgs[k + 2]
        (call,) = relist["tool_calls"]
        assert relist["reasoning_content"].startswith("No such file: I miscopied the name.")
        moved = {args(c["function"]["arguments"])["src"] for m in msgs[:k]
                 for c in m.get("tool_calls") or [] if c["function"]["name"] == "move"}
        here = [f"/inbox/{f}" for f in sorted(inbox) if f"/inbox/{f}" not in moved]
        page = args(call["function"]["arguments"])["page"]
        assert json.loads(msgs[k + 3]["content"]) == {
            "entries": here[page * 20:(page + 1) * 20], "more": (page + 1) * 20 < len(here),
            "total": len(here)}
        right = f"/inbox/{sorted(inbox)[int(reasoning.split()[2]) - 1]}"  # "Reading file K"
        assert right in here[page * 20:(page + 1) * 20]
        assert msgs[k + 4]["reasoning_content"] == reasoning.replace(path, right)
        assert args(msgs[k + 4]["tool_calls"][0]["function"]["arguments"]) == {"path": right}


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown domain 'chess'"):
        synth.make_trajectory("chess", 1, 0, 0)
    with pytest.raises(ValueError, match="horizon must be >= 1"):
        synth.make_trajectory("files", 0, 0, 0)


def test_cli_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        synth.main(["--domain", "chess", "--horizon", "1", "--n", "1", "--out", "x"])
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        "error: argument --domain: invalid choice: 'chess' (choose from 'calculator', 'files', "
        "'kb_search') (see python -m a1jax.data.synth --help)\n")
    with pytest.raises(A1Error, match="^cannot write /nonexistent/x.jsonl: No such file"):
        synth.main(["--domain", "files", "--horizon", "1", "--n", "1",
                    "--out", "/nonexistent/x.jsonl"])
