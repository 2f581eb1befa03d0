"""A model from a path, whatever it is: a Hugging Face directory or an a1jax checkpoint."""

from __future__ import annotations

import os

from a1jax.model import ModelConfig


def is_hf_dir(path: str) -> bool:
    """A Hugging Face directory (config.json), or a path that is no directory at all (the
    loader then says what is missing)."""
    return os.path.isfile(os.path.join(path, "config.json")) or not os.path.isdir(path)


def load_model(path: str, dtype: str = "float32") -> tuple[ModelConfig, dict]:
    """(config, params as host numpy) of a Hugging Face directory (any layout
    `a1jax.convert.hf_load` reads) or an a1jax checkpoint (a run workdir, its checkpoints/
    root: the latest step, or one step directory)."""
    if is_hf_dir(path):
        from a1jax.convert.hf_load import load_params, read_config

        config, params, report = load_params(path, read_config(path, dtype=dtype))
        if report.not_imported:
            print(f"not part of the text model, not loaded: {len(report.not_imported)} tensors "
                  f"(e.g. {report.not_imported[0]})")
        return config, params
    from a1jax.convert import orbax_io

    step_dir = orbax_io.resolve_step_dir(path)
    meta = orbax_io.read_meta(step_dir)
    config = ModelConfig.from_json_dict(meta["model_config"]).replace(dtype=dtype)
    params: dict = {}
    for leaf_path, array in orbax_io.iter_params(step_dir):
        node = params
        for key in leaf_path[:-1]:
            node = node.setdefault(key, {})
        node[leaf_path[-1]] = array
    print(f"checkpoint {step_dir}")
    return config, params


def tokenizer_dir(model_path: str) -> str | None:
    """The tokenizer that travels with a model: a Hugging Face directory's own, or the one an
    a1jax checkpoint's run trained with (its meta records it); None: a1jax's own. Raises
    TokenizerMismatch where the checkpoint records another tokenizer.json than that one."""
    if is_hf_dir(model_path):
        return model_path if os.path.isfile(os.path.join(model_path, "tokenizer.json")) else None
    from a1jax.convert import orbax_io
    from a1jax.data.tokenizer import TokenizerMismatch, check_tokenizer

    meta = orbax_io.read_meta(orbax_io.resolve_step_dir(model_path))
    recorded = meta["tokenizer"]
    if recorded and not os.path.isdir(recorded) and meta["tokenizer_sha256"]:
        raise TokenizerMismatch(f"{model_path} was trained with tokenizer {recorded}, which is "
                                "not there: pass it (--tokenizer)")
    path = recorded if recorded and os.path.isdir(recorded) else None
    check_tokenizer(meta["tokenizer_sha256"], path, model_path,
                    "pass the one it was trained with (--tokenizer)")
    return path
