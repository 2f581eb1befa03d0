"""The environment interface: a task, tool calls in, observations out, and a verifier.

An environment plays one episode at a time. To plug in your own tools, subclass Environment, list
the tools' OpenAI-style definitions in `tools` and write one method `tool_<name>` per tool. The
base class checks each call against the definitions first (an unknown tool, a missing, extra or
wrongly typed argument becomes an error observation for the model, never an exception), so a
method receives exactly the arguments its schema declares:

    class Weather(Environment):
        tools = [function_tool("forecast", "Tomorrow's forecast for a city.", city="string")]

        def reset(self, task: Task) -> None:
            super().reset(task)
            self.forecasts = task.verifier["forecasts"]

        def tool_forecast(self, city: str) -> str:
            if city not in self.forecasts:
                raise ToolError(f"error: {city}: unknown city")  # an observation, error=True
            return self.forecasts[city]

        def verify(self, final_content: str) -> bool:
            return self.task.verifier["answer"] in final_content

    ENVIRONMENTS["weather"] = Weather

Any other exception from a tool method is a failure of the environment itself: it propagates out
of `step` (the episode loop marks the episode aborted).
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import json
from typing import Any

from a1jax.data import synth
from a1jax.errors import A1Error


@dataclasses.dataclass(frozen=True)
class Task:
    """One task: what the model is shown, and what the environment and verifier need."""
    id: str
    domain: str
    horizon: int
    seed: int
    index: int
    messages: list[dict[str, Any]]  # the leading system and user messages, OpenAI style
    tools: list[dict[str, Any]]  # OpenAI-style tool definitions
    verifier: dict[str, Any]  # synth's verifier spec
    reference: dict[str, Any] | None  # the full synthetic trajectory: the world, and a replay


def make_task(domain: str, horizon: int, seed: int, index: int) -> Task:
    """Task number `index` of (domain, horizon, seed), from `synth.make_trajectory`."""
    traj = synth.make_trajectory(domain, horizon, seed, index)
    prompt = itertools.takewhile(lambda m: m["role"] in ("system", "user"), traj["messages"])
    return Task(id=traj["id"], domain=domain, horizon=horizon, seed=seed, index=index,
                messages=list(prompt), tools=traj["tools"], verifier=traj["verifier"],
                reference=traj)


@dataclasses.dataclass(frozen=True)
class ToolResult:
    """The observation for one tool call. `error` is True when the call was malformed, named an
    unknown tool or had bad arguments, and when the tool reported an error (a ToolError: no such
    file, invalid syntax); `content` then says what was wrong, as the model will read it."""
    name: str
    content: str
    error: bool = False


class ToolError(Exception):
    """Raised by a tool method to answer with an error observation (its message, verbatim)."""


def function_tool(name: str, description: str, **params: str) -> dict[str, Any]:
    """An OpenAI-style tool definition whose parameters (name=JSON type) are all required."""
    props = {k: {"type": t, "description": f"the {k}"} for k, t in params.items()}
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": props, "required": list(params)}}}


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "array": (list,), "object": (dict,), "null": (type(None),)}
_ARTICLES = {"string": "a string", "integer": "an integer", "number": "a number",
             "boolean": "a boolean", "array": "an array", "object": "an object", "null": "null"}


class Environment(abc.ABC):
    """Answers the tool calls of one episode; `reset` starts an episode."""

    def __init__(self) -> None:
        self.task: Task | None = None

    @property
    @abc.abstractmethod
    def tools(self) -> list[dict[str, Any]]:
        """OpenAI-style definitions of the tools (a class attribute list is enough)."""

    def reset(self, task: Task) -> None:
        """Starts an episode of `task`. Subclasses that keep state extend this (super first)."""
        self.task = task

    def step(self, calls: list[dict[str, Any]]) -> list[ToolResult]:
        """One result per call, in order; calls as `parse_assistant` gives them,
        {"name": str, "arguments": dict} (arguments as a JSON object string are accepted too)."""
        if self.task is None:
            raise RuntimeError(f"{type(self).__name__}.step before reset")
        return [self._call(call) for call in calls]

    def verify(self, final_content: str) -> bool:
        """Whether the final assistant content ('... Final answer: X') solves the task; by default
        with synth's verifier for `task.verifier`."""
        if self.task is None:
            raise RuntimeError(f"{type(self).__name__}.verify before reset")
        return synth.verify({"messages": [{"role": "assistant", "content": final_content}],
                             "verifier": self.task.verifier})

    def progress(self) -> float:
        """The share (0 to 1) of the steps every solution takes that this episode has taken so
        far, for rl.progress_reward; 0 where a domain does not define one (the default)."""
        return 0.0

    def _call(self, call: Any) -> ToolResult:
        """Checks one call against `self.tools` and runs `tool_<name>` if it is well formed."""
        name = call.get("name") if isinstance(call, dict) else None
        if not isinstance(name, str):
            return ToolResult("", 'error: malformed tool call: expected {"name": ..., '
                                  '"arguments": {...}}', error=True)
        schemas = {t.get("function", t)["name"]: t.get("function", t) for t in self.tools}
        if name not in schemas:
            return ToolResult(name, f"error: unknown tool '{name}'; available: "
                                    f"{', '.join(schemas)}", error=True)
        arguments = call.get("arguments")
        arguments = {} if arguments is None else arguments
        if isinstance(arguments, str):  # OpenAI-style logs carry arguments as JSON text
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        if not isinstance(arguments, dict):
            return ToolResult(name, f"error: {name}: arguments must be a JSON object",
                              error=True)
        problems = _argument_problems(schemas[name].get("parameters") or {}, arguments)
        if problems:
            return ToolResult(name, f"error: {name}: {'; '.join(problems)}", error=True)
        method = getattr(self, f"tool_{name}", None)
        if method is None:
            raise A1Error(f"{type(self).__name__} declares the tool '{name}' but has no method "
                          f"tool_{name}")
        try:
            content = method(**arguments)
        except ToolError as e:
            return ToolResult(name, str(e), error=True)
        if not isinstance(content, str):
            raise A1Error(f"{type(self).__name__}.tool_{name} returned "
                          f"{type(content).__name__}, not str")
        return ToolResult(name, content)


def _argument_problems(parameters: dict[str, Any], arguments: dict[str, Any]) -> list[str]:
    """What is wrong with `arguments` under a JSON schema's `properties` and `required`:
    missing ones first, then unexpected ones, then wrong types (types the table does not know
    are not checked)."""
    props = parameters.get("properties") or {}
    problems = [f"missing argument '{k}'" for k in parameters.get("required") or ()
                if k not in arguments]
    problems += [f"unexpected argument '{k}'" for k in arguments if k not in props]
    for key, value in arguments.items():
        kinds = (props.get(key) or {}).get("type")
        kinds = [kinds] if isinstance(kinds, str) else kinds or []
        if kinds and not any(_is(value, kind) for kind in kinds):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            wanted = " or ".join(_ARTICLES.get(kind, kind) for kind in kinds)
            problems.append(f"argument '{key}' must be {wanted}, got {shown}")
    return problems


def _is(value: Any, kind: str) -> bool:
    if kind not in _TYPES:
        return True
    if isinstance(value, bool) and kind != "boolean":  # bool is an int in Python, not in JSON
        return False
    return isinstance(value, _TYPES[kind])


# Filled by `domains.py` (imported by the package) and by users: {domain: Environment subclass}.
ENVIRONMENTS: dict[str, type[Environment]] = {}


def make_environment(domain: str) -> Environment:
    """A fresh environment for `domain`; call `reset(task)` before stepping it."""
    if domain not in ENVIRONMENTS:
        raise A1Error(f"unknown environment domain {domain!r} "
                      f"(known: {', '.join(sorted(ENVIRONMENTS))})")
    return ENVIRONMENTS[domain]()
