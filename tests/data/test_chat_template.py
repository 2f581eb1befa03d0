"""Rendering in the Qwen3.5 chat format, byte for byte (issue 5, acceptance 1).

The expected strings are written from the format's rules, not produced by the template."""

import json

import pytest
from a1jax.data.chat_template import RenderError, default_template, render, template_for
from a1jax.data.schema import validate
from a1jax.data.tokenizer import load_tokenizer

HEADER = "<|im_start|>system\n# Tools\n\nYou have access to the following functions:\n\n<tools>"
# The fixed call-format block of the Qwen3.5 template (a protocol constant).
INSTRUCTIONS = (
    "\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n"
    "</parameter>\n<parameter=example_parameter_2>\nThis is the value for the second parameter\n"
    "that can span\nmultiple lines\n</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\n"
    "Reminder:\n- Function calls MUST follow the specified format: an inner "
    "<function=...></function> block must be nested within <tool_call></tool_call> XML tags\n"
    "- Required parameters MUST be specified\n- You may provide optional reasoning for your "
    "function call in natural language BEFORE the function call, but NOT after\n- If there is no "
    "function call available, answer the question like normal with your current knowledge and do "
    "not tell the user about function calls\n</IMPORTANT>")

SEARCH = {"type": "function", "function": {
    "name": "search", "description": "Sök på webben — «quoted»",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}
# Keys deliberately out of sorted order: the rendering must keep them as given.
RUN = {"type": "function", "function": {"name": "run", "parameters": {"z": 1, "a": 2}}}
SEARCH_LINE = ('{"type": "function", "function": {"name": "search", "description": '
               '"Sök på webben — «quoted»", "parameters": {"type": "object", "properties": '
               '{"q": {"type": "string"}}, "required": ["q"]}}}')
RUN_LINE = '{"type": "function", "function": {"name": "run", "parameters": {"z": 1, "a": 2}}}'


def call(name, args, cid="c1"):
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


def test_no_tools_no_reasoning_has_empty_think_block():
    msgs = [{"role": "user", "content": "  Hi there \n"},
            {"role": "assistant", "content": "Hello!"}]
    assert render(msgs) == ("<|im_start|>user\nHi there<|im_end|>\n"
                            "<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n")


def test_system_without_tools():
    msgs = [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "reasoning_content": "  think  "}]
    assert render(msgs) == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                            "<|im_start|>user\nq<|im_end|>\n"
                            "<|im_start|>assistant\n<think>\nthink\n</think>\n\na<|im_end|>\n")


def test_tools_with_system_text_key_order_and_non_ascii():
    msgs = [{"role": "system", "content": "You are careful."}, {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "reasoning_content": "r"}]
    assert render(msgs, [SEARCH, RUN]) == (
        HEADER + "\n" + SEARCH_LINE + "\n" + RUN_LINE + "\n</tools>" + INSTRUCTIONS
        + "\n\nYou are careful.<|im_end|>\n<|im_start|>user\nq<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nr\n</think>\n\na<|im_end|>\n")


def test_tools_without_system_text():
    for msgs in ([{"role": "user", "content": "q"}],
                 [{"role": "system", "content": "   "}, {"role": "user", "content": "q"}]):
        assert render(msgs, [RUN]) == (HEADER + "\n" + RUN_LINE + "\n</tools>" + INSTRUCTIONS
                                       + "<|im_end|>\n<|im_start|>user\nq<|im_end|>\n")


def test_several_calls_every_json_type_and_consecutive_results():
    args = {"s": "two\nlines ", "i": 3, "f": 2.5, "t": True, "n": None, "l": [1, "ü", None],
            "o": {"b": 1, "a": [False]}}
    msgs = [{"role": "user", "content": "go"},
            {"role": "assistant", "content": "Calling both.", "reasoning_content": "plan",
             "tool_calls": [call("search", args, "c1"), call("run", {}, "c2")]},
            {"role": "tool", "tool_call_id": "c1", "name": "search", "content": " first "},
            {"role": "tool", "tool_call_id": "c2", "name": "run", "content": "second"},
            {"role": "assistant", "content": "", "tool_calls": [call("run", {"x": False}, "c3")]},
            {"role": "tool", "tool_call_id": "c3", "name": "run", "content": "third"},
            {"role": "assistant", "content": "done"}]
    expected = (
        HEADER + "\n" + SEARCH_LINE + "\n" + RUN_LINE + "\n</tools>" + INSTRUCTIONS + "<|im_end|>\n"
        "<|im_start|>user\ngo<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nplan\n</think>\n\nCalling both.\n\n"
        "<tool_call>\n<function=search>\n"
        "<parameter=s>\ntwo\nlines \n</parameter>\n"
        "<parameter=i>\n3\n</parameter>\n"
        "<parameter=f>\n2.5\n</parameter>\n"
        "<parameter=t>\nTrue\n</parameter>\n"
        "<parameter=n>\nNone\n</parameter>\n"
        '<parameter=l>\n[1, "ü", null]\n</parameter>\n'
        '<parameter=o>\n{"b": 1, "a": [false]}\n</parameter>\n'
        "</function>\n</tool_call>\n"
        "<tool_call>\n<function=run>\n</function>\n</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nfirst\n</tool_response>\n"
        "<tool_response>\nsecond\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
        "<tool_call>\n<function=run>\n<parameter=x>\nFalse\n</parameter>\n</function>\n</tool_call>"
        "<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nthird\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\ndone<|im_end|>\n")
    assert render(msgs, [SEARCH, RUN]) == expected
    # Arguments as a JSON string (as many logs carry them) render the same once validated.
    as_strings = json.loads(json.dumps(msgs))
    for m in as_strings:
        for c in m.get("tool_calls", []):
            c["function"]["arguments"] = json.dumps(c["function"]["arguments"])
    traj = validate({"id": "t", "domain": "d", "tools": [SEARCH, RUN], "messages": as_strings})
    assert render(traj["messages"], traj["tools"]) == expected


def test_multi_turn_drops_reasoning_before_last_user_query():
    msgs = [{"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1", "reasoning_content": "r1"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "<think>\nr2\n</think>\n\na2"},
            {"role": "user", "content": "q3"},
            {"role": "assistant", "content": "a3", "reasoning_content": "r3"}]
    assert render(msgs) == (
        "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n"
        "<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\na2<|im_end|>\n"
        "<|im_start|>user\nq3<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nr3\n</think>\n\na3<|im_end|>\n")


def test_reasoning_from_think_tags_in_content_after_last_query():
    msgs = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": "<think>\n deep \n</think>\n\nanswer"}]
    assert render(msgs) == ("<|im_start|>user\nq<|im_end|>\n"
                            "<|im_start|>assistant\n<think>\ndeep\n</think>\n\nanswer<|im_end|>\n")


def test_wrapped_tool_responses_are_not_a_user_query():
    msgs = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "reasoning_content": "r"},
            {"role": "user", "content": "<tool_response>\nx\n</tool_response>"},
            {"role": "assistant", "content": "b", "reasoning_content": "s"}]
    assert render(msgs) == (
        "<|im_start|>user\nq<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nr\n</think>\n\na<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nx\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\ns\n</think>\n\nb<|im_end|>\n")


@pytest.mark.parametrize("thinking,suffix",
                         [(True, "<think>\n"), (False, "<think>\n\n</think>\n\n")])
def test_generation_prompt(thinking, suffix):
    msgs = [{"role": "user", "content": "q"}]
    assert render(msgs, add_generation_prompt=True, enable_thinking=thinking) == (
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n" + suffix)


@pytest.mark.parametrize("msgs,error", [
    ([], "No messages provided."),
    ([{"role": "assistant", "content": "a"}], "No user query found in messages."),
    ([{"role": "user", "content": "q"}, {"role": "system", "content": "s"}],
     "System message must be at the beginning."),
    ([{"role": "user", "content": "q"}, {"role": "robot", "content": "s"}],
     "Unexpected message role."),
])
def test_template_refusals(msgs, error):
    with pytest.raises(RenderError, match="^the chat template refused the messages: " + error):
        render(msgs)


def test_shipped_tokenizer_carries_the_template_and_transformers_renders_the_same():
    tok = load_tokenizer()
    assert tok.chat_template == default_template() == template_for(tok)
    assert template_for(object()) == default_template()
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
            {"role": "assistant", "content": "c", "reasoning_content": "r",
             "tool_calls": [call("search", {"q": "x", "k": [1]})]},
            {"role": "tool", "tool_call_id": "c1", "content": "res"}]
    for gen in (False, True):
        assert tok.apply_chat_template(msgs, tools=[SEARCH], tokenize=False,
                                       add_generation_prompt=gen) == render(
            msgs, [SEARCH], add_generation_prompt=gen)
