"""Assistant-only loss masks (issue 5, acceptance 2): the trained tokens decode to exactly the
assistant's parts, with a1jax's template and with a different one from a tokenizer directory."""

import json
import shutil

import numpy as np
import pytest

from a1jax.data import synth
from a1jax.data.masks import MaskOptions, render_with_spans
from a1jax.data.schema import validate
from a1jax.data.tokenizer import SHIPPED_TOKENIZER_DIR, TrajectoryEncoder, load_tokenizer

RUN = {"type": "function", "function": {"name": "run", "parameters": {}}}
TRAJ = validate({"id": "t1", "domain": "demo", "tools": [RUN], "messages": [
    {"role": "system", "content": "sys"},
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "early answer", "reasoning_content": "early thought"},
    {"role": "user", "content": "second question"},
    {"role": "assistant", "content": "", "reasoning_content": "need a tool",
     "tool_calls": [{"id": "a", "type": "function",
                     "function": {"name": "run", "arguments": '{"cmd": "ls -l"}'}}]},
    {"role": "tool", "tool_call_id": "a", "name": "run", "content": "file.txt"},
    {"role": "assistant", "content": "It is file.txt.", "reasoning_content": ""},
]})
CALL = ("<tool_call>\n<function=run>\n<parameter=cmd>\nls -l\n</parameter>\n</function>\n"
        "</tool_call>")
# What the assistant produced, turn by turn, in the Qwen3.5 format: after the generation prompt
# `<|im_start|>assistant\n<think>\n` up to `<|im_end|>`; the turn before the last user query is
# history, rendered (and trained) without its reasoning.
QWEN_TRAINED = ["early answer<|im_end|>",
                "need a tool\n</think>\n\n" + CALL + "<|im_end|>",
                "\n</think>\n\nIt is file.txt.<|im_end|>"]

# A different chat format (ChatML with JSON tool calls and inline think tags), with no
# generation blocks: its spans can only come from rendering prefixes.
OTHER_TEMPLATE = """{%- for message in messages %}
{%- if message.role == 'assistant' %}
{{- '<|im_start|>assistant\\n' }}
{%- if message.reasoning_content %}{{- '<think>' + message.reasoning_content + '</think>' }}{%- endif %}
{{- message.content or '' }}
{%- for call in message.tool_calls or [] %}
{{- '<tool_call>' + {'name': call.function.name, 'arguments': call.function.arguments} | tojson + '</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"""
OTHER_TRAINED = ["<think>early thought</think>early answer<|im_end|>",
                 '<think>need a tool</think><tool_call>{"name": "run", "arguments": '
                 '{"cmd": "ls -l"}}</tool_call><|im_end|>',
                 "It is file.txt.<|im_end|>"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def other_tokenizer_dir(tmp_path_factory):
    """The shipped tokenizer with a different chat template, as a downloaded model dir would be."""
    path = tmp_path_factory.mktemp("other_tok")
    shutil.copytree(SHIPPED_TOKENIZER_DIR, path, dirs_exist_ok=True)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = OTHER_TEMPLATE
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def trained_runs(tokenizer, encoded):
    """Decoded maximal runs of trained tokens, and the decoding of everything."""
    runs, current = [], []
    for tok, m in zip(encoded.tokens.tolist(), encoded.loss_mask.tolist()):
        if m:
            current.append(tok)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(r) for r in runs], tokenizer.decode(encoded.tokens.tolist())


def test_trained_text_is_exactly_the_assistant_parts(tokenizer):
    enc = TrajectoryEncoder(tokenizer)
    rendered = enc.render(TRAJ)
    assert rendered.trained_text() == QWEN_TRAINED
    encoded = enc.encode_rendered(rendered)
    runs, whole = trained_runs(tokenizer, encoded)
    assert runs == QWEN_TRAINED
    assert whole == rendered.text
    # The turn markers and tool output stay masked.
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>")}
    assert not encoded.loss_mask[encoded.tokens == ids["<|im_start|>"]].any()
    assert encoded.loss_mask[encoded.tokens == ids["<|im_end|>"]].tolist() == [
        0, 0, 1, 0, 1, 0, 1]  # system, user, a1, user, a2, tool results, a3


def test_a_tokenizer_directory_template_wins_and_masks_still_hold(other_tokenizer_dir):
    tok = load_tokenizer(other_tokenizer_dir)
    enc = TrajectoryEncoder(tok)
    assert enc.template == OTHER_TEMPLATE
    rendered = enc.render(TRAJ)
    assert rendered.text.startswith("<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\n")
    assert rendered.trained_text() == OTHER_TRAINED
    runs, whole = trained_runs(tok, enc.encode_rendered(rendered))
    assert runs == OTHER_TRAINED and whole == rendered.text


def test_final_turn_only_and_masked_earlier_reasoning(tokenizer, other_tokenizer_dir):
    final = render_with_spans(TRAJ["messages"], TRAJ["tools"],
                              options=MaskOptions(train_on="final_turn"))
    assert final.trained_text() == QWEN_TRAINED[-1:]
    no_reasoning = render_with_spans(TRAJ["messages"], TRAJ["tools"],
                                     options=MaskOptions(mask_earlier_reasoning=True))
    assert no_reasoning.trained_text() == ["early answer<|im_end|>", CALL + "<|im_end|>",
                                           QWEN_TRAINED[-1]]
    other = render_with_spans(TRAJ["messages"], TRAJ["tools"], template=OTHER_TEMPLATE,
                              options=MaskOptions(mask_earlier_reasoning=True))
    assert other.trained_text() == [
        "early answer<|im_end|>",
        '<tool_call>{"name": "run", "arguments": {"cmd": "ls -l"}}</tool_call><|im_end|>',
        "It is file.txt.<|im_end|>"]


@pytest.mark.parametrize("domain", sorted(synth.DOMAINS))
def test_generation_blocks_find_the_same_spans_as_prefix_rendering(domain, tokenizer):
    """The fast path (one rendering with generation blocks) against the slow, template-agnostic
    one, on synthetic trajectories with failed calls, parallel calls and recoveries."""
    enc = TrajectoryEncoder(tokenizer)
    for index in range(3):
        traj = validate(synth.make_trajectory(domain, 4 + index, seed=1, index=index))
        for options in (MaskOptions(), MaskOptions(mask_earlier_reasoning=True),
                        MaskOptions(train_on="final_turn")):
            fast = render_with_spans(traj["messages"], traj["tools"], options=options)
            slow = render_with_spans(traj["messages"], traj["tools"], options=options,
                                     use_generation_blocks=False)
            assert fast == slow
        encoded = enc(traj)
        runs, whole = trained_runs(tokenizer, encoded)
        assistants = [m for m in traj["messages"] if m["role"] == "assistant"]
        assert len(runs) == len(assistants)
        for run, msg in zip(runs, assistants):
            assert run.startswith(msg["reasoning_content"] + "\n</think>\n\n")
            assert run.endswith("<|im_end|>")
        assert runs[-1].endswith(f"Final answer: {synth.final_answer(traj)}<|im_end|>")
        assert whole == fast.text
        assert encoded.tokens.dtype == np.int32 and encoded.loss_mask.dtype == np.int32


def test_both_ways_agree_on_multi_turn_history():
    """Turns before the last user query (rendered without reasoning) too."""
    for options in (MaskOptions(), MaskOptions(mask_earlier_reasoning=True),
                    MaskOptions(train_on="final_turn")):
        fast = render_with_spans(TRAJ["messages"], TRAJ["tools"], options=options)
        slow = render_with_spans(TRAJ["messages"], TRAJ["tools"], options=options,
                                 use_generation_blocks=False)
        assert fast == slow


def test_a_qwen_template_without_generation_blocks_takes_two_renderings(monkeypatch):
    """A template of a1jax's family without generation blocks (as a Qwen3.5 download carries):
    recognised, its masks equal the prefix method's, in a fixed number of renderings; a
    template of another family keeps the prefix method."""
    import re

    from a1jax.data import chat_template, masks

    stripped = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", chat_template.default_template())
    assert masks.renders_like_ours(stripped)
    assert not masks.renders_like_ours(OTHER_TEMPLATE)
    trajectories = [TRAJ] + [validate(synth.make_trajectory(d, 6, seed=2, index=i))
                             for d in sorted(synth.DOMAINS) for i in range(2)]
    for traj in trajectories:
        for options in (MaskOptions(), MaskOptions(mask_earlier_reasoning=True),
                        MaskOptions(train_on="final_turn")):
            fast = render_with_spans(traj["messages"], traj["tools"], template=stripped,
                                     options=options)
            slow = render_with_spans(traj["messages"], traj["tools"], template=stripped,
                                     options=options, use_generation_blocks=False)
            assert fast == slow
    renders = []
    real = masks.render_jinja_template
    monkeypatch.setattr(masks, "render_jinja_template",
                        lambda **kw: renders.append(1) or real(**kw))
    monkeypatch.setattr(chat_template, "render_jinja_template",
                        lambda **kw: renders.append(1) or real(**kw))
    traj = trajectories[-1]
    render_with_spans(traj["messages"], traj["tools"], template=stripped)
    assert len(renders) == 2
    renders.clear()
    render_with_spans(traj["messages"], traj["tools"], template=stripped,
                      use_generation_blocks=False)
    assert len(renders) == 1 + sum(m["role"] == "assistant" for m in traj["messages"])
