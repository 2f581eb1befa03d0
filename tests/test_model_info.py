"""Parameter counts: computed without allocation, equal to transformers' for the same config."""

import subprocess
import sys

import pytest

from a1jax.model import get_preset
from a1jax.model_info import count_params
from tests.model.test_parity import CASES


@pytest.mark.parametrize("name", ["tiny", "tied_all_full", "pattern_2to1"])
def test_counts_equal_transformers(name):
    import torch
    from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

    config = CASES[name][0]
    counts = count_params(config)
    with torch.device("meta"):
        model = Qwen3_5MoeForCausalLM(Qwen3_5MoeTextConfig(**config.to_hf_dict()))
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert counts["routed_experts"] == experts
    assert counts["active"] == (counts["total"] - experts
                                + experts * config.num_experts_per_tok // config.num_experts)


def test_agents_a1_35b_is_35b_total_3b_active():
    counts = count_params(get_preset("agents_a1_35b"))
    assert counts["total"] == 34_660_610_688
    assert counts["active"] == 3_454_988_928
    assert counts["routed_experts"] == 40 * 256 * 3 * 2048 * 512


def test_cli_prints_counts():
    result = subprocess.run([sys.executable, "-m", "a1jax.model_info", "--model",
                             "agents_a1_35b"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "  total               34,660,610,688    34.66B" in lines
    assert "  active per token     3,454,988,928     3.45B" in lines
