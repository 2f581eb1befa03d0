r"""`python -m a1jax.export`: servable Hugging Face directories, and HF -> a1jax -> HF round trips."""

import json
import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors import safe_open

from a1jax import cli, export as export_cli
from a1jax.convert import hf_export, hf_import, orbax_io, safetensors_stream
from a1jax.model import get_preset
from a1jax.score import score
from tests.convert.helpers import (flat, hf_tensors, read_hf_tensors, vl_dir, write_checkpoint,
                                   write_hf_dir)

TINY = get_preset("tiny")
TOKENS = np.random.RandomState(0).randint(0, TINY.vocab_size, (2, 24))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A run workdir whose checkpoints/ root holds a random tiny model at step 7."""
    workdir = tmp_path_factory.mktemp("run")
    params = write_checkpoint(workdir / "checkpoints", TINY, step=7)
    return workdir, params


def _transformers(path, **kwargs):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        str(path), attn_implementation="eager", output_loading_info=True, **kwargs)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(),
                    "error_msgs": []}, info
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(TOKENS).long(), use_cache=False).logits
    return model, logits.float().numpy()


def test_fp32_export_loads_in_transformers_with_the_same_logits(checkpoint, tmp_path):
    workdir, params = checkpoint
    out = tmp_path / "hf"
    limit = 200_000
    result = hf_export.export(str(workdir), str(out), dtype="float32", max_shard_bytes=limit)
    assert result.num_shards > 3
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert sorted(set(index["weight_map"].values())) == files
    assert index["metadata"]["total_size"] == result.bytes_written
    for f in out.glob("*.safetensors"):
        with safe_open(str(f), framework="numpy") as st:
            sizes = [st.get_tensor(n).nbytes for n in st.keys()]
        assert sum(sizes) <= limit or len(sizes) == 1, f.name
    assert "model.layers.0.mlp.experts.gate_up_proj" in index["weight_map"]  # fused experts

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen3_5_moe_text"
    assert config["architectures"] == ["Qwen3_5MoeForCausalLM"]
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 1e7,
                                         "partial_rotary_factor": 0.25}
    assert config["layer_types"] == list(TINY.layer_types)
    generation = json.loads((out / "generation_config.json").read_text())
    assert {k: generation[k] for k in ("do_sample", "temperature", "top_p", "top_k")} == \
        {"do_sample": True, "temperature": 0.85, "top_p": 0.95, "top_k": 20}
    assert generation["eos_token_id"] == TINY.eos_token_id
    assert not list(tmp_path.glob(".*partial"))

    _, theirs = _transformers(out, dtype=torch.float32)
    step = orbax_io.resolve_step_dir(workdir)
    ours, _ = score(TINY, {k: v for k, v in _nested(dict(orbax_io.iter_params(step))).items()},
                    TOKENS)
    assert np.abs(ours - theirs).max() < 1e-4


def test_bf16_export_within_bf16_tolerance(checkpoint, tmp_path):
    workdir, params = checkpoint
    out = tmp_path / "hf"
    hf_export.export(str(workdir / "checkpoints" / "7"), str(out))  # bfloat16 by default
    tensors = read_hf_tensors(out)
    assert {dtype for dtype, _, _ in tensors.values()} == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    _, theirs = _transformers(out, dtype=torch.float32)
    # The bf16 export is the fp32 weights rounded to nearest (bit for bit: the fp32 export of
    # the rounded weights, cast), and a1jax on those rounded weights gives the same logits.
    rounded = _nested({k: v.astype(ml_dtypes.bfloat16).astype(np.float32)
                       for k, v in flat(params).items()})
    emb = tensors["model.embed_tokens.weight"][2]
    assert emb == np.asarray(params["embed_tokens"]).astype(ml_dtypes.bfloat16).tobytes()
    np.testing.assert_allclose(score(TINY, rounded, TOKENS)[0], theirs, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_hf_to_a1jax_to_hf_is_bit_exact(tmp_path, dtype):
    src = write_hf_dir(tmp_path / "src", hf_tensors(TINY, dtype), TINY.to_hf_dict(), shards=3)
    hf_import.import_hf(str(src), str(tmp_path / "ckpt"), layout="expert")
    name = "float32" if dtype == np.float32 else "bfloat16"
    hf_export.export(str(tmp_path / "ckpt"), str(tmp_path / "out"), dtype=name)
    assert read_hf_tensors(tmp_path / "out") == read_hf_tensors(src)


def test_source_carries_untrained_tensors_over_in_the_full_layout(tmp_path):
    src = vl_dir(tmp_path / "src", TINY)
    hf_import.import_hf(str(src), str(tmp_path / "ckpt"))
    result = hf_export.export(str(tmp_path / "ckpt"), str(tmp_path / "out"), source=str(src),
                              max_shard_bytes=300_000)
    assert len(result.carried_over) == 4
    # Text model and carried-over tensors alike: same names, dtypes, shapes and bytes.
    assert read_hf_tensors(tmp_path / "out") == read_hf_tensors(src)
    source_config = json.loads((src / "config.json").read_text())
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert {k: v for k, v in config.items() if k not in ("text_config", "dtype")} == \
        {k: v for k, v in source_config.items() if k != "text_config"}
    assert config["text_config"] == {**TINY.to_hf_dict(), "architectures": ["Qwen3_5MoeForCausalLM"]}


def test_interrupted_export_never_looks_complete(checkpoint, tmp_path, monkeypatch):
    workdir, _ = checkpoint
    out = tmp_path / "hf"
    real = safetensors_stream.write_shard
    calls = []

    def dies_on_the_second_shard(path, shard):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(path, shard)

    monkeypatch.setattr(safetensors_stream, "write_shard", dies_on_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        hf_export.export(str(workdir), str(out), max_shard_bytes=200_000)
    assert not out.exists()
    monkeypatch.setattr(safetensors_stream, "write_shard", real)
    hf_export.export(str(workdir), str(out), max_shard_bytes=200_000)  # the leftover is replaced
    assert (out / "model.safetensors.index.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def test_export_cli(checkpoint, tmp_path, capsys):
    """`python -m a1jax.export` (its main, in process: a subprocess would re-import jax)."""
    workdir, _ = checkpoint
    argv = ["--checkpoint", str(workdir), "--out", str(tmp_path / "hf"), "--dtype", "float32"]
    with pytest.raises(SystemExit) as info:
        cli.run(export_cli.main, argv)
    assert info.value.code == 0
    assert "exported 69 tensors" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        cli.run(export_cli.main, argv)
    assert (info.value.code, capsys.readouterr().err) == \
        (2, f"error: {tmp_path / 'hf'} already exists\n")


def _nested(flat_params):
    out = {}
    for path, value in flat_params.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out
