"""benchmarks/compare_transformers.py: alternating rounds of the two benchmarks, the ratio per
round, and the peak memory of each, read from the benchmarks' own output."""

import math

import pytest

from tests.conftest import benchmark_module

compare_transformers = benchmark_module("compare_transformers")

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


def test_transformers_prints_what_it_reads():
    """A real run of the transformers benchmark on `tiny` (benchmarks/train_step.py's output is
    read by test_benchmark_train_step): its result line is what the parser reads, and its first
    loss is near ln(vocab), as a1jax's is (both start from small random weights)."""
    args = compare_transformers.parse_args(
        ["--rounds", "1", "--steps", "1", "--model", "tiny", "--batch", "2", "--seq", "64"])
    hf = compare_transformers.parse_transformers(
        compare_transformers.run_process(compare_transformers.commands(args)["transformers"]))
    assert hf.tokens_per_s > 0 and 0.1 < hf.peak_gib < 8
    from a1jax.model import get_preset
    assert hf.first_loss == pytest.approx(math.log(get_preset("tiny").vocab_size), abs=0.05)
