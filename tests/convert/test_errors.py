r"""Bad input to from-hf and export: one `error: ...` line, exit status 2, nothing that looks
complete left behind."""

import json

import numpy as np
import pytest

from a1jax import cli, export
from a1jax.convert import __main__ as convert_main, orbax_io
from a1jax.model import get_preset
from tests.conftest import random_params
from tests.convert.helpers import hf_tensors, write_checkpoint, write_hf_dir

TINY = get_preset("tiny")


def _error(main, argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.run(main, argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err[len("error: "):].strip()


@pytest.fixture(scope="module")
def tensors():
    return hf_tensors(TINY)


def _hf(tmp_path, tensors, name="hf", **kwargs):
    return write_hf_dir(tmp_path / name, dict(tensors), TINY.to_hf_dict(), **kwargs)


def _from_hf(src, out, capsys, *extra):
    message = _error(convert_main.main, ["from-hf", "--hf", str(src), "--out", str(out), *extra],
                     capsys)
    assert orbax_io.latest_step_dir(out) is None  # no step that looks complete
    return message


def test_import_missing_shard_and_index_naming_a_missing_file(tmp_path, tensors, capsys):
    src = _hf(tmp_path, tensors)
    (src / "model.safetensors").unlink()
    assert _from_hf(src, tmp_path / "a", capsys) == \
        f"{src}: no model.safetensors or model.safetensors.index.json"
    src = _hf(tmp_path, tensors, "sharded", shards=2)
    (src / "model-00002-of-00002.safetensors").unlink()
    assert _from_hf(src, tmp_path / "b", capsys) == (
        f"{src}: model.safetensors.index.json names model-00002-of-00002.safetensors, which "
        "does not exist")


def test_import_truncated_shard(tmp_path, tensors, capsys):
    src = _hf(tmp_path, tensors, shards=2)
    shard = src / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    assert _from_hf(src, tmp_path / "out", capsys).startswith(f"{src}: cannot read tensor ")


def test_import_shape_dtype_and_unknown_tensors(tmp_path, tensors, capsys):
    bad = dict(tensors, **{"model.norm.weight": np.zeros(3, np.float32)})
    assert _from_hf(_hf(tmp_path, bad, "shape"), tmp_path / "a", capsys) == (
        f"{tmp_path / 'shape'}: tensor model.norm.weight has shape [3] but the config gives it "
        "[64]")
    bad = dict(tensors, **{"model.norm.weight": np.zeros(64, np.int32)})
    assert _from_hf(_hf(tmp_path, bad, "dtype"), tmp_path / "b", capsys) == (
        f"{tmp_path / 'dtype'}: tensor model.norm.weight has dtype I32; expected one of F32, "
        "BF16, F16")
    bad = dict(tensors, **{"model.layers.0.extra.weight": np.zeros(3, np.float32)})
    assert _from_hf(_hf(tmp_path, bad, "unknown"), tmp_path / "c", capsys) == (
        f"{tmp_path / 'unknown'}: unknown tensor model.layers.0.extra.weight: not part of this "
        "model")


def test_import_checks_the_preset_and_the_output(tmp_path, tensors, capsys):
    src = _hf(tmp_path, tensors)
    assert _from_hf(src, tmp_path / "a", capsys, "--model", "bench") == (
        f"{src / 'config.json'} is not model 'bench': vocab_size 512 vs 4096 (and 7 more)")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert _from_hf(src, tmp_path / "full", capsys) == \
        f"{tmp_path / 'full'} already exists and is not empty"
    assert _from_hf(src, tmp_path / "c", capsys, "--layout", "nope").startswith(
        "unknown layout 'nope'")


def test_export_checkpoint_of_another_preset(tmp_path, capsys):
    """Parameters of the tiny model under a meta that says `bench`: caught before writing."""
    root = tmp_path / "ckpt"
    orbax_io.write_params_checkpoint(root, 0, random_params(TINY),
                                     {"model_config": get_preset("bench").to_json_dict()})
    out = tmp_path / "hf"
    message = _error(export.main, ["--checkpoint", str(root), "--out", str(out)], capsys)
    assert message == (f"{root / '0'}: parameter embed_tokens has shape [512, 64] but the "
                       "checkpoint's model config gives it [4096, 256]")
    assert list(tmp_path.iterdir()) == [root]


def test_export_bad_paths_and_source_of_another_model(tmp_path, tensors, capsys):
    root = tmp_path / "ckpt"
    write_checkpoint(root, TINY)
    out = tmp_path / "hf"
    assert _error(export.main, ["--checkpoint", str(tmp_path / "nope"), "--out", str(out)],
                  capsys) == f"{tmp_path / 'nope'}: no such directory"
    bench = get_preset("bench")
    other = write_hf_dir(tmp_path / "other", {}, bench.to_hf_dict())
    (other / "model.safetensors").unlink()
    assert _error(export.main, ["--checkpoint", str(root), "--out", str(out), "--source",
                                str(other)], capsys) == (
        f"--source {other} is another model than the checkpoint {root / '0'}: vocab_size 512 "
        "vs 4096 (and 7 more)")
    assert _error(export.main, ["--checkpoint", str(root), "--out", str(out), "--tokenizer",
                                str(tmp_path)], capsys).startswith(f"tokenizer {tmp_path}: ")
    assert not out.exists() and not list(tmp_path.glob(".hf.partial/*.safetensors"))
