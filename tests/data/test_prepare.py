"""`python -m a1jax.data.prepare`: JSONL -> TFDS ArrayRecord, bad lines skipped and reported or
failing with their location (issue 5, acceptance 5), read back without TensorFlow."""

import json
import os
import subprocess
import sys

import pytest

from a1jax.data import prepare, synth
from a1jax.data.schema import validate
from a1jax.data.tfds_builder import TfdsSource
from a1jax.data.tokenizer import TrajectoryEncoder, load_tokenizer
from a1jax.errors import A1Error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bad_lines():
    """(raw line, expected reason) for every bad-input case of the issue."""
    base = synth.make_trajectory("calculator", 1, seed=5, index=0)

    def variant(tid, mutate):
        t = json.loads(json.dumps(base))
        t["id"] = tid
        mutate(t["messages"])
        return json.dumps(t).encode()

    def drop_assistants(m):
        m[:] = [x for x in m if x["role"] in ("system", "user")]

    def unknown_tool(m):
        m[2]["tool_calls"][0]["function"]["name"] = "shell"

    def bad_args(m):
        m[2]["tool_calls"][0]["function"]["arguments"] = "{'expression': 1}"

    long = synth.make_trajectory("kb_search", 40, seed=5, index=1)
    return [
        (b'{"id": "broken", ', "malformed JSON: Expecting property name enclosed in double "
                              "quotes (column 18)"),
        (variant("role", lambda m: m[1].update(role="human")),
         "trajectory 'role': message 1: unknown role 'human' (expected one of system, user, "
         "assistant, tool)"),
        (variant("sys", lambda m: m.insert(1, {"role": "system", "content": "x"})),
         "trajectory 'sys': message 1: system message must be the first message"),
        (variant("orphan", lambda m: m.insert(2, {"role": "tool", "content": "x"})),
         "trajectory 'orphan': message 2: tool message with no preceding tool call to answer"),
        (variant("tool", unknown_tool),
         "trajectory 'tool': message 2: tool call 0 names tool 'shell', which is not in 'tools'"),
        (variant("args", bad_args),
         "trajectory 'args': message 2: tool call 0 (calculator): arguments are not valid JSON: "
         "Expecting property name enclosed in double quotes (char 1)"),
        (variant("empty", drop_assistants),
         "trajectory 'empty': nothing to train on: no assistant message with content, reasoning "
         "or tool calls"),
        (b'{"id": "\xc3\x28"}', "invalid UTF-8 at byte 8: b'\\xc3(\"}'"),
        (json.dumps(long).encode(),
         f"trajectory '{long['id']}': over-length: LONG tokens > --max-tokens 3000"),
    ], long


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("prep")
    good = [synth.make_trajectory(dom, 2, seed=0, index=i) for dom in sorted(synth.DOMAINS)
            for i in range(3)]
    (d / "a_good.jsonl").write_text("".join(json.dumps(t) + "\n" for t in good))
    lines, long = bad_lines()
    (d / "b_bad.jsonl").write_bytes(b"".join(raw + b"\n" for raw, _ in lines))
    n_long = len(TrajectoryEncoder(load_tokenizer())(validate(long)))
    assert n_long > 3000
    reasons = [r.replace("LONG", str(n_long)) for _, r in lines]
    return d, good, reasons


def test_skip_reports_every_bad_line_and_writes_the_rest(inputs, tmp_path, capsys):
    d, good, reasons = inputs
    out = tmp_path / "tfds"
    rc = prepare.main(["--input", str(d / "*.jsonl"), "--out", str(out), "--max-tokens", "3000",
                       "--eval-fraction", "0.3"])
    stdout = capsys.readouterr().out.splitlines()
    assert rc == 0
    bad = str(d / "b_bad.jsonl")
    assert [l for l in stdout if l.startswith("rejected")] == [
        f"rejected {bad}:{i + 1}: {r}" for i, r in enumerate(reasons)]
    train, eval_ = (TfdsSource(out / "trajectory_dataset" / "1.0.0", s) for s in ("train", "eval"))
    assert (len(train), len(eval_)) == (7, 2)
    expected_eval = sorted(t["id"] for t in good if prepare.is_eval(t["id"], 0.3))
    assert sorted(eval_[i]["id"] for i in range(len(eval_))) == expected_eval
    assert stdout[-3] == "accepted 9 (train 7, eval 2), rejected 9"
    assert stdout[-2] == ("rejections by reason: tool call 2, malformed JSON 1, unknown role 1, "
                          "system message must be the first message 1, tool message with no "
                          "preceding tool call to answer 1, nothing to train on 1, invalid "
                          "UTF-8 at byte 1, over-length 1")
    assert stdout[-1] == f"wrote {out / 'trajectory_dataset' / '1.0.0'}"
    # Records come back validated (arguments as objects), with domain and token count.
    encoder = TrajectoryEncoder(load_tokenizer())
    by_id = {t["id"]: validate(t) for t in good}
    for source in (train, eval_):
        for i in range(len(source)):
            traj = source[i]
            assert traj == by_id[traj["id"]]
            assert source.domains()[i] == traj["domain"]
            assert source.num_tokens(i) == len(encoder(traj))
    # The table: per domain, split counts and token lengths of the accepted trajectories.
    header = stdout.index(next(l for l in stdout if l.startswith("domain")))
    for k, domain in enumerate(sorted(synth.DOMAINS)):
        ids = [t["id"] for t in good if t["domain"] == domain]
        toks = [len(encoder(by_id[i])) for i in ids]
        trained = sum(int(encoder(by_id[i]).loss_mask.sum()) for i in ids)
        n_eval = sum(prepare.is_eval(i, 0.3) for i in ids)
        assert stdout[header + 1 + k].split() == [
            domain, str(3 - n_eval), str(n_eval), str(min(toks)), str(sum(toks) // 3),
            str(max(toks)), str(sum(toks)), str(trained)]
    assert "tensorflow" not in sys.modules


def test_fail_stops_at_the_first_bad_line(inputs, tmp_path, capsys):
    d, _, reasons = inputs
    out = tmp_path / "tfds"
    with pytest.raises(prepare.PrepareError) as e:
        prepare.main(["--input", str(d / "*.jsonl"), "--out", str(out), "--on-error", "fail"])
    assert str(e.value) == f"{d / 'b_bad.jsonl'}:1: {reasons[0]}"
    assert not out.exists()


def test_cli_errors_are_one_line_without_traceback(inputs, tmp_path):
    d, _, reasons = inputs
    env = dict(os.environ, PYTHONPATH=ROOT)
    for extra, message in [
            (["--input", str(d / "*.jsonl"), "--on-error", "fail"],
             f"{d / 'b_bad.jsonl'}:1: {reasons[0]}"),
            (["--input", str(tmp_path / "none*.jsonl")],
             f"no file matches --input '{tmp_path / 'none*.jsonl'}'"),
            (["--input", "x", "--on-error", "maybe"],
             "argument --on-error: invalid choice: 'maybe' (choose from 'skip', 'fail') "
             "(see python -m a1jax.data.prepare --help)")]:
        r = subprocess.run([sys.executable, "-m", "a1jax.data.prepare", "--out",
                            str(tmp_path / "o")] + extra,
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
        assert (r.returncode, r.stdout, r.stderr) == (2, "", f"error: {message}\n")


def test_a_trajectory_the_template_refuses_is_rejected_with_its_reason(tmp_path):
    # Valid by the schema, but its only user turn is wrapped tool output: no real query.
    t = {"id": "no-query", "domain": "d", "messages": [
        {"role": "user", "content": "<tool_response>\nx\n</tool_response>"},
        {"role": "assistant", "content": "ok"}]}
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(t) + "\n")
    reports = []
    splits, rejected = prepare.collect([str(path)], TrajectoryEncoder(load_tokenizer()),
                                       max_tokens=None, eval_fraction=0.0, on_error="skip",
                                       report=reports.append)
    assert splits == {"train": [], "eval": []}
    assert reports == [f"rejected {path}:1: trajectory 'no-query': cannot render: the chat "
                       "template refused the messages: No user query found in messages."]


def test_workers_write_the_same_bytes(inputs, tmp_path, capsys):
    """Rendering, tokenizing and masking in 2 processes: the same rejections, reported in the
    same order, and a dataset identical byte for byte to one process's."""
    d, _, _ = inputs
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        assert prepare.main(["--input", str(d / "*.jsonl"), "--out", str(out), "--max-tokens",
                             "3000", "--eval-fraction", "0.3", "--workers", str(workers)]) == 0
        printed = capsys.readouterr().out
        files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
                 if p.is_file()}
        outputs.append((printed.replace(str(out), "OUT"), files))
    assert outputs[0] == outputs[1]
    assert any(name.endswith(".array_record-00000-of-00001") for name in outputs[0][1])
    assert sum(line.startswith("rejected ") for line in outputs[0][0].splitlines()) == 9


def dataset_files(out):
    """The dataset's files and bytes (the shards' working directory left out)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".prepare" not in p.parts}


def dataset_content(out):
    """The dataset's metadata files' bytes and every record of each split, in order. Across
    processes ArrayRecord files of the same records differ in some bytes (two runs of the same
    command in two processes, PYTHONHASHSEED fixed, did), so runs in different processes are
    compared by what they hold."""
    from a1jax.data.tfds_builder import TfdsSource

    files = {k: v for k, v in dataset_files(out).items() if k.endswith(".json")}
    root = out / "trajectory_dataset" / "1.0.0"
    records = {split: [dict(TfdsSource(root, split)._records[i]) for i in
                       range(len(TfdsSource(root, split)))] for split in ("train", "eval")}
    return files, records


def test_shard_jobs_then_finalize_write_the_same_bytes(inputs, tmp_path, capsys):
    d, _, _ = inputs
    common = ["--input", str(d / "*.jsonl"), "--max-tokens", "3000", "--eval-fraction", "0.3",
              "--workers", "1"]
    assert prepare.main(common + ["--out", str(tmp_path / "one")]) == 0
    out = tmp_path / "sharded"
    sharded = common + ["--out", str(out), "--num-shards", "3"]
    assert prepare.main(sharded + ["--shard-index", "2"]) == 0
    assert prepare.main(sharded + ["--shard-index", "0"]) == 0
    with pytest.raises(A1Error) as e:
        prepare.main(sharded + ["--finalize"])
    assert str(e.value) == ("1 of 3 shards are not measured yet (shard index 1); run them "
                            "first")
    assert prepare.main(sharded + ["--shard-index", "1"]) == 0
    capsys.readouterr()
    assert prepare.main(sharded + ["--finalize"]) == 0
    assert dataset_files(out) == dataset_files(tmp_path / "one") != {}
    assert "accepted 9 (train 7, eval 2), rejected 9" in capsys.readouterr().out
    for argv, message in [
            (common + ["--out", str(out), "--num-shards", "4"],
             f"{out / '.prepare'} holds shards of other inputs or options; remove it (or use "
             "another --out) to start over"),
            (common + ["--out", str(out), "--shard-index", "0"],
             "--shard-index needs --num-shards (the same in every job)"),
            (sharded + ["--shard-index", "3"], "--shard-index must be in [0, 3)")]:
        with pytest.raises(A1Error) as e:
            prepare.main(argv)
        assert str(e.value) == message


def test_kill_9_then_rerun_measures_only_what_is_missing(tmp_path):
    """A prepare killed after some shards are saved: the rerun measures the rest only, and the
    dataset equals an uninterrupted run's."""
    import time

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(synth.make_trajectory(d, 30, seed=4, index=i)) + "\n"
                            for d in sorted(synth.DOMAINS) for i in range(40)))
    argv = ["--input", str(data), "--num-shards", "40", "--workers", "1"]
    state = tmp_path / "killed" / ".prepare"
    proc = subprocess.Popen([sys.executable, "-m", "a1jax.data.prepare", "--out",
                             str(tmp_path / "killed")] + argv, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while len(list(state.glob("shard-*.json"))) < 3 and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    measured = len(list(state.glob("shard-*.json")))
    assert 3 <= measured < 40
    for shard in state.glob("shard-*.json"):  # a kill mid-write leaves a .tmp, never half a shard
        json.loads(shard.read_text())
    (state / "shard-00039-of-00040.json.tmp1").write_text("[{")  # as a kill mid-write leaves
    r = subprocess.run([sys.executable, "-m", "a1jax.data.prepare", "--out",
                        str(tmp_path / "killed")] + argv, cwd=ROOT, capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"resuming: {measured} of 40 shards already measured" in r.stdout
    assert not list(state.glob("*.tmp*"))
    assert prepare.main(["--out", str(tmp_path / "whole")] + argv) == 0
    killed, whole = dataset_content(tmp_path / "killed"), dataset_content(tmp_path / "whole")
    assert killed == whole and len(whole[1]["train"]) > 100
