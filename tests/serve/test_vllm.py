"""What a1jax exports, served by vLLM through `launch/serve.sh`: the same greedy tokens and prompt
log-probabilities as transformers, tool calls parsed as a1jax parses them, and `a1jax.eval`
through the server scoring each episode as in-process generation does.

The model is `bench`-sized, trained to memorise three tasks' trajectories, exported in
bfloat16. vLLM runs in its own environment (`.venv-serve`, built by `launch/serve.sh --setup` on
first use, about 4 GB); when it cannot be built here the tests skip and say why."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from a1jax import eval as evaluate
from a1jax.agent.environment import make_task
from a1jax.data.chat_template import render, template_for
from a1jax.data.schema import validate
from a1jax.data.tokenizer import load_tokenizer
from a1jax.data.tool_calls import parse_assistant

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# The model memorises the reference trajectories of these held-out tasks (one per domain), so that
# it answers with well-formed tool calls and solves them: a serving test, not a research claim.
# (A bench model after stage 1's 100 steps starts a tool call and then loops inside it.)
# Task seed 4: none of the three references recovers from an error. A memorised typo followed by
# its corrected retry is two near-identical calls that greedy decoding can confuse (seed 7's
# kb_search did, after synth's names gained titles): a memorisation failure, not a serving one.
SEED = 4
TASKS = [make_task(d, 1, evaluate.eval_seed(SEED), 0)
         for d in ("kb_search", "calculator", "files")]
# Parity prompts: those tasks, and others the model has not seen.
PROMPTS = TASKS + [make_task(d, 2, evaluate.eval_seed(SEED), 1)
                   for d in ("kb_search", "calculator", "files")]


def _run(cmd, timeout, **kw):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from a1jax.data.tokenizer import TrajectoryEncoder
    from a1jax.model import get_preset
    from tests.convert.helpers import export_params, memorise

    tok = load_tokenizer()
    config = get_preset("bench").replace(vocab_size=len(tok),
                                         eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
    encoded = [TrajectoryEncoder(tok)(validate(t.reference)) for t in TASKS]
    length = max(len(e.tokens) for e in encoded)
    ids = np.zeros((len(TASKS), length), np.int32)
    mask = np.zeros((len(TASKS), length - 1), np.float32)
    for i, e in enumerate(encoded):
        ids[i, :len(e.tokens)] = e.tokens
        mask[i, :len(e.tokens) - 1] = np.asarray(e.loss_mask[1:])  # predict the model's tokens
    # Adam at this rate spikes on the way down (loss 0.012 -> 0.40 -> 0.03 here); where it ends
    # depends on the machine's floating point: one of ours got below 5e-3 at step 404 of 400.
    # It goes on to 1e-3 where it can: at 0.0049 (step 443, with 7ef6784's tokenizer) one
    # served reply split from transformers' bf16 one on a near-tie (224 of 278 tokens equal).
    params, value, steps = memorise(config, ids, mask, 5e-3, stop_below=1e-3, max_steps=800)
    print(f"memorised in {steps} steps, loss {value:.4f}")
    assert value < 5e-3, value
    return export_params(tmp_path_factory, config, params, "bfloat16", name="bench")


@pytest.fixture(scope="module")
def server(export_dir):
    setup = _run(["launch/serve.sh", "--setup"], timeout=1800)
    if setup.returncode != 0:
        pytest.skip(f"launch/serve.sh could not build .venv-serve here: {setup.stderr[-800:]}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(export_dir.parent / "serve.log", "w")
    proc = subprocess.Popen(["launch/serve.sh", str(export_dir), "--port", str(port)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 600
        while True:
            try:
                urllib.request.urlopen(url + "/models", timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    log.flush()
                    tail = (export_dir.parent / "serve.log").read_text()[-3000:]
                    pytest.fail(f"launch/serve.sh did not come up:\n{tail}")
                time.sleep(2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def post(url, path, body):
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as r:
        return json.loads(r.read())


def prompts(export_dir):
    tok = load_tokenizer(str(export_dir))
    template = template_for(tok)
    return tok, [tok(render(t.messages, t.tools, template=template, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"] for t in PROMPTS]


def transformers_run(export_dir, ids, dtype, new_tokens, end):
    """Greedy tokens up to the end of the turn, and the prompt's log-probabilities."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(export_dir), dtype=dtype).eval()
    tokens, logprobs = [], []
    with torch.no_grad():
        for prompt in ids:
            x = torch.tensor([prompt])
            lp = torch.log_softmax(model(x).logits.float()[0, :-1], -1)
            logprobs.append(lp.gather(-1, x[0, 1:, None])[:, 0].numpy())
            out = model.generate(x, do_sample=False, max_new_tokens=new_tokens,
                                 eos_token_id=end, pad_token_id=0)[0, len(prompt):].tolist()
            tokens.append(out[:out.index(end) + 1] if end in out else out)
    return tokens, logprobs


def test_served_greedy_tokens_and_prompt_logprobs_equal_transformers(export_dir, server):
    tok, ids = prompts(export_dir)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    bf16, lp_bf16 = transformers_run(export_dir, ids, torch.bfloat16, 96, end)
    _, lp_fp32 = transformers_run(export_dir, ids, torch.float32, 1, end)
    served, lp_served = [], []
    for prompt in ids:
        reply = post(server, "/completions", {
            "model": export_dir.name, "prompt": prompt, "max_tokens": 96, "temperature": 0,
            "prompt_logprobs": 0, "return_token_ids": True, "skip_special_tokens": False})
        choice = reply["choices"][0]
        out = choice["token_ids"]
        served.append(out[:out.index(end) + 1] if end in out else out)
        lp_served.append(np.array([next(iter(p.values()))["logprob"]
                                   for p in choice["prompt_logprobs"][1:]]))
    same = total = 0
    for ours, theirs in zip(served, bf16):
        n = max(len(ours), len(theirs))
        same += sum(a == b for a, b in zip(ours, theirs))
        total += n
    assert same / total >= 0.95, (same, total, served, bf16)
    # Prompt log-probabilities: vLLM (bf16) is as far from transformers' fp32 as transformers'
    # own bf16 is, within a factor of 2 either way of that noise.
    noise = np.mean(np.abs(np.concatenate(lp_bf16) - np.concatenate(lp_fp32)))
    served_gap = np.mean(np.abs(np.concatenate(lp_served) - np.concatenate(lp_fp32)))
    print(f"prompt log-probabilities, mean |difference| from transformers fp32: "
          f"transformers bf16 {noise:.4f}, vLLM bf16 {served_gap:.4f}; greedy tokens equal "
          f"on {same}/{total} positions")
    assert served_gap <= 2 * noise, (served_gap, noise)


def test_a_served_tool_call_is_what_a1jax_parses(export_dir, server):
    tok, ids = prompts(export_dir)
    checked = 0
    for task, prompt in zip(PROMPTS, ids):
        chat = post(server, "/chat/completions", {
            "model": export_dir.name, "messages": task.messages, "tools": list(task.tools),
            "tool_choice": "auto", "max_tokens": 128, "temperature": 0})
        calls = chat["choices"][0]["message"].get("tool_calls") or []
        raw = post(server, "/completions", {
            "model": export_dir.name, "prompt": prompt, "max_tokens": 128, "temperature": 0,
            "skip_special_tokens": False})["choices"][0]["text"]
        ours = parse_assistant(raw, task.tools).tool_calls
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] \
            == [(c["name"], c["arguments"]) for c in ours], raw
        checked += bool(calls)
    assert checked >= len(TASKS)  # at least the memorised tasks begin with a tool call


def test_eval_through_the_server_scores_each_episode_as_in_process(export_dir, server, tmp_path):
    common = ["--horizons", "1", "--n", "1", "--runs", "1", "--greedy", "--batch", "3",
              "--max-turns", "6", "--max-turn-tokens", "160", "--max-context", "4096",
              "--seed", str(SEED)]  # a small cache: the in-process engine compiles for it
    assert evaluate.main(["--endpoint", server, "--out", str(tmp_path / "served")] + common) == 0
    assert evaluate.main(["--model", str(export_dir), "--dtype", "bfloat16", "--out",
                          str(tmp_path / "local")] + common) == 0
    outcome = lambda r: (r["id"], {k: r["metadata"]["episode"][k] for k in (
        "status", "reason", "reward", "turns", "tool_calls", "malformed_calls")})
    read = lambda d: sorted(outcome(json.loads(line)) for line in
                            (tmp_path / d / "episodes.jsonl").read_text().splitlines())
    served, local = read("served"), read("local")
    print("per-episode outcomes:", served)
    assert served == local
    assert all(o["reward"] == 1.0 for _, o in served)  # the memorised tasks, solved both ways
    # And the same records: tokens, masks, parsed conversations; the log-probabilities of two
    # bfloat16 implementations.
    full = lambda d: {r["id"]: r for r in map(json.loads, (
        tmp_path / d / "episodes.jsonl").read_text().splitlines())}
    a, b = full("served"), full("local")
    for key in a:
        ea, eb = a[key]["metadata"]["episode"], b[key]["metadata"]["episode"]
        assert (ea["tokens"], ea["model_mask"]) == (eb["tokens"], eb["model_mask"])
        assert a[key]["messages"] == b[key]["messages"]
        np.testing.assert_allclose(ea["logprobs"], eb["logprobs"], atol=0.05)
