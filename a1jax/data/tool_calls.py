"""Parse what a Qwen3.5-format model generates: reasoning, content and `<tool_call>` blocks.

The inverse of the assistant turn the chat template renders (`templates/qwen3_5.jinja`):

    {reasoning}\\n</think>\\n\\n{content}\\n\\n<tool_call>\\n<function=NAME>\\n
    <parameter=KEY>\\n{VALUE}\\n</parameter>\\n...</function>\\n</tool_call>

(the generation prompt already holds `<think>\\n`). Values were rendered as strings verbatim,
objects and arrays as JSON, other scalars as Python prints them; given the tools' JSON schemas a
value is turned back into the type its parameter declares, without them only JSON objects and
arrays are decoded (a string parameter holding "42" must stay a string).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from typing import Any, Sequence

from a1jax.errors import A1Error

_CALL = re.compile(r"<tool_call>\s*<function=([^>\n]+)>\n?(.*?)</function>\s*</tool_call>", re.S)
_PARAM = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.S)
_END = ("<|im_end|>", "<|endoftext|>")


class ToolCallParseError(A1Error):
    """Generated text with a malformed `<tool_call>` block."""


@dataclasses.dataclass(frozen=True)
class ParsedTurn:
    reasoning: str
    content: str
    tool_calls: list[dict[str, Any]]  # [{"name": ..., "arguments": {...}}], in order


def parse_assistant(text: str, tools: Sequence[dict[str, Any]] | None = None) -> ParsedTurn:
    """Splits a generated assistant turn into reasoning, content and tool calls.

    Raises ToolCallParseError when a `<tool_call>` opens but is not a complete, well-formed call.
    """
    for end in _END:
        text = text.split(end, 1)[0]
    reasoning = ""
    if "</think>" in text:
        reasoning, text = text.split("</think>", 1)
        reasoning = reasoning.removeprefix("<think>").strip()
    first = text.find("<tool_call>")
    content = (text if first < 0 else text[:first]).strip()
    calls = []
    if first >= 0:
        schemas = _schemas(tools)
        rest = text[first:]
        pos = 0
        for match in _CALL.finditer(rest):
            if rest[pos:match.start()].strip():
                raise ToolCallParseError(f"text between tool calls: {rest[pos:match.start()]!r}")
            name = match.group(1).strip()
            props = schemas.get(name, {})
            args = {key.strip(): _value(value, props.get(key.strip()))
                    for key, value in _PARAM.findall(match.group(2))}
            calls.append({"name": name, "arguments": args})
            pos = match.end()
        if not calls or rest[pos:].strip():
            raise ToolCallParseError(f"malformed tool call: {rest[pos:][:200]!r}")
    return ParsedTurn(reasoning, content, calls)


def _schemas(tools: Sequence[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """{tool name: {parameter: schema}} from OpenAI-style tool definitions."""
    out = {}
    for tool in tools or ():
        fn = tool.get("function", tool)
        out[fn.get("name")] = (fn.get("parameters") or {}).get("properties") or {}
    return out


def _value(raw: str, schema: dict[str, Any] | None) -> Any:
    kind = (schema or {}).get("type")
    if isinstance(kind, list):
        if "null" in kind and raw == "None":  # Python's str(None)
            return None
        kind = next((k for k in kind if k != "null"), None)
    if kind == "string":
        return raw
    if kind in ("object", "array") or (kind is None and raw[:1] in "{["):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    if kind in ("integer", "number", "boolean", "null"):
        try:  # rendered by Python's str(): 3, 2.5, True, None
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            try:
                return json.loads(raw)  # true / false / null
            except json.JSONDecodeError:
                return raw
    return raw
