"""The synthetic domains as environments: replaying synth's calls reproduces synth's observations
byte for byte, the worlds answer calls synth never made, and bad calls become error observations."""

import dataclasses
import json
import re

import pytest

from a1jax.agent.domains import PAGE, recorded_calls
from a1jax.agent.environment import (ENVIRONMENTS, Environment, Task, ToolError, ToolResult,
                                     function_tool, make_environment, make_task)
from a1jax.data import synth
from a1jax.errors import A1Error


def started(domain: str, horizon: int = 3, index: int = 0) -> tuple[Environment, Task]:
    task = make_task(domain, horizon, seed=0, index=index)
    env = make_environment(domain)
    env.reset(task)
    return env, task


def call(env: Environment, name: str, **arguments) -> ToolResult:
    (result,) = env.step([{"name": name, "arguments": arguments}])
    return result


def turns(reference: dict):
    """(calls as parse_assistant gives them, the tool messages that answer them) per turn."""
    messages = reference["messages"]
    for k, msg in enumerate(messages):
        if msg["role"] == "assistant" and msg.get("tool_calls"):
            calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                     for c in msg["tool_calls"]]
            for c in calls:  # synth writes some as JSON text, as real logs do
                if isinstance(c["arguments"], str):
                    c["arguments"] = json.loads(c["arguments"])
            yield calls, messages[k + 1:k + 1 + len(calls)]


@pytest.mark.parametrize("domain", sorted(synth.DOMAINS))
@pytest.mark.parametrize("horizon", [1, 2, 5, 8, 25])  # 25: files' second page, listed again
def test_replaying_the_reference_gives_its_observations(domain, horizon):
    for index in range(4):
        env, task = started(domain, horizon, index)
        assert task.messages == task.reference["messages"][:2]
        assert [m["role"] for m in task.messages] == ["system", "user"]
        assert env.tools == task.tools
        steps = 0
        for calls, answers in turns(task.reference):
            results = env.step(calls)
            assert [(r.name, r.content) for r in results] == [
                (m["name"], m["content"]) for m in answers]
            assert [r.error for r in results] == [
                m["content"].startswith("error:") for m in answers]
            steps += len(calls)
        assert steps == sum(1 for m in task.reference["messages"] if m["role"] == "tool")
        final = task.reference["messages"][-1]["content"]
        assert env.verify(final) and env.verify(f"I checked twice.\n{final}")
        assert not env.verify("Final answer: certainly not this")
        assert not env.verify(final.replace("Final answer:", "Answer:"))


def test_reset_starts_over():
    env, task = started("files", 4)
    for calls, _ in turns(task.reference):
        env.step(calls)
    env.reset(task)  # the same replay again, from the untouched inbox
    for calls, answers in turns(task.reference):
        assert [r.content for r in env.step(calls)] == [m["content"] for m in answers]
    assert task.verifier == synth.make_trajectory("files", 4, 0, 0)["verifier"]


def recorded_hit(task: Task, person: str) -> str:
    """The line about `person` in the reference's search for them."""
    (content,) = [c for n, a, c in recorded_calls(task.reference)
                  if n == "search" and a["query"] == person]
    (line,) = [line for line in content.splitlines() if f"] {person}: " in line]
    return line


def test_kb_search_answers_unrecorded_calls_from_the_world():
    env, task = started("kb_search", 5)
    kb = task.verifier["kb"]
    for person in kb:
        line = recorded_hit(task, person)
        assert call(env, "search", query=f"  {person}\n") == ToolResult("search", line)
        # The employer precedes the city and the mentor, which it marks as this person's.
        doc, employer = re.fullmatch(
            rf"\[(doc-\d+)\] {person}: works at ([^;]+); lives in {kb[person]['city']}; "
            rf"mentor: {kb[person]['mentor']}\.", line).groups()
        assert call(env, "open_document", doc_id=doc).content == (
            f"{person} ({kb[person]['city']}). Employer: {employer}. "
            f"Mentor: {kb[person]['mentor']}.")
    # A distractor is in the world too; its hit names no employer, so its document does not.
    hits = call(env, "search", query=task.verifier["start"]).content.splitlines()
    other = next(h for h in hits if "works at" not in h)
    doc, name, city, mentor = re.fullmatch(
        r"\[(doc-\d+)\] (.+): lives in (.+); mentor: (.+)\.", other).groups()
    assert call(env, "search", query=name).content == other
    assert call(env, "open_document", doc_id=doc).content == f"{name} ({city}). Mentor: {mentor}."
    assert call(env, "search", query="Nobody Atall") == ToolResult(
        "search", "No documents match 'Nobody Atall'.")
    assert call(env, "open_document", doc_id="doc-x") == ToolResult(
        "open_document", "error: doc-x: no such document", error=True)


def test_kb_search_without_a_reference_answers_from_the_verifier_kb():
    task = make_task("kb_search", 3, seed=0, index=1)
    env = make_environment("kb_search")
    env.reset(dataclasses.replace(task, reference=None))
    person = task.verifier["start"]
    for _ in range(3):
        facts = task.verifier["kb"][person]
        line = call(env, "search", query=person).content
        assert line.endswith(f"] {person}: lives in {facts['city']}; mentor: {facts['mentor']}.")
        assert call(env, "open_document", doc_id=line[1:line.index("]")]).content == (
            f"{person} ({facts['city']}). Mentor: {facts['mentor']}.")
        person = facts["mentor"]


@pytest.mark.parametrize("expression, content", [
    ("(7 - 10) // 2 % 5", "3"),
    ("-(2 * 3) + 10 % 4", "-4"),
    (" (999983 * 97) % 1000003 ", str(999983 * 97 % 1000003)),
    ("(12 x 5) % 1000003", "error: invalid syntax near 'x'"),
    ("__import__('os')", "error: unsupported expression '__import__('os')'; use integers, "
                         "+ - * // % and parentheses"),
    ("2 ** 3", "error: unsupported expression '2 ** 3'; use integers, + - * // % and parentheses"),
    ("7 // (3 - 3)", "error: division by zero"),
    ("1+" * 5000 + "1", "error: expression too deeply nested"),
    ("9" * 1000, "error: result too large"),
])
def test_calculator(expression, content):
    env, _ = started("calculator")
    assert call(env, "calculator", expression=expression) == ToolResult(
        "calculator", content, error=content.startswith("error:"))


def test_python_runs_only_print_of_an_integer_expression():
    env, _ = started("calculator")
    assert call(env, "python", code="print((2 + 3) * 4)\n") == ToolResult("python", "20\n")
    only = "error: this python tool runs only print(<integer expression>)"
    for code in ("import os", "print(1)\nprint(2)", "print(1, 2)", "exec('1')"):
        assert call(env, "python", code=code) == ToolResult("python", only, error=True)
    assert call(env, "python", code="print(open('/etc/passwd').read())").error


def test_files_state_moves_and_pages():
    env, task = started("files", 25)
    inbox = sorted(task.verifier["inbox"])
    paths = [f"/inbox/{name}" for name in inbox]  # list_dir gives full paths
    first, second = (json.loads(call(env, "list_dir", path="/inbox", page=p).content)
                     for p in (0, 1))
    assert first == {"entries": paths[:PAGE], "more": True, "total": 25}
    assert second == {"entries": paths[PAGE:], "more": False, "total": 25}
    assert len(paths[PAGE:]) == 5
    assert json.loads(call(env, "list_dir", path="/inbox", page=2).content) == {
        "entries": [], "more": False, "total": 25}
    src, name = f"/inbox/{inbox[0]}", inbox[0]
    assert call(env, "move", src=src, dst_dir="/archive").content == (
        f"moved {src} -> /archive/{name}")
    assert call(env, "move", src=src, dst_dir="/archive") == ToolResult(
        "move", f"error: {src}: no such file", error=True)
    assert call(env, "read_file", path=src).content == f"error: {src}: no such file"
    assert call(env, "read_file", path=f"/archive/{name}").content == (
        f"value: {task.verifier['inbox'][name]}")
    assert json.loads(call(env, "list_dir", path="/archive", page=0).content) == {
        "entries": [f"/archive/{name}"], "more": False, "total": 1}
    assert json.loads(call(env, "list_dir", path="/inbox/", page=0).content)["entries"] == (
        paths[1:PAGE + 1])
    assert call(env, "move", src=f"/inbox/{inbox[1]}", dst_dir="/trash") == ToolResult(
        "move", "error: /trash: no such directory", error=True)
    assert call(env, "list_dir", path="/tmp", page=0).content == "error: /tmp: no such directory"


def test_files_verifies_the_moves_and_the_reads_not_only_the_report():
    env, task = started("files", 4)
    inbox = task.verifier["inbox"]
    even = sorted(name for name, v in inbox.items() if v % 2 == 0)
    odd = sorted(name for name, v in inbox.items() if v % 2)
    assert even and odd
    final = f"Final answer: {task.verifier['answer']}"
    assert env.progress() == 0.0
    for name in sorted(inbox)[:-1]:
        call(env, "read_file", path=f"/inbox/{name}")
        call(env, "read_file", path=f"/inbox/{name}")  # a second read adds no progress
    call(env, "read_file", path=f"/inbox/{sorted(inbox)[-1]}".replace("_", "-"))  # no such file
    assert env.progress() == 0.75  # 3 of the 4 files read
    assert not env.verify(final)  # the right report, nothing moved
    for name in even[:-1]:
        call(env, "move", src=f"/inbox/{name}", dst_dir="/archive")
    assert not env.verify(final)  # one even file left behind
    call(env, "move", src=f"/inbox/{even[-1]}", dst_dir="/archive")
    assert not env.verify(final)  # the right world and report, one file never read
    last = sorted(inbox)[-1]
    call(env, "read_file", path=f"/{'archive' if last in even else 'inbox'}/{last}")
    assert env.verify(final) and not env.verify("Final answer: moved=0 sum=0")
    assert env.progress() == 1.0
    call(env, "move", src=f"/inbox/{odd[0]}", dst_dir="/archive")
    assert not env.verify(final)  # an odd file moved too


def test_files_has_the_calculator_for_its_sum():
    env, _ = started("files", 4)
    assert call(env, "calculator", expression="1394 + 5536") == ToolResult("calculator", "6930")
    assert call(env, "calculator", expression="1394 plus 5536") == ToolResult(
        "calculator", "error: invalid syntax near 'plus'", error=True)


@pytest.mark.parametrize("tool_call, content", [
    ({"name": "serch", "arguments": {"query": "x"}},
     "error: unknown tool 'serch'; available: search, open_document"),
    ({"name": "search", "arguments": {}}, "error: search: missing argument 'query'"),
    ({"name": "search", "arguments": {"query": "x", "limit": 3}},
     "error: search: unexpected argument 'limit'"),
    ({"name": "search", "arguments": {"q": "x"}},
     "error: search: missing argument 'query'; unexpected argument 'q'"),
    ({"name": "search", "arguments": {"query": 42}},
     "error: search: argument 'query' must be a string, got 42"),
    ({"name": "search", "arguments": '{"query": '},
     "error: search: arguments must be a JSON object"),
    ({"name": None, "arguments": {}},
     'error: malformed tool call: expected {"name": ..., "arguments": {...}}'),
])
def test_bad_calls_become_error_observations(tool_call, content):
    env, _ = started("kb_search")
    (result,) = env.step([tool_call])
    assert result.error and result.content == content


def test_argument_types_follow_the_schema():
    env, _ = started("files")
    for page, shown in (("two", "'two'"), (True, "True"), (1.0, "1.0")):
        assert call(env, "list_dir", path="/inbox", page=page) == ToolResult(
            "list_dir", f"error: list_dir: argument 'page' must be an integer, got {shown}",
            error=True)
    results = env.step([{"name": "list_dir", "arguments": '{"path": "/archive", "page": 0}'},
                        {"name": "move", "arguments": {"src": "/inbox/x"}}])
    assert results == [ToolResult("list_dir", '{"entries": [], "more": false, "total": 0}'),
                       ToolResult("move", "error: move: missing argument 'dst_dir'", True)]


def test_a_failing_tool_propagates(monkeypatch):
    env, _ = started("files")

    def broken(self, path):
        raise KeyError(path)

    monkeypatch.setattr(type(env), "tool_read_file", broken)
    with pytest.raises(KeyError):
        env.step([{"name": "read_file", "arguments": {"path": "/inbox/a.txt"}}])


class Echo(Environment):
    """The interface's own example, cut down: one tool, no state."""
    tools = [function_tool("echo", "Say it back.", text="string"),
             function_tool("undone", "Declared, never written.")]

    def tool_echo(self, text: str) -> str:
        if not text:
            raise ToolError("error: nothing to echo")
        return text


def test_a_user_environment_needs_only_tools_and_methods():
    env, task = Echo(), make_task("calculator", 1, seed=0, index=0)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step([])
    env.reset(task)
    assert env.step([{"name": "echo", "arguments": {"text": "hi"}},
                     {"name": "echo", "arguments": {"text": ""}}]) == [
        ToolResult("echo", "hi"), ToolResult("echo", "error: nothing to echo", error=True)]
    with pytest.raises(A1Error, match="no method tool_undone"):
        env.step([{"name": "undone", "arguments": {}}])


def test_make_environment():
    assert sorted(ENVIRONMENTS) == sorted(synth.DOMAINS)
    assert isinstance(make_environment("files"), ENVIRONMENTS["files"])
    with pytest.raises(ValueError, match=r"'search' \(known: calculator, files, kb_search\)"):
        make_environment("search")
