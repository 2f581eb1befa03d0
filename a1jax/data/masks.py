"""Which characters of a rendering the assistant produced: the loss mask, for any template.

The trained text of an assistant turn is what the served model generates for it: everything after
the generation prompt up to and including the end-of-turn marker (`<|im_end|>`). For the Qwen3.5
format that is `{reasoning}\\n</think>\\n\\n{content}{tool calls}<|im_end|>`: reasoning, content,
tool calls and the closing marker, while the `<|im_start|>assistant\\n<think>\\n` scaffolding, the
system, user and tool turns and the newline after `<|im_end|>` stay masked.

Nothing here knows the template's markup. The turn boundaries come from rendering message
prefixes: for assistant message j, the conversation is rendered once whole, and once as
`messages[:j]` with the generation prompt; when the whole rendering starts with that prompt, the
turn starts right after it. A template may render history differently from a fresh prompt (the
Qwen3.5 one drops the reasoning of turns before the last user query); for those turns the start is
where the whole rendering first differs from one with message j emptied, so such a turn is
trained as the history shows it (the Qwen3.5 format: its content and calls, no reasoning). The
turn ends at the first end-of-turn marker from its start (`schema` forbids the marker inside
message text).

That costs a rendering of a prefix per assistant turn: quadratic in the trajectory's length
(seconds at 64K tokens). A template that marks the generated text with transformers'
`{% generation %}` blocks (a1jax's does, at the same places) gives the starts from one rendering
instead; tests check that both ways find identical spans. A template without them that renders
like a1jax's (a Qwen3.5 download's own: checked once on probe conversations, then per trajectory
byte for byte) borrows the starts of a1jax's rendering: two renderings.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Sequence

from jinja2.exceptions import TemplateError
from transformers.utils.chat_template_utils import render_jinja_template

from a1jax.data import chat_template
from a1jax.errors import A1Error

# How transformers recognises a template with generation blocks.
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")

TRAIN_ON = ("all", "final_turn")


class MaskError(A1Error):
    """A rendering whose assistant turns cannot be located (a template a1jax cannot mask)."""


@dataclasses.dataclass(frozen=True)
class MaskOptions:
    """What to train on.

    train_on: "all" assistant turns, or only the "final_turn" (the last assistant message).
    mask_earlier_reasoning: also mask the reasoning (and the think-closing tag after it) of every
      assistant turn but the last, for experiments.
    end_of_turn: the marker that ends an assistant turn (trained: it is how the model stops).
    think_close: the tag that closes reasoning, skipped with it under mask_earlier_reasoning.
    """

    train_on: str = "all"
    mask_earlier_reasoning: bool = False
    end_of_turn: str = "<|im_end|>"
    think_close: str = "</think>"

    def __post_init__(self):
        if self.train_on not in TRAIN_ON:
            raise ValueError(f"train_on must be one of {TRAIN_ON}, got {self.train_on!r}")


@dataclasses.dataclass(frozen=True)
class Rendered:
    """A rendered trajectory and the [start, end) character spans the model is trained on."""

    text: str
    spans: tuple[tuple[int, int], ...]

    def segments(self) -> list[tuple[str, bool]]:
        """The text cut at span boundaries, in order, as (piece, trained) pairs; empty pieces
        are left out, and the pieces join back to `text`."""
        out, pos = [], 0
        for start, end in self.spans:
            if start > pos:
                out.append((self.text[pos:start], False))
            out.append((self.text[start:end], True))
            pos = end
        if pos < len(self.text):
            out.append((self.text[pos:], False))
        return out

    def trained_text(self) -> list[str]:
        return [self.text[s:e] for s, e in self.spans]


def render_with_spans(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None,
                      *, template: str | None = None, options: MaskOptions = MaskOptions(),
                      use_generation_blocks: bool = True) -> Rendered:
    """Renders a validated trajectory and locates the text each assistant turn produced.

    With `use_generation_blocks` (and a template that has them) the turn starts come from one
    rendering; otherwise, or if the blocks do not match the assistant messages one to one, from
    rendering prefixes, which works for any template.
    """
    messages = list(messages)
    template = template if template is not None else chat_template.default_template()
    turns = [j for j, m in enumerate(messages) if m["role"] == "assistant"]
    starts = None
    if use_generation_blocks and _GENERATION_TAG.search(template):
        text, starts = _generation_starts(messages, tools, template, len(turns))
    elif use_generation_blocks and renders_like_ours(template):
        # A template of a1jax's family without generation blocks (a Qwen3.5 download's own):
        # when ours, which has them, renders this conversation to the same text, byte for
        # byte, its turn starts are this template's. Two renderings instead of one a turn.
        # Turns before the last user query are history, rendered differently from a fresh
        # prompt; their starts still come from rendering (usually there are none).
        text = chat_template.render(messages, tools, template=template)
        ours, ours_starts = _generation_starts(messages, tools, chat_template.default_template(),
                                               len(turns))
        if ours == text and ours_starts is not None:
            last_query = _last_user(messages)
            starts = [start if j > last_query else _turn_start(text, messages, tools, template, j)
                      for j, start in zip(turns, ours_starts)]
    if starts is None:
        text = chat_template.render(messages, tools, template=template)
        starts = [_turn_start(text, messages, tools, template, j) for j in turns]
    chosen = list(zip(turns, starts))
    if options.train_on == "final_turn":
        chosen = chosen[-1:]
    spans, last_end = [], 0
    for j, start in chosen:
        end = text.find(options.end_of_turn, start)
        if start < last_end or end < 0:
            raise MaskError(f"cannot locate assistant message {j} in the rendering "
                            f"(end-of-turn marker {options.end_of_turn!r})")
        end += len(options.end_of_turn)
        if options.mask_earlier_reasoning and j != turns[-1]:
            start = _after_reasoning(text, start, end, messages[j], options.think_close)
        spans.append((start, end))
        last_end = end
    return Rendered(text, tuple(spans))


@functools.lru_cache(maxsize=8)
def renders_like_ours(template: str) -> bool:
    """Whether a template without generation blocks renders like a1jax's Qwen3.5 one: on probe
    conversations (calls that fail and are retried, parallel calls, history before a second user
    query), the same text, and the same turn starts when found by rendering prefixes. Checked
    once per template; each trajectory is then still compared byte for byte."""
    ours = chat_template.default_template()
    for messages, tools in _probes():
        try:
            theirs = chat_template.render(messages, tools, template=template)
        except chat_template.RenderError:
            return False
        turns = [j for j, m in enumerate(messages) if m["role"] == "assistant"]
        text, starts = _generation_starts(messages, tools, ours, len(turns))
        fresh = [(j, start) for j, start in zip(turns, starts or []) if j > _last_user(messages)]
        if text != theirs or starts is None or any(
                start != _turn_start(theirs, messages, tools, template, j) for j, start in fresh):
            return False
    return True


def _last_user(messages: list) -> int:
    return max((j for j, m in enumerate(messages) if m["role"] == "user"), default=-1)


def _probes() -> list[tuple[list, list]]:
    from a1jax.data import synth
    from a1jax.data.schema import validate

    probes = [validate(synth.make_trajectory(d, 3, seed=7, index=1)) for d in synth.DOMAINS]
    history = validate(synth.make_trajectory("calculator", 5, seed=7, index=2))
    first = [m for m in history["messages"] if m["role"] != "system"][:3]
    follow_up = {"role": "user", "content": "Now do it again, checking each step."}
    history["messages"] = history["messages"][:1] + first + [follow_up] + history["messages"][1:]
    return [(p["messages"], p["tools"]) for p in probes + [history]]


def _generation_starts(messages: list, tools, template: str,
                       n_turns: int) -> tuple[str, list[int] | None]:
    try:
        (text,), (blocks,) = render_jinja_template(
            conversations=[messages], tools=list(tools) if tools else None,
            chat_template=template, return_assistant_tokens_mask=True)
    except (TemplateError, TypeError) as e:
        raise chat_template.RenderError(f"the chat template refused the messages: {e}") from None
    if len(blocks) != n_turns:  # not one block per assistant message: fall back to prefixes
        return text, None
    return text, [start for start, _ in blocks]


def _turn_start(text: str, messages: list, tools, template: str | None, j: int) -> int:
    try:
        prompt = chat_template.render(messages[:j], tools, template=template,
                                      add_generation_prompt=True)
    except chat_template.RenderError:
        prompt = None  # e.g. a template that refuses a prefix with no user query yet
    if prompt is not None and text.startswith(prompt):
        return len(prompt)
    emptied = list(messages)
    emptied[j] = {"role": "assistant", "content": ""}
    other = chat_template.render(emptied, tools, template=template)
    n = min(len(text), len(other))
    k = 0
    while k < n and text[k] == other[k]:
        k += 1
    return k


def _after_reasoning(text: str, start: int, end: int, message: dict, think_close: str) -> int:
    """The first position of a turn's span after its reasoning and the tag that closes it."""
    reasoning = message.get("reasoning_content")
    if not isinstance(reasoning, str):
        content = message.get("content") or ""
        reasoning = content.split(think_close)[0].split("<think>")[-1] if think_close in content \
            else ""
    reasoning = reasoning.strip()
    pos = start
    if reasoning:
        found = text.find(reasoning, start, end)
        if found < 0:  # a turn rendered without its reasoning has none to mask
            return start
        pos = found + len(reasoning)
    close = re.compile(r"\s*" + re.escape(think_close) + r"\s*").match(text, pos, end)
    return close.end() if close else pos

