"""Tokenizers from local Hugging Face directories, and trajectories to (tokens, loss mask).

`load_tokenizer` opens any Hugging Face tokenizer directory offline (a Qwen3.5 download, an
exported a1jax checkpoint, or the small tokenizer a1jax ships in `assets/tokenizer`, trained by
`a1jax.data.train_tokenizer`). `TrajectoryEncoder` renders a trajectory with the tokenizer's own
chat template (a1jax's Qwen3.5 one if it has none), locates the assistant spans (`masks`) and
tokenizes the trained and untrained pieces separately, so a token never straddles a span boundary:
the trained tokens decode to exactly the assistant's text, as a served model would have generated
it after the prompt.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from a1jax.data import chat_template
from a1jax.data.masks import MaskOptions, Rendered, render_with_spans
from a1jax.errors import A1Error

# The Qwen3.5 special tokens the chat format uses (their ids in the real vocabulary are listed in
# shared/design/data.md).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
                  "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")

SHIPPED_TOKENIZER_DIR = Path(__file__).parent / "assets" / "tokenizer"


def load_tokenizer(path: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer in local directory `path` (default: the one a1jax ships); never downloads."""
    path = Path(path) if path is not None else SHIPPED_TOKENIZER_DIR
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"{path}: not a tokenizer directory "
                                "(no tokenizer.json or tokenizer_config.json)")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if not tok.is_fast:
        raise ValueError(f"{path}: a1jax needs a fast (tokenizer.json) tokenizer")
    return tok


class TokenizerMismatch(A1Error):
    """A model read with other token ids than it was trained with."""


def tokenizer_digest(path: str | Path | None = None) -> str | None:
    """sha256 of tokenizer directory `path`'s tokenizer.json (default: the shipped one), None
    without one. Checkpoints record it: the shipped tokenizer is retrained whenever synth's text
    gains words, and a model read with the new one would decode nonsense without any error."""
    file = (Path(path) if path else SHIPPED_TOKENIZER_DIR) / "tokenizer.json"
    return hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else None


def check_tokenizer(recorded: str | None, path: str | Path | None, what: str, fix: str) -> None:
    """Raises TokenizerMismatch if `recorded` (a checkpoint's `tokenizer_sha256`) is not the
    digest of tokenizer `path` (None: the shipped one). Checkpoints written before the digest
    was recorded (None) cannot be checked."""
    now = tokenizer_digest(path)
    if recorded and now and recorded != now:
        raise TokenizerMismatch(
            f"{what} was trained with another tokenizer than {path or 'the one a1jax ships'} "
            f"(tokenizer.json sha256 {recorded[:12]} there, {now[:12]} here; a1jax's own is "
            f"retrained when its synthetic data changes): {fix}")


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One trajectory as int32 `tokens` [L] and `loss_mask` [L] (1 = an assistant token)."""

    tokens: np.ndarray
    loss_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)


class TrajectoryEncoder:
    """Validated trajectory -> rendered text with spans -> tokens and loss mask."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, template: str | None = None,
                 options: MaskOptions | None = None):
        self.tokenizer = tokenizer
        self.template = template if template is not None else chat_template.template_for(tokenizer)
        if options is None:
            # Turns end with <|im_end|> in ChatML-family formats; otherwise with the tokenizer's
            # end-of-sequence token.
            eot = "<|im_end|>" if "<|im_end|>" in tokenizer.get_vocab() else tokenizer.eos_token
            options = MaskOptions(end_of_turn=eot or "<|im_end|>")
        self.options = options
        # The Rust tokenizer directly: one call per piece without the Python wrapper's overhead.
        self._backend = tokenizer.backend_tokenizer

    def render(self, trajectory: dict[str, Any]) -> Rendered:
        return render_with_spans(trajectory["messages"], trajectory.get("tools"),
                                 template=self.template, options=self.options)

    def encode_rendered(self, rendered: Rendered) -> Encoded:
        pieces = rendered.segments()
        encodings = self._backend.encode_batch([text for text, _ in pieces],
                                               add_special_tokens=False)
        ids = [np.asarray(e.ids, np.int32) for e in encodings]
        masks = [np.full(len(e.ids), int(trained), np.int32)
                 for e, (_, trained) in zip(encodings, pieces)]
        return Encoded(np.concatenate(ids) if ids else np.zeros(0, np.int32),
                       np.concatenate(masks) if masks else np.zeros(0, np.int32))

    def __call__(self, trajectory: dict[str, Any]) -> Encoded:
        return self.encode_rendered(self.render(trajectory))
