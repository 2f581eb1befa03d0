"""An exported model serves in the format it was trained in: the tokenizer and chat template
render like a1jax, and `generate` returns a tool call the template's format parses.

A random model cannot produce a tool call, so the model here is a tiny one trained for a few
seconds to memorise one tool-using trajectory (loss on the assistant turn only, as a1jax trains):
whatever transformers generates is then only the trained answer if export, tokenizer, template
and generation config all agree with training."""

import numpy as np
import pytest
import torch

from a1jax.data.chat_template import render
from a1jax.data.tokenizer import load_tokenizer
from a1jax.data.tool_calls import parse_assistant
from a1jax.model import get_preset
from tests.convert.helpers import export_params, memorise

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather forecast for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}]
QUERY = [{"role": "user", "content": "What is the weather in Oslo for 3 days?"}]
CALL = {"name": "get_weather", "arguments": {"city": "Oslo", "days": 3}}
ANSWER = {"role": "assistant", "content": "", "reasoning_content": "Call the tool.",
          "tool_calls": [{"id": "c1", "type": "function", "function": CALL}]}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tok = load_tokenizer()
    config = get_preset("tiny").replace(vocab_size=len(tok),
                                        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
    prompt = render(QUERY, TOOLS, add_generation_prompt=True)
    completion = render(QUERY + [ANSWER], TOOLS)[len(prompt):].rstrip("\n")
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = np.asarray([prompt_ids + tok(completion, add_special_tokens=False)["input_ids"]])
    trained = np.zeros((1, ids.shape[1] - 1), np.float32)
    trained[0, len(prompt_ids) - 1:] = 1  # predict the assistant's tokens only
    params, value, _ = memorise(config, ids, trained, 1e-2, stop_below=1e-3)
    assert value < 1e-2, value
    return export_params(tmp_path_factory, config, params, "float32")


def test_exported_tokenizer_renders_a_tool_conversation_like_a1jax(exported):
    from transformers import AutoTokenizer

    messages = QUERY + [
        ANSWER, {"role": "tool", "tool_call_id": "c1", "name": "get_weather",
                 "content": '{"temps": [3, 4, 2], "unit": "°C"}'},
        {"role": "assistant", "content": "Cold: 3, 4 and 2 °C.", "reasoning_content": "Sum up."},
        {"role": "user", "content": "And Bergen?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "c2", "type": "function", "function": {
                "name": "get_weather", "arguments": {"city": "Bergen", "days": 1}}}]},
        {"role": "tool", "tool_call_id": "c2", "name": "get_weather", "content": "rain"}]
    theirs = AutoTokenizer.from_pretrained(str(exported), local_files_only=True)
    ours = load_tokenizer()
    for generation_prompt in (False, True):
        for thinking in (True, False):
            text = theirs.apply_chat_template(messages, tools=TOOLS, tokenize=False,
                                              add_generation_prompt=generation_prompt,
                                              enable_thinking=thinking)
            assert text == render(messages, TOOLS, add_generation_prompt=generation_prompt,
                                  enable_thinking=thinking)
            assert theirs(text)["input_ids"] == ours(text)["input_ids"]


def test_generate_returns_a_tool_call_the_format_parses(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(str(exported), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32).eval()
    generation = GenerationConfig.from_pretrained(str(exported))
    assert generation.eos_token_id == [tok.convert_tokens_to_ids("<|im_end|>"),
                                       tok.convert_tokens_to_ids("<|endoftext|>")]
    inputs = tok.apply_chat_template(QUERY, tools=TOOLS, add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=60)
    new = out[0, inputs["input_ids"].shape[1]:]
    assert new[-1].item() == tok.convert_tokens_to_ids("<|im_end|>")  # stopped at end of turn
    parsed = parse_assistant(tok.decode(new), TOOLS)
    assert parsed.reasoning == "Call the tool."
    assert parsed.tool_calls == [CALL]
