"""Trains the small byte-level BPE tokenizer a1jax ships for its demo and tests.

Nothing can be downloaded, so the project trains its own tokenizer on its own synthetic corpus
(`a1jax.data.synth`, rendered in the Qwen3.5 chat format). It has the Qwen3.5 design at a small
scale: NFC normalisation, the Qwen pre-tokenizer split, byte-level BPE (any text encodes), the
Qwen special tokens after the learned vocabulary, `<|im_end|>` as end of sequence and
`<|endoftext|>` as padding. It is written as a Hugging Face tokenizer directory (tokenizer.json,
tokenizer_config.json, and the chat template) that `transformers.AutoTokenizer` loads offline.

    python -m a1jax.data.train_tokenizer --out a1jax/data/assets/tokenizer --vocab-size 4096
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, \
    pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from a1jax import cli
from a1jax.data import args as argparsing
from a1jax.data import chat_template, synth
from a1jax.errors import A1Error
from a1jax.data.schema import validate
from a1jax.data.tokenizer import SHIPPED_TOKENIZER_DIR, SPECIAL_TOKENS

# The split Qwen's tokenizers apply before byte-level BPE: letters, single digits, punctuation
# runs, newlines and spaces kept apart, so merges never cross those boundaries.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Turn and think markers are special (skipped by `decode(skip_special_tokens=True)`); the tool
# tags are plain added tokens, as in the Qwen3.5 vocabulary.
_SPECIAL = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}


# A word made of two or more of synth's syllables: a name word or a file stem (no English word in
# synth's templates is one).
_INVENTED_WORD = re.compile(r"(?<![^\W\d_])(?:%s){2,}(?![^\W\d_])" % "|".join(
    sorted(synth._SYLLABLES, key=len, reverse=True)), re.IGNORECASE)


def _syllables(word: str) -> list[str]:
    """`word` cut into synth syllables (it is one of `_INVENTED_WORD`'s matches)."""
    for syllable in synth._SYLLABLES:
        if word.lower().startswith(syllable):
            if len(word) == len(syllable):
                return [word]
            rest = word[len(syllable):]
            if _INVENTED_WORD.fullmatch(rest) or rest.lower() in synth._SYLLABLES:
                return [word[:len(syllable)]] + _syllables(rest)
    raise ValueError(word)


def syllabify(text: str) -> str:
    """`text` with a newline between the syllables of every invented word ("Dr Jo\nfen").

    Why: trained on the words whole, BPE gives each syllable pair its own token ("ĠJofen"), and
    the thousands of names and stems become tokens seen a few dozen times in all of the SFT data,
    which the `tiny` model never learns to copy (docs/recipe.md, runs/recipe4;
    benchmarks/copy_tokens.py counts them). Split at training time only, the pre-tokenizer keeps
    the syllables apart, so no merge crosses them and an invented word encodes in syllable-sized
    pieces that every name and stem share. Encoding is unchanged (no separator is inserted then).
    """
    return _INVENTED_WORD.sub(lambda m: "\n".join(_syllables(m.group(0))), text)


def synthetic_corpus(n_per_domain: int = 120, seed: int = 0) -> Iterable[str]:
    """Rendered synthetic trajectories of every domain at a spread of horizons, `syllabify`d."""
    for domain in sorted(synth.DOMAINS):
        for k in range(n_per_domain):
            traj = validate(synth.make_trajectory(domain, 1 + 4 * (k % 8), seed, k))
            yield syllabify(chat_template.render(traj["messages"], traj["tools"]))


def train(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer of at most `vocab_size` entries, the special tokens last.

    Fewer when the corpus runs out of merges: the shipped one stops at 1,490 (its corpus is a few
    hundred template words and `syllabify`d names). The models keep a 4,096-row embedding, the
    rest unused, as Qwen3.5's 248,320 rows exceed its tokenizer's.
    """
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS), min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # Special tokens must not be learned as text: strip them from the training text.
    def clean(stream):
        for text in stream:
            for marker in SPECIAL_TOKENS:
                text = text.replace(marker, "\n")
            yield text
    tok.train_from_iterator(clean(texts), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=t in _SPECIAL, normalized=False)
                    for t in SPECIAL_TOKENS])
    return tok


def save(tok: Tokenizer, out: str | Path) -> PreTrainedTokenizerFast:
    """Writes `tok` as a Hugging Face tokenizer directory carrying a1jax's chat template."""
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                 pad_token="<|endoftext|>", model_max_length=262144,
                                 clean_up_tokenization_spaces=False)
    hf.chat_template = chat_template.default_template()
    # The template inside tokenizer_config.json (not a side file) and the generic class name keep
    # the directory readable by older transformers releases and by serving stacks too.
    hf.save_pretrained(str(out), save_jinja_files=False)
    config_path = Path(out) / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                           encoding="utf-8")
    return hf


def main(argv: list[str] | None = None) -> int:
    p = argparsing.ArgumentParser(prog="python -m a1jax.data.train_tokenizer",
                                  description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(SHIPPED_TOKENIZER_DIR))
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--n-per-domain", type=int, default=120)
    args = p.parse_args(argv)
    if args.vocab_size < 512:
        raise A1Error("--vocab-size must be at least 512 (256 bytes + merges + specials)")
    tok = train(synthetic_corpus(args.n_per_domain), args.vocab_size)
    save(tok, args.out)
    print(f"wrote a {tok.get_vocab_size()}-token tokenizer to {args.out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
