"""Import and export stream: peak RSS stays under 3x the largest tensor plus the shard size (the
issue's bound) above the RSS of a process that only imported the same modules."""

from tests.conftest import benchmark_module

MAX_SHARD_BYTES = 200_000_000  # the ~0.4 GB bf16 model in two shards


def test_import_and_export_peak_rss_stay_within_the_bound(tmp_path):
    bench = benchmark_module("convert")
    size = bench.sizes("small", MAX_SHARD_BYTES)
    # Holding the model (fp32, as a1jax does) would break the bound: the check means something.
    assert size["params"] * 4 > 2 * size["bound"]
    rows = bench.measure(str(tmp_path / "bench"), MAX_SHARD_BYTES, "small",
                         phases=("generate", "import", "export"))
    for phase in ("import", "export"):
        baseline, peak = rows[phase + "_baseline"]["peak_rss"], rows[phase]["peak_rss"]
        assert peak - baseline <= size["bound"], (
            f"{phase}: peak RSS {peak / 1e6:.0f} MB is {(peak - baseline) / 1e6:.0f} MB above "
            f"its baseline {baseline / 1e6:.0f} MB; the bound is {size['bound'] / 1e6:.0f} MB "
            f"(3 x {size['largest'] / 1e6:.0f} MB + {MAX_SHARD_BYTES / 1e6:.0f} MB)")
