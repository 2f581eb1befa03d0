"""`python -m a1jax.data.inspect`: what the model learns from, token-exact."""

import json

import pytest

from a1jax.data import inspect as inspect_cli
from a1jax.data.tokenizer import load_tokenizer
from a1jax.errors import A1Error

TRAJ = {"id": "demo-1", "domain": "demo", "messages": [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4", "reasoning_content": "add"}]}
TEXT = ("<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nadd\n</think>\n\n4<|im_end|>\n")


def write(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(json.dumps(TRAJ).encode() + b"\n" + b'{"id": "x", "domain": "d"}\n')
    return path


def test_json_records(tmp_path, capsys):
    path = write(tmp_path)
    assert inspect_cli.main(["--input", str(path), "--json"]) == 1  # line 2 is invalid
    out, err = capsys.readouterr()
    record = json.loads(out)
    tok = load_tokenizer()
    trained = "add\n</think>\n\n4<|im_end|>"
    assert record == {"id": "demo-1", "text": TEXT, "trained_text": [trained],
                      "num_tokens": len(tok.encode(TEXT, add_special_tokens=False)),
                      "num_trained": len(tok.encode(trained, add_special_tokens=False))}
    assert err == f"error: {path}:2: trajectory 'x': 'messages' must be a non-empty list\n"


def test_marked_text_and_final_turn_option(tmp_path, capsys):
    path = write(tmp_path)
    inspect_cli.main(["--input", str(path)])
    lines = capsys.readouterr().out.split("\n", 1)
    assert lines[0].startswith("=== demo-1 (demo): ")
    assert lines[0].endswith("trained text in ⟦⟧")
    assert lines[1] == ("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n"
                        "⟦add\n</think>\n\n4<|im_end|>⟧\n\n")
    inspect_cli.main(["--input", str(path), "--json", "--mask-earlier-reasoning"])
    # a single turn is the final one: its reasoning stays trained
    assert json.loads(capsys.readouterr().out)["trained_text"] == ["add\n</think>\n\n4<|im_end|>"]


def test_missing_tokenizer_is_a_user_error(tmp_path):
    with pytest.raises(A1Error) as e:
        inspect_cli.main(["--input", str(write(tmp_path)), "--tokenizer", str(tmp_path / "nope")])
    assert str(e.value) == (f"cannot load tokenizer: {tmp_path / 'nope'}: not a tokenizer "
                            "directory (no tokenizer.json or tokenizer_config.json)")
