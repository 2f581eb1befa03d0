"""The grain pipeline: packing (issue 5, acceptance 3), determinism and resume (acceptance 4),
mixture, sharding, length policy, and the TFDS source end to end."""

import json

import numpy as np
import pytest

from a1jax.data import packing, prepare, synth
from a1jax.data.packing import LengthStats
from a1jax.data.pipeline import JsonlSource, PipelineConfig, _index_stream, make_dataset
from a1jax.data.tfds_builder import TfdsSource
from a1jax.data.tokenizer import TrajectoryEncoder, load_tokenizer

SEQ = 2048


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    paths = []
    for domain in sorted(synth.DOMAINS):
        path = d / f"{domain}.jsonl"
        path.write_text("".join(json.dumps(synth.make_trajectory(domain, 1 + i % 3, 0, i)) + "\n"
                                for i in range(6)))
        paths.append(str(path))
    source = JsonlSource(paths)
    encoder = TrajectoryEncoder(load_tokenizer())
    examples = [packing.to_example(encoder(source[i]), SEQ, "drop") for i in range(len(source))]
    return d, source, encoder, examples


def take(ds_or_it, n):
    it = iter(ds_or_it) if not hasattr(ds_or_it, "get_state") else ds_or_it
    return [next(it) for _ in range(n)]


def segments(row):
    """[(segment id, start, end)] of one packed row."""
    out = []
    for s in np.unique(row["segment_ids"]):
        if s:
            idx = np.nonzero(row["segment_ids"] == s)[0]
            out.append((int(s), int(idx[0]), int(idx[-1]) + 1))
    return out


def tiny_loss(params, tokens, targets, loss_mask, segment_ids, positions):
    """A one-layer attention LM that honours segment ids and positions; summed masked loss."""
    x = params["emb"][tokens] + params["pos"][positions]
    q, k, v = x @ params["wq"], x @ params["wk"], x @ params["wv"]
    t = np.arange(len(tokens))
    allowed = ((t[:, None] >= t[None, :]) & (segment_ids[:, None] == segment_ids[None, :])
               & (segment_ids[:, None] > 0))
    s = np.where(allowed, q @ k.T / 4.0, -np.inf)
    s = np.where(allowed.any(1, keepdims=True), s, 0.0)  # padding rows attend uniformly
    p = np.exp(s - s.max(1, keepdims=True))
    h = (p / p.sum(1, keepdims=True)) @ v + x
    logits = h @ params["out"]
    logz = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    nll = logz - logits[t, targets]
    return float((nll * loss_mask).sum()), h


def test_batch_format_and_packing_invariants(data):
    _, source, encoder, examples = data
    cfg = PipelineConfig(seq_len=SEQ, batch_size=2, seed=0, num_epochs=1, prefetch_threads=0)
    batches = list(make_dataset(source, encoder, cfg))
    assert len(batches) >= 2
    seen = 0
    for batch in batches:
        assert sorted(batch) == sorted(packing.BATCH_KEYS)
        for key, value in batch.items():
            assert value.shape == (2, SEQ) and value.dtype == np.int32, key
        for b in range(2):
            row = {k: v[b] for k, v in batch.items()}
            segs = segments(row)
            assert [s for s, _, _ in segs] == list(range(1, len(segs) + 1))
            end = segs[-1][2]
            assert (row["segment_ids"][end:] == 0).all()  # padding only at the end
            for key in ("tokens", "targets", "loss_mask", "positions"):
                assert (row[key][end:] == 0).all()
            for _, start, stop in segs:
                # positions restart per segment; the segment is exactly one trajectory's example
                assert row["positions"][start:stop].tolist() == list(range(stop - start))
                match = [e for e in examples if e is not None
                         and np.array_equal(e["tokens"], row["tokens"][start:stop])]
                assert len(match) == 1
                assert np.array_equal(match[0]["targets"], row["targets"][start:stop])
                assert np.array_equal(match[0]["loss_mask"], row["loss_mask"][start:stop])
                # the target of position t is the next token of the same segment
                assert np.array_equal(row["targets"][start:stop - 1], row["tokens"][start + 1:stop])
                seen += 1
    # one epoch, nothing over length: every trajectory packed once, except the bins still open
    # when the last full batch was cut
    assert len(source) - 2 * 3 <= seen <= len(source)


def test_packed_loss_equals_sum_of_per_trajectory_losses_and_no_cross_attention(data):
    _, source, encoder, examples = data
    cfg = PipelineConfig(seq_len=SEQ, batch_size=2, seed=1, prefetch_threads=0)
    batch = take(make_dataset(source, encoder, cfg), 1)[0]
    rng = np.random.default_rng(0)
    vocab = len(encoder.tokenizer)
    params = {"emb": rng.normal(size=(vocab, 16)), "pos": rng.normal(size=(SEQ, 16)),
              "wq": rng.normal(size=(16, 16)), "wk": rng.normal(size=(16, 16)),
              "wv": rng.normal(size=(16, 16)), "out": rng.normal(size=(16, vocab)) * 0.1}
    packed_total, unpacked_total = 0.0, 0.0
    for b in range(2):
        row = {k: v[b] for k, v in batch.items()}
        loss, h = tiny_loss(params, **row)
        packed_total += loss
        segs = segments(row)
        for _, start, stop in segs:
            (ex,) = [e for e in examples if e is not None
                     and np.array_equal(e["tokens"], row["tokens"][start:stop])]
            n = len(ex["tokens"])
            alone, h_alone = tiny_loss(params, ex["tokens"], ex["targets"], ex["loss_mask"],
                                       np.ones(n, np.int32), np.arange(n))
            unpacked_total += alone
            assert np.allclose(h[start:stop], h_alone, rtol=1e-12, atol=1e-9)
        if len(segs) > 1:  # changing the first segment leaves the others' activations alone
            changed = dict(row, tokens=row["tokens"].copy())
            changed["tokens"][segs[0][1]:segs[0][2]] = 7
            _, h_changed = tiny_loss(params, **changed)
            live = slice(segs[1][1], segs[-1][2])  # (padding rows attend to everything)
            assert np.array_equal(h_changed[live], h[live])
    assert packed_total == pytest.approx(unpacked_total, rel=1e-12)


def test_same_seed_same_batches_and_resume_continues_exactly(data):
    _, source, encoder, _ = data
    cfg = PipelineConfig(seq_len=SEQ, batch_size=2, seed=5, prefetch_threads=2,
                         mixture={"calculator": 0.5, "files": 0.25, "kb_search": 0.25})
    run1 = take(make_dataset(source, encoder, cfg), 6)
    run2 = take(make_dataset(source, encoder, cfg), 6)
    for a, b in zip(run1, run2):
        assert all(np.array_equal(a[k], b[k]) for k in packing.BATCH_KEYS)
    other = take(make_dataset(source, encoder, PipelineConfig(
        seq_len=SEQ, batch_size=2, seed=6, mixture=cfg.mixture)), 1)[0]
    assert not np.array_equal(other["tokens"], run1[0]["tokens"])

    it = iter(make_dataset(source, encoder, cfg))
    take(it, 2)
    state = json.loads(json.dumps(it.get_state()))  # checkpointable as plain JSON
    restored = iter(make_dataset(source, encoder, cfg))
    restored.set_state(state)
    for a, b in zip(run1[2:], take(restored, 4)):
        assert all(np.array_equal(a[k], b[k]) for k in packing.BATCH_KEYS)


def test_mixture_weights_and_per_process_shards(data):
    _, source, _, _ = data
    domains = source.domains()
    mix = {"calculator": 0.5, "files": 0.25, "kb_search": 0.25}
    stream = _index_stream(source, PipelineConfig(seq_len=SEQ, batch_size=1, mixture=mix))
    picked = [domains[int(stream[i])] for i in range(400)]
    assert {d: picked.count(d) for d in mix} == {"calculator": 200, "files": 100, "kb_search": 100}
    shards = []
    for k in range(2):
        cfg = PipelineConfig(seq_len=SEQ, batch_size=1, shard_index=k, shard_count=2,
                             num_epochs=1)
        shards.append({int(i) for i in _index_stream(source, cfg)})
    assert shards[0].isdisjoint(shards[1]) and shards[0] | shards[1] == set(range(len(source)))
    mixed = []
    for k in range(2):  # with a mixture, each process still gets every domain at its weight
        cfg = PipelineConfig(seq_len=SEQ, batch_size=1, shard_index=k, shard_count=2, mixture=mix)
        idx = [int(_index_stream(source, cfg)[i]) for i in range(40)]
        assert [domains[i] for i in idx].count("calculator") == 20
        mixed.append(set(idx))
    assert mixed[0].isdisjoint(mixed[1])
    with pytest.raises(ValueError, match=r"domains \['files'\] are in the data but not in the "):
        _index_stream(source, PipelineConfig(seq_len=SEQ, batch_size=1,
                                             mixture={"calculator": 1, "kb_search": 1}))


@pytest.mark.parametrize("policy", ["drop", "truncate"])
def test_length_policy_is_counted(data, policy):
    _, source, encoder, _ = data
    seq = 900
    lengths = [len(encoder(source[i])) for i in range(len(source))]
    over = sum(n > seq + 1 for n in lengths)
    assert 0 < over < len(source)
    stats = LengthStats()
    cfg = PipelineConfig(seq_len=seq, batch_size=1, num_epochs=1, length_policy=policy,
                         prefetch_threads=0, num_packing_bins=4)
    rows = list(make_dataset(source, encoder, cfg, stats))
    n_segments = sum(len(segments({k: v[0] for k, v in r.items()})) for r in rows)
    if policy == "drop":
        assert stats.as_dict() == {"seen": len(source), "dropped_over_length": over,
                                   "truncated": 0, "dropped_nothing_to_train": 0}
    else:
        assert stats.as_dict() == {"seen": len(source), "dropped_over_length": 0,
                                   "truncated": over, "dropped_nothing_to_train": 0}
        assert max(int(r["positions"].max()) for r in rows) == seq - 1
    assert n_segments <= stats.seen - stats.dropped_over_length


def test_tfds_source_feeds_the_pipeline(data, tmp_path, capsys):
    d, source, encoder, _ = data
    assert prepare.main(["--input", str(d / "*.jsonl"), "--out", str(tmp_path),
                         "--eval-fraction", "0"]) == 0
    capsys.readouterr()
    tfds_source = TfdsSource(tmp_path / "trajectory_dataset" / "1.0.0", "train")
    assert sorted(tfds_source.domains()) == sorted(source.domains())
    cfg = PipelineConfig(seq_len=SEQ, batch_size=2, seed=3, prefetch_threads=0,
                         mixture={"calculator": 1, "files": 1, "kb_search": 1})
    from_tfds = take(make_dataset(tfds_source, encoder, cfg), 2)
    assert from_tfds[0]["tokens"].shape == (2, SEQ)
    assert all(b["loss_mask"].sum() > 0 for b in from_tfds)


def test_a_stream_that_drops_everything_is_an_error_not_a_hang(data):
    _, source, encoder, _ = data
    cfg = PipelineConfig(seq_len=64, batch_size=1, prefetch_threads=2)
    with pytest.raises(ValueError, match=r"^the first \d+ trajectories were all dropped by the "
                                         r"length policy .* is seq_len=64 too short\?"):
        next(iter(make_dataset(source, encoder, cfg)))
