"""The trajectory schema (one JSON object per JSONL line) and its validation.

A trajectory is

        {"id": str, "domain": str,
          "tools": [{"type": "function", "function": {"name": str, ...}}, ...],   # optional
          "messages": [...], "verifier": {...}, "metadata": {...}}          # last two optional

with OpenAI chat messages: `system` (first only), `user`, `assistant` (optional
`reasoning_content`, optional `tool_calls: [{"id", "type": "function", "function": {"name",
"arguments"}}]` with arguments an object or a JSON string of one) and `tool` (answering a call of
the preceding assistant turn, with `tool_call_id` and `name`).

`validate` either returns a normalised copy (tool-call arguments parsed into objects, which is what
chat templates need) or raises `TrajectoryError`, whose message names the file and line, the
trajectory id, the message index and what is wrong. Everything the trainer later assumes is
checked here, so bad input stops at `prepare`, never deep inside a training step.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from a1jax.errors import A1Error

ROLES = ("system", "user", "assistant", "tool")

# Text that would close or open a turn inside a message would corrupt the turn structure (and the
# assistant spans found from it), so it may not appear in any message field.
RESERVED_MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


@dataclasses.dataclass
class TrajectoryError(A1Error):
    """A trajectory (or the line holding it) that a1jax cannot train on, with its location."""

    reason: str
    source: str = "<input>"
    line: int | None = None
    trajectory_id: str | None = None
    message_index: int | None = None

    def __post_init__(self):
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        parts = [where]
        if self.trajectory_id is not None:
            parts.append(f"trajectory {self.trajectory_id!r}")
        if self.message_index is not None:
            parts.append(f"message {self.message_index}")
        return ": ".join(parts + [self.reason])


def parse_line(raw: bytes, *, source: str = "<input>", line: int | None = None) -> dict[str, Any]:
    """Decodes one JSONL line (UTF-8, one JSON object) or raises `TrajectoryError`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[e.start:e.start + 4]
        raise TrajectoryError(f"invalid UTF-8 at byte {e.start}: {bad!r}", source, line) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise TrajectoryError(f"malformed JSON: {e.msg} (column {e.colno})", source, line) from None
    if not isinstance(obj, dict):
        raise TrajectoryError(f"expected a JSON object, got {type(obj).__name__}", source, line)
    return obj


def validate(obj: dict[str, Any], *, source: str = "<input>",
                          line: int | None = None) -> dict[str, Any]:
    """Checks one trajectory; returns a copy with tool-call arguments parsed into objects.

    Raises `TrajectoryError` for the first problem found, located as precisely as possible.
    """
    def fail(reason: str, index: int | None = None) -> TrajectoryError:
        tid = obj.get("id") if isinstance(obj.get("id"), str) else None
        return TrajectoryError(reason, source, line, tid, index)

    if not isinstance(obj.get("id"), str) or not obj["id"]:
        raise fail("'id' must be a non-empty string")
    if not isinstance(obj.get("domain"), str) or not obj["domain"]:
        raise fail("'domain' must be a non-empty string")
    for key in ("verifier", "metadata"):
        if key in obj and obj[key] is not None and not isinstance(obj[key], dict):
            raise fail(f"'{key}' must be an object")
    tool_names = _tool_names(obj.get("tools", []), fail)

    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise fail("'messages' must be a non-empty list")
    out = copy.deepcopy(obj)
    out.setdefault("tools", [])
    pending: dict[str, str] = {}  # ids (or positional keys) of calls not yet answered -> tool name
    has_query = has_target = False
    for i, msg in enumerate(out["messages"]):
        if not isinstance(msg, dict):
            raise fail("message must be an object", i)
        role = msg.get("role")
        if role not in ROLES:
            raise fail(f"unknown role {role!r} (expected one of {', '.join(ROLES)})", i)
        _check_text(msg, "content", fail, i, required=(role != "assistant"))
        if role == "system" and i != 0:
            raise fail("system message must be the first message", i)
        if role == "user":
            has_query = True
            pending = {}
        elif role == "assistant":
            _check_text(msg, "reasoning_content", fail, i, required=False)
            pending = _check_tool_calls(msg, tool_names, fail, i)
            has_target = has_target or bool((msg.get("content") or "").strip()
                                            or (msg.get("reasoning_content") or "").strip()
                                            or msg.get("tool_calls"))
        elif role == "tool":
            pending = _answer_call(msg, pending, fail, i)
    if not has_query:
        raise fail("no user message: the chat format needs a real user query")
    if not has_target:
        raise fail("nothing to train on: no assistant message with content, reasoning or "
                   "tool calls")
    return out


def _tool_names(tools: Any, fail) -> set[str]:
    if not isinstance(tools, list):
        raise fail("'tools' must be a list")
    names = set()
    for k, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type") != "function":
            raise fail(f"tools[{k}] must be {{\"type\": \"function\", \"function\": {{...}}}}")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise fail(f"tools[{k}].function.name must be a non-empty string")
        if fn["name"] in names:
            raise fail(f"tools[{k}]: duplicate tool name {fn['name']!r}")
        names.add(fn["name"])
    return names


def _check_text(msg: dict, key: str, fail, i: int, required: bool) -> None:
    value = msg.get(key)
    if value is None:
        if required:
            raise fail(f"'{key}' must be a string", i)
        return
    if not isinstance(value, str):
        raise fail(f"'{key}' must be a string", i)
    for marker in RESERVED_MARKERS:
        if marker in value:
            raise fail(f"'{key}' contains the reserved turn marker {marker!r}", i)


def _check_tool_calls(msg: dict, tool_names: set[str], fail, i: int) -> dict[str, str]:
    """Validates and normalises `tool_calls`; returns the calls now awaiting tool results."""
    calls = msg.get("tool_calls")
    if calls is None:
        msg.pop("tool_calls", None)
        return {}
    if not isinstance(calls, list):
        raise fail("'tool_calls' must be a list", i)
    pending = {}
    for k, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            raise fail(f"tool call {k} must have a 'function' object", i)
        if call.get("type", "function") != "function":
            raise fail(f"tool call {k} has type {call.get('type')!r}, expected 'function'", i)
        name = fn.get("name")
        if name not in tool_names:
            raise fail(f"tool call {k} names tool {name!r}, which is not in 'tools'", i)
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError as e:
                raise fail(f"tool call {k} ({name}): arguments are not valid JSON: {e.msg} "
                                      f"(char {e.pos})", i) from None
        if not isinstance(args, dict):
            raise fail(f"tool call {k} ({name}): arguments must be a JSON object, "
                                  f"got {type(args).__name__}", i)
        for key, value in args.items():
            if isinstance(value, str) and any(m in value for m in RESERVED_MARKERS):
                raise fail(f"tool call {k} ({name}): argument {key!r} contains a reserved turn "
                           "marker", i)
        fn["arguments"] = args
        call_id = call.get("id")
        pending[call_id if isinstance(call_id, str) and call_id else f"#{k}"] = name
    return pending


def _answer_call(msg: dict, pending: dict[str, str], fail, i: int) -> dict[str, str]:
    """Matches a tool result to an open call of the preceding assistant turn."""
    if not pending:
        raise fail("tool message with no preceding tool call to answer", i)
    call_id = msg.get("tool_call_id")
    if call_id is None:
        key = next(iter(pending))  # results without ids answer calls in order
    elif call_id in pending:
        key = call_id
    else:
        raise fail(f"tool_call_id {call_id!r} matches no open call of the preceding assistant "
                   "turn", i)
    name = msg.get("name")
    if name is not None and name != pending[key]:
        raise fail(f"tool message name {name!r} does not match its call ({pending[key]!r})", i)
    return {k: v for k, v in pending.items() if k != key}


@dataclasses.dataclass(frozen=True)
class Loaded:
    """One line of a JSONL file (`offset`: its first byte): the validated trajectory, or the
    error that rejects it."""
    source: str
    line: int
    trajectory: dict[str, Any] | None
    error: TrajectoryError | None
    offset: int = 0


def read_jsonl(path: str | Path) -> Iterator[Loaded]:
    """Yields every non-blank line of `path`, validated, in order; never raises for bad lines."""
    for lineno, offset, raw in raw_lines(path):
        yield read_line(raw, str(path), lineno, offset)


def raw_lines(path: str | Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, bytes) of every non-blank line of `path`, unparsed."""
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            if raw.strip():
                yield lineno, start, raw


def read_line(raw: bytes, source: str, line: int, offset: int = 0) -> Loaded:
    """One JSONL line, parsed and validated (see `read_jsonl`)."""
    try:
        traj = validate(parse_line(raw.rstrip(b"\r\n"), source=source, line=line),
                        source=source, line=line)
    except TrajectoryError as e:
        return Loaded(source, line, None, e, offset)
    return Loaded(source, line, traj, None, offset)
