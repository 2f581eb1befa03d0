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
instead; tests check that both ways find identical spans.
"""

from __future__ import annotations

import dataclasses
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

