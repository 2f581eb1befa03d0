"""The synthetic domains of `a1jax.data.synth` as environments.

Each answers from its task's generated world in the observation formats synth records, so a model
trained on synth trajectories sees in-distribution observations, and replaying a reference
trajectory's calls reproduces its tool messages byte for byte (tests/agent/test_environments.py).
Errors the model causes are ToolErrors (error=True), in synth's `error: ...` style.
"""

from __future__ import annotations

import ast
import json
import re
import zlib
from typing import Any, Iterator

from a1jax.agent.environment import (ENVIRONMENTS, Environment, Task, ToolError,
                                     function_tool)


def recorded_calls(reference: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(tool name, arguments, recorded observation) for every call in a synth trajectory, in
    order; arguments recorded as JSON text are decoded."""
    results = {m["tool_call_id"]: m["content"] for m in reference["messages"]
               if m["role"] == "tool"}
    for msg in reference["messages"]:
        for call in msg.get("tool_calls") or ():
            args = call["function"]["arguments"]
            yield (call["function"]["name"], json.loads(args) if isinstance(args, str) else args,
                   results[call["id"]])


# synth's search hits: people on the chain have an employer, distractors do not.
_HIT = re.compile(r"\[(?P<doc>doc-\d+)\] (?P<name>[^:\n]+): (?:works at (?P<employer>[^;\n]+); )?"
                  r"lives in (?P<city>[^;\n]+); mentor: (?P<mentor>[^\n]+)\.")


class KbSearch(Environment):
    """kb_search: `search(query)` and `open_document(doc_id)` over the people in the reference
    trajectory's search results, plus the verifier's kb (people missing from the results, or all
    of them when there is no reference, get a line without employer and a doc id from a hash).

    A call the reference recorded gets its recorded observation (distractors and order included);
    any other search gets the lines of the people whose name is the stripped query."""

    tools = [function_tool("search", "Search the knowledge base for documents about a person.",
                           query="string"),
             function_tool("open_document", "Open a document by id and return its full text.",
                           doc_id="string")]

    def reset(self, task: Task) -> None:
        super().reset(task)
        self.recorded: dict[tuple[str, str], str] = {}
        self.lines: dict[str, list[str]] = {}  # name -> search hits about that person
        self.docs: dict[str, dict[str, str | None]] = {}  # doc id -> the hit's fields
        calls = recorded_calls(task.reference) if task.reference else ()
        for name, args, content in calls:
            self.recorded.setdefault((name, json.dumps(args, sort_keys=True)), content)
            if name == "search":
                for line in content.splitlines():
                    if hit := _HIT.fullmatch(line):
                        self._add(line, hit.groupdict())
        for person, facts in task.verifier["kb"].items():
            if person not in self.lines:
                doc = f"doc-{zlib.crc32(person.encode()) % 10**6:06d}"
                self._add(f"[{doc}] {person}: lives in {facts['city']}; mentor: "
                          f"{facts['mentor']}.", dict(doc=doc, name=person, employer=None,
                                                      **facts))

    def _add(self, line: str, fields: dict[str, str | None]) -> None:
        if line not in self.lines.setdefault(fields["name"], []):
            self.lines[fields["name"]].append(line)
        # Doc ids are random six-digit numbers and collide at long horizons; the first one seen
        # wins (recorded open_document calls still get their recorded text).
        self.docs.setdefault(fields["doc"], fields)

    def _recorded(self, name: str, **args: Any) -> str | None:
        return self.recorded.get((name, json.dumps(args, sort_keys=True)))

    def tool_search(self, query: str) -> str:
        found = self._recorded("search", query=query) or "\n".join(
            self.lines.get(query.strip(), ()))
        return found or f"No documents match '{query}'."

    def tool_open_document(self, doc_id: str) -> str:
        if (found := self._recorded("open_document", doc_id=doc_id)) is not None:
            return found
        if (d := self.docs.get(doc_id.strip())) is None:
            raise ToolError(f"error: {doc_id}: no such document")
        # Distractors carry no employer in synth's hits; their documents leave it out.
        employer = f" Employer: {d['employer']}." if d["employer"] else ""
        return f"{d['name']} ({d['city']}).{employer} Mentor: {d['mentor']}."


_MAX_BITS = 3_000  # ~900 digits: far beyond any task, and str() of it stays cheap
_BINOPS = {ast.Add: int.__add__, ast.Sub: int.__sub__, ast.Mult: int.__mul__,
           ast.FloorDiv: int.__floordiv__, ast.Mod: int.__mod__}
_UNARY = {ast.USub: int.__neg__, ast.UAdd: int.__pos__}
# Text that cannot appear in an integer expression: what "invalid syntax near" points at.
_FOREIGN = re.compile(r"[A-Za-z_]\w*|[^\w\s()+\-*/%]")


def _parse(text: str, mode: str, names: tuple[str, ...] = ()) -> ast.AST:
    """`ast.parse`, with synth's `error: invalid syntax near '...'` as a ToolError."""
    if not text.strip():
        raise ToolError("error: empty expression")
    try:
        return ast.parse(text.strip(), mode=mode)
    except (SyntaxError, ValueError) as e:  # ValueError: null bytes, on some Pythons
        foreign = [m.group() for m in _FOREIGN.finditer(text) if m.group() not in names]
        offset = getattr(e, "offset", None) or 1
        near = foreign[0] if foreign else (text.strip()[offset - 1:].split() or [""])[0]
        raise ToolError(f"error: invalid syntax near '{near[:30]}'") from None
    except RecursionError:
        raise ToolError("error: expression too deeply nested") from None


def _evaluate(node: ast.AST) -> int:
    """The value of an integer expression of + - * // %, unary minus and parentheses."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        value = node.value
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        value = _UNARY[type(node.op)](_evaluate(node.operand))
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if right == 0 and isinstance(node.op, (ast.FloorDiv, ast.Mod)):
            raise ToolError("error: division by zero")
        value = _BINOPS[type(node.op)](left, right)
    else:
        raise ToolError(f"error: unsupported expression '{ast.unparse(node)[:60]}'; use "
                        "integers, + - * // % and parentheses")
    if value.bit_length() > _MAX_BITS:
        raise ToolError("error: result too large")
    return value


def _value(node: ast.AST) -> int:
    try:
        return _evaluate(node)
    except RecursionError:
        raise ToolError("error: expression too deeply nested") from None


CALCULATOR = function_tool("calculator", "Evaluate an integer arithmetic expression.",
                           expression="string")


def calculate(expression: str) -> str:
    return str(_value(_parse(expression, "eval").body))


class Calculator(Environment):
    """calculator: `calculator(expression)` evaluates integer arithmetic (parsed with `ast`,
    never `eval`); `python(code)` runs only `print(<integer expression>)`."""

    tools = [CALCULATOR,
             function_tool("python", "Run a Python snippet and return what it prints.",
                           code="string")]

    def tool_calculator(self, expression: str) -> str:
        return calculate(expression)

    def tool_python(self, code: str) -> str:
        body = _parse(code, "exec", names=("print",)).body
        call = body[0].value if len(body) == 1 and isinstance(body[0], ast.Expr) else None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                and call.func.id == "print" and len(call.args) == 1 and not call.keywords):
            raise ToolError("error: this python tool runs only print(<integer expression>)")
        return f"{_value(call.args[0])}\n"


PAGE = 20  # entries per list_dir page, as synth lists them


class Files(Environment):
    """files: /inbox holds the verifier's files ('value: N'), /archive starts empty; `move`
    changes the state, `reset` restores it. It also notes which files were read (`read`).
    `calculator` is the calculator domain's, for the sum the report needs."""

    tools = [function_tool("list_dir", "List one page (20 entries) of a directory.",
                           path="string", page="integer"),
             function_tool("read_file", "Return the contents of a file.", path="string"),
             function_tool("move", "Move a file to a directory.", src="string",
                           dst_dir="string"),
             CALCULATOR]

    def reset(self, task: Task) -> None:
        super().reset(task)
        self.dirs: dict[str, dict[str, int]] = {"/inbox": dict(task.verifier["inbox"]),
                                                "/archive": {}}
        self.read: set[str] = set()  # names of the files whose value the agent has seen

    def _dir(self, path: str) -> tuple[str, dict[str, int]]:
        key = path.rstrip("/")
        if key not in self.dirs:
            raise ToolError(f"error: {path}: no such directory")
        return key, self.dirs[key]

    def _file(self, path: str) -> tuple[dict[str, int], str]:
        folder, _, name = path.rpartition("/")
        if name not in self.dirs.get(folder, {}):
            raise ToolError(f"error: {path}: no such file")
        return self.dirs[folder], name

    def tool_list_dir(self, path: str, page: int) -> str:
        key, files = self._dir(path)
        if page < 0:
            raise ToolError(f"error: list_dir: page must be >= 0, got {page}")
        names = [f"{key}/{name}" for name in sorted(files)]  # full paths, as synth lists them
        return json.dumps({"entries": names[page * PAGE:(page + 1) * PAGE],
                           "more": (page + 1) * PAGE < len(names), "total": len(names)})

    def tool_read_file(self, path: str) -> str:
        folder, name = self._file(path)
        self.read.add(name)
        return f"value: {folder[name]}"

    def verify(self, final_content: str) -> bool:
        """The reported count and sum, and the world they report: every even file in /archive,
        every odd one still in /inbox (a model that answers right without moving anything did
        not do the task), and every file read. Without the last, a file left unread is right
        whenever its value is odd: half the time, a guess the reward would teach (runs/recipe7's
        files teacher solved 9 of its 48 horizon-3 episodes so, docs/recipe.md)."""
        inbox = self.task.verifier["inbox"]
        even = {name for name, v in inbox.items() if v % 2 == 0}
        return (set(self.dirs["/archive"]) == even and self.read == set(inbox)
                and super().verify(final_content))

    def progress(self) -> float:
        """The share of the inbox's files read: every solution reads them all."""
        inbox = self.task.verifier["inbox"]  # synth: `horizon` files, at least one
        return len(self.read & set(inbox)) / len(inbox)

    def tool_move(self, src: str, dst_dir: str) -> str:
        dst, files = self._dir(dst_dir)
        folder, name = self._file(src)
        files[name] = folder.pop(name)
        return f"moved {src} -> {dst}/{name}"

    def tool_calculator(self, expression: str) -> str:
        return calculate(expression)


ENVIRONMENTS.update(kb_search=KbSearch, calculator=Calculator, files=Files)
