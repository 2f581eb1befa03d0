"""Write a1jax parameters as a Hugging Face `Qwen3_5MoeForCausalLM` directory.

This is the small, single-file form (config.json + model.safetensors) for tiny models; streaming,
sharded export of large checkpoints builds on the same tensor table (`a1jax.convert.mapping`).
"""

from __future__ import annotations

import json
import os
import tempfile

from safetensors.numpy import save_file

from a1jax.convert.mapping import to_hf_tensors
from a1jax.model.config import ModelConfig


def write_hf_dir(path: str, config: ModelConfig, params: dict) -> None:
    """Writes into a temporary sibling directory and renames it into place at the end, so an
    interrupted write never looks like a complete model."""
    if os.path.exists(path):
        raise FileExistsError(f"{path} already exists")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".partial-", dir=parent)
    save_file(to_hf_tensors(params, config), os.path.join(tmp, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config.to_hf_dict(), f, indent=2)
    os.rename(tmp, path)
