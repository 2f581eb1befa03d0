"""The tokenizer a1jax trains and ships, loaded offline as a Hugging Face directory."""

import json

import pytest
from transformers import AutoTokenizer

from a1jax.data import train_tokenizer
from a1jax.data.chat_template import default_template
from a1jax.data.tokenizer import SHIPPED_TOKENIZER_DIR, SPECIAL_TOKENS, load_tokenizer


def test_shipped_tokenizer_special_tokens_and_config():
    tok = load_tokenizer()
    # the corpus runs out of merges at 1,481; the models' 4,096-row embedding has room to spare
    assert len(tok) == 1490
    assert tok.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(range(1481, 1490))
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    config = json.loads((SHIPPED_TOKENIZER_DIR / "tokenizer_config.json").read_text())
    assert config["chat_template"] == default_template()
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    # special tokens are single tokens even next to text; byte-level BPE encodes anything
    ids = tok.encode("<|im_start|>assistant\n<think>\nÅh 😀\n</think>", add_special_tokens=False)
    assert ids[0] == 1482 and ids[-1] == 1485 and 1484 in ids
    assert tok.decode(ids) == "<|im_start|>assistant\n<think>\nÅh 😀\n</think>"


def test_names_and_stems_are_spelt_in_syllables():
    """`syllabify` keeps BPE from giving each name its own rare token (docs/recipe.md)."""
    tok = load_tokenizer()
    pieces = lambda text: tok.convert_ids_to_tokens(tok.encode(text, add_special_tokens=False))
    assert pieces('{"name": "Dr Rosanka Jomi"}') == [
        '{"', "name", '":', 'Ġ"', "Dr", "ĠRos", "an", "ka", "ĠJo", "mi", '"}']
    assert pieces("Reading /inbox/vipe_368.txt") == [
        "Reading", "Ġ/", "inbox", "/vi", "pe", "_", "3", "6", "8", ".txt"]
    assert train_tokenizer.syllabify("Dr Rosanka Jomi moved /inbox/vipe_3.txt to Marrow") == (
        "Dr Ros\nan\nka Jo\nmi moved /inbox/vi\npe_3.txt to Marrow")


def test_training_is_deterministic_and_loads_with_auto_tokenizer(tmp_path):
    corpus = list(train_tokenizer.synthetic_corpus(n_per_domain=4))
    for name in ("a", "b"):
        train_tokenizer.save(train_tokenizer.train(corpus, vocab_size=600), tmp_path / name)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json").read_bytes()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "a"), local_files_only=True)
    assert len(tok) == 600
    assert tok.convert_tokens_to_ids(["<|im_end|>", "</tool_response>"]) == [593, 599]
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n")


def test_shipped_tokenizer_is_what_the_script_trains(tmp_path):
    assert train_tokenizer.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "tokenizer.json").read_bytes() == (
        SHIPPED_TOKENIZER_DIR / "tokenizer.json").read_bytes()


def test_not_a_tokenizer_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a tokenizer directory"):
        load_tokenizer(tmp_path)
