"""Parsing generated Qwen3.5 assistant turns: the inverse of the template's rendering."""

import pytest

from a1jax.data.chat_template import render
from a1jax.data.tool_calls import ToolCallParseError, parse_assistant

TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {
    "type": "object", "properties": {
        "s": {"type": "string"}, "num": {"type": "string"}, "i": {"type": "integer"},
        "f": {"type": "number"}, "t": {"type": "boolean"}, "n": {"type": ["null", "string"]},
        "l": {"type": "array"}, "o": {"type": "object"}}}}},
    {"type": "function", "function": {"name": "run", "parameters": {"type": "object"}}}]


def _assistant_turn(args_list, content="Calling.", reasoning="plan it"):
    calls = [{"id": f"c{i}", "type": "function", "function": {"name": name, "arguments": args}}
             for i, (name, args) in enumerate(args_list)]
    msgs = [{"role": "user", "content": "go"},
            {"role": "assistant", "content": content, "reasoning_content": reasoning,
             "tool_calls": calls}]
    prompt = render(msgs[:1], TOOLS, add_generation_prompt=True)
    full = render(msgs, TOOLS)
    assert full.startswith(prompt)
    return full[len(prompt):]  # what a model would generate after the prompt


def test_roundtrip_every_json_type_with_schemas():
    args = {"s": "two\nlines ", "num": "42", "i": 3, "f": 2.5, "t": True, "n": None,
            "l": [1, "ü", None], "o": {"b": 1, "a": [False]}}
    text = _assistant_turn([("search", args), ("run", {})])
    parsed = parse_assistant(text, TOOLS)
    assert parsed.reasoning == "plan it" and parsed.content == "Calling."
    assert parsed.tool_calls == [{"name": "search", "arguments": args},
                                 {"name": "run", "arguments": {}}]


def test_without_schemas_only_objects_and_arrays_are_decoded():
    text = _assistant_turn([("run", {"k": "42", "o": {"a": 1}, "l": [2]})], content="")
    parsed = parse_assistant(text)
    assert parsed.content == ""
    assert parsed.tool_calls == [{"name": "run", "arguments": {"k": "42", "o": {"a": 1},
                                                               "l": [2]}}]


def test_plain_answer_and_malformed_call():
    assert parse_assistant("hm\n</think>\n\nThe answer.<|im_end|>").tool_calls == []
    with pytest.raises(ToolCallParseError, match="malformed tool call"):
        parse_assistant("x</think>\n\n<tool_call>\n<function=run>\n<parameter=a>\n1")
