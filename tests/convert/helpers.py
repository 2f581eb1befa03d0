"""Small Hugging Face directories and a1jax checkpoints for the conversion tests."""

import json

import jax
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from a1jax.convert import orbax_io
from a1jax.convert.mapping import to_hf_tensors
from tests.conftest import random_params


def write_hf_dir(path, tensors, hf_config, shards=1):
    """config.json and `tensors` in `shards` safetensors files (with an index when more than 1)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf_config))
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, str(path / "model.safetensors"))
        return path
    weight_map = {}
    for i in range(shards):
        filename = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i::shards]}
        save_file(part, str(path / filename))
        weight_map.update(dict.fromkeys(part, filename))
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return path


def per_expert(tensors, config):
    """The fused expert tensors split per expert, as `save_pretrained` writes them."""
    tensors = dict(tensors)
    f = config.moe_intermediate_size
    for name in [n for n in tensors if n.endswith("experts.gate_up_proj")]:
        base = name[: -len("gate_up_proj")]
        gate_up, down = tensors.pop(name), tensors.pop(base + "down_proj")
        for e in range(config.num_experts):
            tensors[f"{base}{e}.gate_proj.weight"] = np.ascontiguousarray(gate_up[e, :f])
            tensors[f"{base}{e}.up_proj.weight"] = np.ascontiguousarray(gate_up[e, f:])
            tensors[f"{base}{e}.down_proj.weight"] = np.ascontiguousarray(down[e])
    return tensors


def hf_tensors(config, dtype=np.float32, seed=0):
    return {n: np.ascontiguousarray(v.astype(dtype))
            for n, v in to_hf_tensors(random_params(config, seed), config).items()}


def vl_dir(path, config, dtype=ml_dtypes.bfloat16, shards=2):
    """The vision-language layout of an official checkpoint: text model under
    `model.language_model.`, plus vision and MTP tensors, config `qwen3_5_moe` with text_config."""
    tensors = {("lm_head.weight" if n == "lm_head.weight" else "model.language_model." + n[6:]): v
               for n, v in hf_tensors(config, dtype).items()}
    rng = np.random.RandomState(1)
    tensors["model.visual.patch_embed.proj.weight"] = rng.randn(8, 3, 2, 2).astype(dtype)
    tensors["model.visual.blocks.0.norm1.weight"] = rng.randn(8).astype(np.float32)
    tensors["mtp.fc.weight"] = rng.randn(config.hidden_size, 2 * config.hidden_size).astype(dtype)
    tensors["mtp.layers.0.mlp.experts.gate_up_proj"] = rng.randn(
        config.num_experts, 2 * config.moe_intermediate_size, config.hidden_size).astype(dtype)
    hf_config = {"model_type": "qwen3_5_moe", "architectures": [
        "Qwen3_5MoeForConditionalGeneration"], "image_token_id": 7, "tie_word_embeddings": False,
        "vision_config": {"depth": 1, "hidden_size": 8}, "text_config": config.to_hf_dict()}
    return write_hf_dir(path, tensors, hf_config, shards)


def read_hf_tensors(path):
    """{name: (dtype, shape, raw bytes)} of every tensor of a Hugging Face directory."""
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="numpy") as st:
            for name in st.keys():
                sl = st.get_slice(name)
                out[name] = (sl.get_dtype(), tuple(sl.get_shape()), st.get_tensor(name).tobytes())
    return out


def write_checkpoint(root, config, params=None, step=0, **meta):
    params = random_params(config) if params is None else params
    orbax_io.write_params_checkpoint(root, step, params,
                                     {"model_config": config.to_json_dict(), **meta})
    return params


def flat(tree):
    """{path: leaf} (numpy for arrays) of a nested dict."""
    return {tuple(k.key for k in path): np.asarray(v) if hasattr(v, "shape") else v
            for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def memorise(config, ids, loss_mask, learning_rate, stop_below, max_steps=400):
    """A model trained from random weights (Adam, full batch) to predict `ids` [B, T] where
    `loss_mask` [B, T - 1] is 1, until the masked loss is below `stop_below`. Returns the
    parameters (numpy), the last loss and the steps taken."""
    import flax.linen as nn
    import optax

    from a1jax.model import Transformer

    model = Transformer(config)
    # Jitted: op by op, the init alone took some 25 s.
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), ids[:, :4]))["params"]
    optimizer = optax.adam(learning_rate)

    @jax.jit
    def step(params, opt_state):
        def loss(p):
            logits = model.apply({"params": p}, ids).logits_btx[:, :-1]
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:])
            return (ce * loss_mask).sum() / loss_mask.sum()
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    opt_state = optimizer.init(params)
    for steps in range(1, max_steps + 1):
        params, opt_state, value = step(params, opt_state)
        if value < stop_below:
            break
    return jax.tree.map(np.asarray, params), float(value), steps


def export_params(tmp_path_factory, config, params, dtype, name="hf"):
    """`params` as a Hugging Face directory, through a checkpoint and `a1jax.export`."""
    from a1jax.convert.hf_export import export

    root = tmp_path_factory.mktemp("run") / "checkpoints"
    write_checkpoint(root, config, params, tokenizer=None)
    out = tmp_path_factory.mktemp("export") / name
    export(str(root), str(out), dtype=dtype)
    return out
