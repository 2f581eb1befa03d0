"""Every test runs with 8 simulated CPU devices, so sharding tests need no accelerator."""

import functools
import os

# Must be set before jax initialises its backends.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One compilation cache for the session (and the subprocesses it starts): the runner tests
# compile the same tiny train step many times, in process and out.
# pytest-xdist's workers inherit it from the controller, which made it and removes it at exit
# (about 60 MB a run).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="a1jax-jit-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def tiny_two_layers():
    """`tiny` cut to its first two layers, one DeltaNet and one attention: for the tests whose
    subject does not depend on depth (what a compiled step gathers or sends, the loss's
    normalisation and chunking), which it compiles in about two thirds of `tiny`'s time. Layer
    order and stacking, resume and parity keep the four layers."""
    from a1jax.model import get_preset
    return get_preset("tiny").replace(num_hidden_layers=2, layer_types=None)


def benchmark_module(name: str):
    """benchmarks/NAME.py imported as a module (benchmarks/ is not a package), registered as
    `a1jax_benchmarks_NAME` (a dataclass in it looks its module up by name)."""
    import importlib.util
    import sys

    module_name = f"a1jax_benchmarks_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def random_params(config, seed: int = 0, noise: float = 0.05) -> dict:
    """An a1jax params tree (numpy float32) from the model's init, with every tensor perturbed so
    that zero-initialised norms and unit gates are exercised by parity tests too."""
    params = _init_fn(config)(jax.random.key(seed, impl="unsafe_rbg"))
    rng = np.random.RandomState(seed)
    return jax.tree.map(lambda x: np.asarray(x, np.float32)
                        + np.float32(noise) * rng.standard_normal(x.shape).astype(np.float32),
                        params)


@functools.lru_cache(maxsize=None)
def _init_fn(config):
    """The model's init, compiled once per config (and kept in the session's compilation cache
    for the other workers; op by op it took 25-30 s on first use in a process). Its keys are
    `unsafe_rbg` ones and the noise comes from numpy: the same init drawn with threefry keys, and
    the noise with them, compiled in 15 s for `tiny` (a threefry for every tensor), this in
    about 4. Any random weights serve the tests; the runner's own init is unchanged."""
    import flax.linen as nn

    from a1jax.model import Transformer

    tokens = np.zeros((1, 4), np.int32)
    return jax.jit(lambda key: nn.meta.unbox(Transformer(config).init(key, tokens))["params"])


def hf_model(config, params):
    """transformers' Qwen3_5MoeForCausalLM (fp32, eager attention) holding the same weights."""
    import torch
    from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

    from a1jax.convert.mapping import to_hf_tensors

    hf_config = Qwen3_5MoeTextConfig(**config.to_hf_dict())
    hf_config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = Qwen3_5MoeForCausalLM(hf_config).eval()
    state = {k: torch.from_numpy(np.array(v)) for k, v in to_hf_tensors(params, config).items()}
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    assert result.missing_keys == (["lm_head.weight"] if config.tie_word_embeddings else [])
    if config.tie_word_embeddings:  # the head must really be the embedding
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(tokens).long(), use_cache=False).logits.numpy()


@pytest.fixture(scope="session")
def devices():
    assert len(jax.devices()) == 8, "tests expect 8 simulated CPU devices (see conftest.py)"
    return jax.devices()
