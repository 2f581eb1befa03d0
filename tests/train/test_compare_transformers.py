"""benchmarks/compare_transformers.py: alternating rounds of the two benchmarks, the ratio per
round, and the peak memory of each, read from the benchmarks' own output."""

import importlib.util
import math
import os
import sys

import pytest

from tests.train.runner_helpers import REPO

_spec = importlib.util.spec_from_file_location(
    "compare_transformers", os.path.join(REPO, "benchmarks", "compare_transformers.py"))
compare_transformers = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = compare_transformers  # its dataclass looks its module up
_spec.loader.exec_module(compare_transformers)

A1JAX_OUT = ("first loss 8.3672; step 1.549s (median of 6; fastest 1.456s); {tps:,} tokens/s; "
             "model 203.7 GFLOP/step; matmul peak 436 GFLOP/s; MFU 0.301; peak RSS {peak} GiB\n"
             "a1jax tokens_per_s={tps} mfu=0.3013 first_loss=8.367155\n")
HF_OUT = "transformers tokens_per_s={tps} peak_rss_gib={peak} loss=8.369135\n"


def test_rounds_alternate_and_the_ratio_is_per_round():
    results = iter([A1JAX_OUT.format(tps=3000, peak="3.02"), HF_OUT.format(tps=1500, peak="3.20"),
                    HF_OUT.format(tps=1000, peak="3.30"), A1JAX_OUT.format(tps=1800, peak="3.05"),
                    A1JAX_OUT.format(tps=2400, peak="3.01"), HF_OUT.format(tps=1600, peak="3.25")])
    order, lines = [], []

    def run(cmd):
        order.append("a1jax" if cmd[1].endswith("train_step.py") else "transformers")
        return next(results)

    args = compare_transformers.parse_args(["--rounds", "3", "--steps", "2"])
    summary = compare_transformers.compare(args, run=run, log=lines.append)
    assert order == ["a1jax", "transformers", "transformers", "a1jax", "a1jax", "transformers"]
    # Ratios 2.0, 1.8, 1.5: the median and the lowest, not a ratio of medians (1.875).
    assert summary == {"ratio_median": 1.8, "ratio_min": 1.5, "a1jax_peak_gib_max": 3.05,
                       "transformers_peak_gib_min": 3.20}
    assert lines[2] == "| 1 | 3,000 | 1,500 | 2.00x | 3.02 / 3.20 |"
    assert lines[-1] == ("compare ratio_median=1.80 ratio_min=1.50 a1jax_peak_gib_max=3.05 "
                         "transformers_peak_gib_min=3.20")


def test_a_run_without_its_result_line_is_an_error():
    with pytest.raises(ValueError, match="no a1jax result in its output"):
        compare_transformers.parse_a1jax("error: rules override maps 'embed' to ...\n")
    with pytest.raises(ValueError, match="no transformers result in its output"):
        compare_transformers.parse_transformers(A1JAX_OUT.format(tps=1, peak="1.00"))


def test_both_benchmarks_print_what_it_reads():
    """One real round on `tiny`: the two benchmarks' output formats are what the parsers read,
    and both train the same model shape on the same batch (first losses near ln(vocab))."""
    args = compare_transformers.parse_args(
        ["--rounds", "1", "--steps", "1", "--model", "tiny", "--batch", "2", "--seq", "64"])
    cmds = compare_transformers.commands(args)
    a1jax = compare_transformers.parse_a1jax(compare_transformers.run_process(cmds["a1jax"]))
    hf = compare_transformers.parse_transformers(
        compare_transformers.run_process(cmds["transformers"]))
    assert a1jax.tokens_per_s > 0 and hf.tokens_per_s > 0
    assert 0.1 < a1jax.peak_gib < 8 and 0.1 < hf.peak_gib < 8
    # Different random weights (JAX's init and PyTorch's, both small), the same vocabulary:
    # both first losses are near ln(vocab).
    from a1jax.model import get_preset
    uniform = math.log(get_preset("tiny").vocab_size)
    assert a1jax.first_loss == pytest.approx(uniform, abs=0.05)
    assert hf.first_loss == pytest.approx(uniform, abs=0.05)
