"""`python -m a1jax.eval --endpoint`: a chat server as the policy. A stand-in OpenAI-compatible
server (standard library) answers each turn with the task's reference turn as a server's parsers
return it (reasoning, content, `tool_calls` with JSON arguments); the evaluation must record
exactly what the in-process replay records, and fail clearly when the server does."""

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from a1jax import eval as evaluate
from a1jax.agent.endpoint import ChatClient, EndpointError, assistant_message
from a1jax.agent.environment import make_task
from a1jax.agent.episode import Renderer
from a1jax.agent.replay import assistant_turns
from a1jax.data.chat_template import template_for
from a1jax.data.schema import validate
from a1jax.data.tokenizer import load_tokenizer

ARGS = ["--horizons", "1,2", "--n", "2", "--runs", "1", "--greedy", "--batch", "3"]
TASKS = [make_task(d, h, evaluate.eval_seed(0), i) for d in ("kb_search", "calculator", "files")
         for h in (1, 2) for i in range(2)]


class Server:
    """Replays references over HTTP. `token_ids`: return the sampled ids as vLLM does;
    `malformed`: the first turn is a call the server's parser could not read (returned as text);
    `die_after`: stop answering after that many chat requests."""

    def __init__(self, token_ids=False, malformed=False, die_after=None, root="/nonexistent"):
        self.token_ids, self.malformed, self.die_after = token_ids, malformed, die_after
        self.root, self.requests = root, []
        tokenizer = load_tokenizer()
        self.renderer = Renderer(tokenizer, template_for(tokenizer))
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, payload):
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send(200, {"data": [{"id": "served", "root": server.root}]})

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(request)
                if server.die_after is not None and len(server.requests) > server.die_after:
                    # Stop serving and close the listening socket: a request still queued on
                    # it would otherwise wait out the client's whole timeout (600 s in CI).
                    threading.Thread(target=server.die).start()
                    self.close_connection = True
                    return
                if request["model"] != "served":
                    return self._send(404, {"error": {"message": "model not found"}})
                self._send(200, server.reply(request))

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def reply(self, request):
        messages = request["messages"]
        # The task whose reference conversation this is (some tasks share their prompt and
        # differ in what the tools return).
        said = lambda ms: [m["content"] for m in ms if m["role"] in ("user", "tool")
                           and not m["content"].startswith("error: malformed")]
        seen = said(messages)
        task = next(t for t in TASKS
                    if seen == said(validate(t.reference)["messages"])[:len(seen)])
        turn = sum(m["role"] == "assistant" for m in messages)
        if self.malformed and turn == 0:
            text = "<tool_call>\n<function=search>\n<parameter=query>\nx"
            return {"choices": [{"message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}]}
        turn -= self.malformed  # the failed turn is not one of the reference's
        ref = [m for m in validate(task.reference)["messages"] if m["role"] == "assistant"][turn]
        message = {"role": "assistant", "content": ref["content"] or None,
                   "reasoning": ref.get("reasoning_content")}
        if ref.get("tool_calls"):
            message["tool_calls"] = [{"id": c["id"], "type": "function", "function": {
                "name": c["function"]["name"],
                "arguments": json.dumps(c["function"]["arguments"])}} for c in ref["tool_calls"]]
        choice = {"message": message,
                  "finish_reason": "tool_calls" if ref.get("tool_calls") else "stop"}
        if self.token_ids:
            choice["token_ids"] = assistant_turns(task, self.renderer)[turn][:-1]  # no stop id
        return {"choices": [choice]}

    def die(self):
        self.http.shutdown()
        self.http.server_close()

    close = die


def records(path):
    return [json.loads(line) for line in (path / "episodes.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    out = tmp_path_factory.mktemp("replay")
    assert evaluate.main(["--replay", "--out", str(out)] + ARGS) == 0
    return records(out)


@pytest.mark.parametrize("token_ids", [False, True])
def test_served_replies_record_what_in_process_replay_records(replayed, tmp_path, token_ids):
    server = Server(token_ids=token_ids)
    try:
        assert evaluate.main(["--endpoint", server.url, "--out", str(tmp_path)] + ARGS) == 0
    finally:
        server.close()
    served = records(tmp_path)
    assert len(served) == len(replayed) == 12
    for ours, ref in zip(served, copy.deepcopy(replayed)):
        for r in (ours, ref):
            del r["metadata"]["episode"]["logprobs"]
        assert ours == ref  # ids, tokens, masks, parsed messages, status, reward
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["served_model"] == "served" and results["endpoint"] == server.url
    assert all(row["avg@1"] == 1.0 for row in results["rows"])
    # What the server was sent: the task's tools, greedy sampling, the turn budget, and the
    # model's earlier turns with JSON-string arguments and their reasoning.
    first = server.requests[0]
    assert first["tools"] == list(TASKS[0].tools) and first["temperature"] == 0.0
    assert first["max_tokens"] == 1024 and first["tool_choice"] == "auto"
    later = next(r for r in server.requests if len(r["messages"]) > 3)
    assistant = later["messages"][2]
    assert isinstance(assistant["tool_calls"][0]["function"]["arguments"], str)
    assert assistant["reasoning_content"].startswith("Step 1:")
    assert later["messages"][3]["role"] == "tool"


def test_a_call_the_server_could_not_parse_is_a_malformed_call(tmp_path):
    server = Server(malformed=True)
    try:
        assert evaluate.main(["--endpoint", server.url, "--out", str(tmp_path), "--domains",
                              "kb_search", "--horizons", "1", "--n", "1", "--runs", "1",
                              "--greedy"]) == 0
    finally:
        server.close()
    (record,) = records(tmp_path)
    episode = record["metadata"]["episode"]
    assert episode["malformed_calls"] == 1 and episode["status"] == "finished"
    error = next(m for m in record["messages"] if m["role"] == "tool")
    assert error["content"].startswith("error: ")
    reference = validate(make_task("kb_search", 1, evaluate.eval_seed(0), 0).reference)
    assert episode["turns"] == 1 + sum(m["role"] == "assistant" for m in reference["messages"])
    assert episode["reward"] == 1.0  # then the reference's turns, which solve it


def test_no_server_and_an_unknown_model_are_clear_errors(tmp_path):
    server = Server()
    url = server.url
    try:
        with pytest.raises(EndpointError) as e:
            evaluate.main(["--endpoint", url, "--served-model", "other", "--out",
                           str(tmp_path)] + ARGS)
        assert str(e.value) == f"the server at {url} does not serve 'other'; it serves: served"
    finally:
        server.close()
    with pytest.raises(EndpointError) as e:
        evaluate.main(["--endpoint", url, "--out", str(tmp_path)] + ARGS)
    assert str(e.value).startswith(f"no answer from a server at {url} (")
    assert str(e.value).endswith("start one with launch/serve.sh HF_DIR, or check --endpoint")
    with pytest.raises(EndpointError) as e:
        ChatClient("127.0.0.1:8000")
    assert str(e.value) == ("--endpoint must be an http(s) URL such as http://127.0.0.1:8000/v1, "
                            "got '127.0.0.1:8000'")


def test_a_server_that_dies_keeps_the_episodes_done_and_the_rerun_resumes(replayed, tmp_path):
    server = Server(die_after=12)  # 3 episodes at a time, 2 to 5 turns each
    with pytest.raises(EndpointError) as e:
        evaluate.main(["--endpoint", server.url, "--out", str(tmp_path), "--request-timeout",
                       "60"] + ARGS)
    server.close()
    kept = records(tmp_path)
    assert 0 < len(kept) < 12
    assert str(e.value).endswith(f"{len(kept)} episodes are kept in {tmp_path}/episodes.jsonl; "
                                 f"the same command resumes from them")
    server = Server()
    try:
        assert evaluate.main(["--endpoint", server.url, "--out", str(tmp_path)] + ARGS) == 0
    finally:
        server.close()
    assert sorted(r["id"] for r in records(tmp_path)) == sorted(r["id"] for r in replayed)


def test_a_reply_becomes_the_template_message():
    reply = {"content": None, "reasoning": "why",
             "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": '{"a": 1}'}}]}
    assert assistant_message(reply) == {
        "role": "assistant", "content": "", "reasoning_content": "why",
        "tool_calls": [{"id": "c1", "type": "function",
                        "function": {"name": "f", "arguments": {"a": 1}}}]}
    broken = {"content": "x", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}
    assert assistant_message(broken) == {
        "role": "assistant",
        "content": "x\n\n<tool_call>\n<function=f>\n{oops\n</function>\n</tool_call>"}
