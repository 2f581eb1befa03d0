"""An exported model serves in the format it was trained in: the tokenizer and chat template
render like a1jax, and `generate` returns a tool call the template's format parses.

A random model cannot produce a tool call, so the model here is a tiny one trained for a few
seconds to memorise one tool-using trajectory (loss on the assistant turn only, as a1jax trains):
whatever transformers generates is then only the trained answer if export, tokenizer, template
and generation config all agree with training."""

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
import torch

from a1jax.convert.hf_export import export
from a1jax.data.chat_template import render
from a1jax.data.tokenizer import load_tokenizer
from a1jax.data.tool_calls import parse_assistant
from a1jax.model import Transformer, get_preset
from tests.convert.helpers import write_checkpoint

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
    trained = np.zeros(ids.shape[1] - 1, np.float32)
    trained[len(prompt_ids) - 1:] = 1  # predict the assistant's tokens only

    model = Transformer(config)
    # Jitted: op by op, the init alone took some 25 s.
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), ids[:, :4]))["params"]
    optimizer = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state):
        def loss(p):
            logits = model.apply({"params": p}, ids).logits_btx[0, :-1]
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, ids[0, 1:])
            return (ce * trained).sum() / trained.sum()
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    opt_state = optimizer.init(params)
    for _ in range(400):
        params, opt_state, value = step(params, opt_state)
        if value < 1e-3:
            break
    assert value < 1e-2, value
    root = tmp_path_factory.mktemp("run") / "checkpoints"
    write_checkpoint(root, config, jax.tree.map(np.asarray, params), tokenizer=None)
    out = tmp_path_factory.mktemp("export") / "hf"
    export(str(root), str(out), dtype="float32")
    return out


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
