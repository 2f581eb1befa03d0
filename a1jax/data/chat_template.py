"""The Qwen3.5 chat format: which template renders a trajectory, and rendering with it.

a1jax ships `templates/qwen3_5.jinja`, which renders the same bytes as the template of the
Qwen3.5 models (the format Agents-A1 is served with). Its rules:

- Turns are `<|im_start|>ROLE\\n...<|im_end|>\\n`; message content is whitespace-trimmed.
- With tools, the system turn is `# Tools\\n\\nYou have access to the following functions:\\n\\n
  <tools>`, one `tojson` line per tool (the whole `{"type": "function", "function": {...}}`
  object, keys in given order, `", "` / `": "` separators, non-ASCII kept), `\\n</tools>`, the
  fixed call-format instructions, then `\\n\\n` and the system text if there is any.
- Assistant turns after the last real user query are `<think>\\n{reasoning}\\n</think>\\n\\n
  {content}` (an empty think block included); earlier assistant turns drop their reasoning.
  Reasoning is `reasoning_content`, else the text before `</think>` in the content.
- Tool calls are `<tool_call>\\n<function=NAME>\\n<parameter=KEY>\\n{VALUE}\\n</parameter>\\n...
  </function>\\n</tool_call>`, after a blank line when there is content, one newline apart;
  strings verbatim, objects and arrays as JSON, other scalars as Python prints them.
- Consecutive `tool` messages become one user turn of `\\n<tool_response>\\n{content}\\n
  </tool_response>` blocks.
- The generation prompt is `<|im_start|>assistant\\n<think>\\n`, or with thinking off
  `<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n`.

A tokenizer directory that carries its own chat template (a real Qwen3.5 or Agents-A1 download
does) wins over ours, so training always renders in the model's own serving format. Rendering goes
through transformers' own template code (`render_jinja_template`, the function behind
`apply_chat_template`): `trim_blocks`, `lstrip_blocks`, its key-order-keeping `tojson`, and its
aliasing of reasoning fields, so a1jax and a transformers user get identical text.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

from jinja2.exceptions import TemplateError
from transformers.utils.chat_template_utils import render_jinja_template

from a1jax.errors import A1Error

TEMPLATE_PATH = Path(__file__).parent / "templates" / "qwen3_5.jinja"


class RenderError(A1Error):
    """The chat template refused the messages (its own `raise_exception`, or a type error)."""


@functools.cache
def default_template() -> str:
    """The Qwen3.5 chat template a1jax ships."""
    return TEMPLATE_PATH.read_text(encoding="utf-8")


def template_for(tokenizer: Any | None) -> str:
    """The template to render with: the tokenizer's own if it has one, else a1jax's Qwen3.5 one."""
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # several named templates: the unnamed one is the chat template
        own = own.get("default")
    return own if isinstance(own, str) and own.strip() else default_template()


def render(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None, *,
           template: str | None = None, add_generation_prompt: bool = False,
           enable_thinking: bool = True) -> str:
    """Renders `messages` (validated: tool-call arguments are objects) to the template's text.

    `enable_thinking` only changes the generation prompt of the Qwen3.5 template; it is passed to
    the template as a variable, as `apply_chat_template(..., enable_thinking=...)` does.
    Raises `RenderError` when the template refuses the messages.
    """
    try:
        rendered, _ = render_jinja_template(
            conversations=[list(messages)], tools=list(tools) if tools else None,
            chat_template=template if template is not None else default_template(),
            add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking)
    except (TemplateError, TypeError) as e:
        raise RenderError(f"the chat template refused the messages: {e}") from None
    return rendered[0]
