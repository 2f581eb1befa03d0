"""`python -m a1jax.generate` on a directory transformers wrote: greedy tokens equal
transformers' own `generate`."""

import json

import numpy as np
import pytest
import torch

from a1jax import generate
from a1jax.errors import A1Error
from a1jax.model import get_preset
from a1jax.data.tokenizer import SHIPPED_TOKENIZER_DIR, load_tokenizer
from tests.conftest import hf_model, random_params


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    config = get_preset("tiny")
    model = hf_model(config, random_params(config, seed=3))
    path = tmp_path_factory.mktemp("hf") / "tiny"
    model.save_pretrained(str(path))
    return path, model


def test_greedy_generate_equals_transformers(hf_dir, tmp_path):
    path, model = hf_dir
    rng = np.random.RandomState(0)
    prompts = [rng.randint(3, 512, n).tolist() for n in (7, 20, 13)]  # ragged
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    out = tmp_path / "out.json"
    assert generate.main(["--model", str(path), "--prompt-tokens", str(tmp_path / "prompts.json"),
                          "--max-new-tokens", "64", "--greedy", "--out", str(out)]) == 0
    ours = json.loads(out.read_text())
    eos = model.config.eos_token_id
    for i, prompt in enumerate(prompts):
        with torch.no_grad():
            theirs = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=64,
                                    eos_token_id=eos, pad_token_id=0)[0, len(prompt):].tolist()
        assert ours["tokens"][i] == theirs
        assert ours["finish_reason"][i] == ("stop" if theirs[-1] == eos else "length")
        assert len(ours["logprobs"][i]) == len(theirs)
        assert all(lp <= 0 for lp in ours["logprobs"][i])


def test_generate_on_a_mesh_returns_the_same_tokens(hf_dir, tmp_path):
    path, _ = hf_dir
    prompts = [[5, 9, 200, 31], [7, 7, 8], [300, 1, 2, 3, 4, 5]]
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    outs = []
    for mesh in ([], ["--mesh", "data=2,expert=2"]):
        out = tmp_path / f"out{len(mesh)}.json"
        assert generate.main(["--model", str(path), "--prompt-tokens",
                              str(tmp_path / "prompts.json"), "--max-new-tokens", "8",
                              "--greedy", "--out", str(out)] + mesh) == 0
        outs.append(json.loads(out.read_text()))
    assert outs[0]["tokens"] == outs[1]["tokens"]  # 3 prompts padded to 4 rows on the mesh
    with pytest.raises(A1Error) as e:
        generate.main(["--model", str(path), "--prompt-tokens", str(tmp_path / "prompts.json"),
                       "--out", str(tmp_path / "x.json"), "--mesh", "data=0"])
    assert str(e.value) == "mesh: axis sizes must be positive, got 'data=0'"


def test_generate_a_chat_reply(hf_dir, tmp_path, capsys):
    """--messages renders the chat (tools included) with the tokenizer's template, generates
    and prints the reply decoded; a tokenizer larger than the model's vocabulary is refused."""
    path, _ = hf_dir
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "2 + 2?"}], "tools": [
        {"type": "function", "function": {"name": "calculator", "parameters": {
            "type": "object", "properties": {"expression": {"type": "string"}}}}}]}))
    with pytest.raises(A1Error) as e:
        generate.main(["--model", str(path), "--messages", str(chat)])
    assert str(e.value) == ("the tokenizer has 1490 tokens but the model's vocabulary 512: "
                            "pass the model's own tokenizer (--tokenizer)")
    config = get_preset("tiny").replace(vocab_size=4096, eos_token_id=None)
    model_dir = tmp_path / "tiny4096"
    hf_model(config, random_params(config, seed=2)).save_pretrained(str(model_dir))
    out = tmp_path / "reply.json"
    capsys.readouterr()
    assert generate.main(["--model", str(model_dir), "--messages", str(chat), "--tokenizer",
                          str(SHIPPED_TOKENIZER_DIR), "--max-new-tokens", "12", "--greedy",
                          "--out", str(out)]) == 0
    reply = json.loads(out.read_text())
    assert len(reply["tokens"][0]) == 12 and reply["finish_reason"] == ["length"]
    text = load_tokenizer().decode(reply["tokens"][0], skip_special_tokens=False)
    assert f"reply (length):\n{text}\n" in capsys.readouterr().out


@pytest.mark.parametrize("rows,message", [
    ([[1, 2], []], "row 1 is empty"),
    ([[1, 600]], "row 0, position 1: 600 is not a token id in [0, 512)"),
    ({"a": 1}, "expected a non-empty JSON list of token-id lists"),
])
def test_bad_prompt_files(tmp_path, rows, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(A1Error) as e:
        generate.read_prompts(str(path), 512)
    assert str(e.value) == f"{path}: {message}"
