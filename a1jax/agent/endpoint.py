"""An OpenAI-compatible chat server as the policy: the model `launch/serve.sh` serves (vLLM, or
any server with the chat completions API and tool calling) acting in a1jax's environments.

Each turn is one chat completion request: the episode's messages so far (the model's earlier
turns as the server parsed them: reasoning, content, `tool_calls`), the task's tools as
`tools=[...]`, the sampling settings. The turn's tokens are the ones the server sampled (vLLM
returns them with `return_token_ids`; for another server, the reply rendered with the chat
template), so the episode's record and the loop's parsing and tool calls are those of
in-process generation. A reply whose tool call the server could
not parse comes back as text; the loop's own parser then rejects it and the episode gets an error
observation, as in-process.

The HTTP client is the standard library's: one JSON request per call, the active episodes' turns
sent concurrently so that the server batches them. (The `openai` package is not a dependency of
a1jax's environment; it lives in the serving one.)
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from a1jax.agent.environment import Task
from a1jax.agent.episode import Renderer
from a1jax.data.chat_template import render
from a1jax.errors import A1Error
from a1jax.infer.engine import Generated
from a1jax.infer.sampling import SamplingParams

END_OF_TURN = "<|im_end|>"


class EndpointError(A1Error):
    """The server cannot be reached, refused a request, or answered something unusable."""


class ChatClient:
    """The few calls of the OpenAI API an evaluation makes, against `base_url` (".../v1")."""

    def __init__(self, base_url: str, timeout: float = 600.0, api_key: str | None = None):
        if not base_url.startswith(("http://", "https://")):
            raise EndpointError(f"--endpoint must be an http(s) URL such as "
                                f"http://127.0.0.1:8000/v1, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")

    def _request(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.base_url + path
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("error", {}).get("message", detail)
            except (ValueError, AttributeError):
                pass
            raise EndpointError(f"the server at {self.base_url} refused {path} "
                                f"(HTTP {e.code}): {str(detail)[:500]}") from None
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise EndpointError(f"no answer from a server at {self.base_url} ({reason}); start "
                                f"one with launch/serve.sh HF_DIR, or check --endpoint") from None
        try:
            return json.loads(payload)
        except ValueError:
            raise EndpointError(f"the server at {self.base_url} answered {path} with something "
                                f"that is not JSON: {payload[:200]!r}") from None

    def models(self) -> list[dict[str, Any]]:
        return list(self._request("/models").get("data", []))

    def resolve_model(self, name: str | None) -> dict[str, Any]:
        """The served model called `name`, or the only one served when `name` is None."""
        served = self.models()
        ids = [m.get("id") for m in served]
        if name is None:
            if len(served) != 1:
                raise EndpointError(f"the server at {self.base_url} serves {len(served)} models "
                                    f"({', '.join(map(str, ids)) or 'none'}): pick one with "
                                    f"--served-model")
            return served[0]
        for m in served:
            if m.get("id") == name:
                return m
        raise EndpointError(f"the server at {self.base_url} does not serve {name!r}; it serves: "
                            f"{', '.join(map(str, ids)) or 'nothing'}")

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("/chat/completions", body)


def sampling_fields(sampling: SamplingParams) -> dict[str, Any]:
    """`sampling` as chat-completion fields (top_k, min_p and repetition_penalty are vLLM's
    extensions of the API, as are the stop token ids)."""
    fields: dict[str, Any] = {"temperature": sampling.temperature, "seed": sampling.seed,
                              "stop_token_ids": list(sampling.stop_tokens)}
    if sampling.temperature > 0:
        fields.update(top_p=sampling.top_p, top_k=sampling.top_k or -1, min_p=sampling.min_p,
                      presence_penalty=sampling.presence_penalty,
                      repetition_penalty=sampling.repetition_penalty)
    return fields


def _wire(message: dict[str, Any]) -> dict[str, Any]:
    """A conversation message as the API takes it: tool-call arguments as JSON strings."""
    if message["role"] == "tool":
        return {"role": "tool", "tool_call_id": message.get("tool_call_id", ""),
                "content": message["content"]}
    out = {k: v for k, v in message.items() if k != "tool_calls" and v is not None}
    if message.get("tool_calls"):
        out["tool_calls"] = [{"id": c["id"], "type": "function", "function": {
            "name": c["function"]["name"],
            "arguments": json.dumps(c["function"]["arguments"], ensure_ascii=False)}}
            for c in message["tool_calls"]]
    return out


def assistant_message(reply: dict[str, Any]) -> dict[str, Any]:
    """The server's reply message as the chat template renders an assistant turn: reasoning as
    `reasoning_content`, tool-call arguments as mappings. A call whose arguments are not a JSON
    object is kept as text, so that the episode's parser rejects it as a malformed call."""
    content = reply.get("content") or ""
    reasoning = reply.get("reasoning_content", reply.get("reasoning"))
    calls, broken = [], []
    for i, call in enumerate(reply.get("tool_calls") or []):
        function = call.get("function") or {}
        raw = function.get("arguments") or "{}"
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            broken.append(f"<tool_call>\n<function={function.get('name')}>\n{raw}\n"
                          f"</function>\n</tool_call>")
            continue
        calls.append({"id": call.get("id") or f"call_{i}", "type": "function",
                      "function": {"name": function.get("name"), "arguments": arguments}})
    if broken:
        content = "\n\n".join([content.strip()] * bool(content.strip()) + broken)
        calls = []  # the turn is malformed as a whole, as the in-process parser sees it
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if isinstance(reasoning, str):
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = calls
    return message


class EndpointPolicy:
    """Episodes as chat conversations with a server; one conversation per slot."""

    def __init__(self, client: ChatClient, model: str, renderer: Renderer,
                 sampling: SamplingParams, slots: int):
        self.client, self.model, self.renderer = client, model, renderer
        self.sampling, self.slots, self.calls = sampling, slots, 0
        self._conversations: dict[int, list[dict[str, Any]]] = {}
        self._tasks: dict[int, Task] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, slots))

    def start(self, slot: int, tokens: list[int], task: Task) -> None:
        self._conversations[slot] = [dict(m) for m in task.messages]
        self._tasks[slot] = task

    def extend(self, slot: int, tokens: list[int], messages: Sequence[dict[str, Any]] = ()
               ) -> None:
        self._conversations[slot] += [dict(m) for m in messages]

    def generate(self, slots: Sequence[int], max_new_tokens: int) -> dict[int, Generated]:
        sampling = self.sampling.replace(seed=self.sampling.seed * 1_000_003 + self.calls)
        self.calls += 1
        replies = self._pool.map(lambda s: self._turn(s, max_new_tokens, sampling), slots)
        return dict(zip(slots, replies))

    def _turn(self, slot: int, max_new_tokens: int, sampling: SamplingParams) -> Generated:
        conversation, task = self._conversations[slot], self._tasks[slot]
        body = {"model": self.model, "messages": [_wire(m) for m in conversation],
                "max_tokens": max_new_tokens, "logprobs": True, "return_token_ids": True,
                **sampling_fields(sampling)}
        if task.tools:
            body.update(tools=list(task.tools), tool_choice="auto")
        response = self.client.chat(body)
        try:
            choice = response["choices"][0]
            message = assistant_message(choice["message"])
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"the server's reply has no message: {str(response)[:300]}"
                                ) from None
        conversation.append(message)
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        served = [t.get("logprob", 0.0) for t in ((choice.get("logprobs") or {}).get("content")
                                                    or [])]
        if choice.get("token_ids") is not None:
            # vLLM's `return_token_ids`: the sampled tokens themselves, as in-process generation
            # records them (the end-of-turn token included when the turn ended).
            tokens = [int(t) for t in choice["token_ids"]]
            end = self.renderer.encode(END_OF_TURN)
            if finish == "stop" and tokens[-len(end):] != end:
                tokens += end
        else:
            # Another server: the turn as the template renders the reply (the model's own
            # tokens when it wrote the template's form, as a trained model does).
            tokens = self._rendered_turn(conversation[:-1], message, task)
            if finish == "length":
                tokens = tokens[:max_new_tokens]
        logprobs = (served + [0.0] * len(tokens))[:len(tokens)]
        return Generated(tokens, logprobs, finish)

    def _rendered_turn(self, conversation: list[dict[str, Any]], message: dict[str, Any],
                       task: Task) -> list[int]:
        """The assistant turn's tokens after the generation prompt, up to and including its
        end-of-turn token, as the template renders `message` after `conversation`."""
        template, tools = self.renderer.template, task.tools
        before = render(conversation, tools, template=template, add_generation_prompt=True)
        whole = render(conversation + [message], tools, template=template)
        if not whole.startswith(before):
            raise EndpointError("the chat template renders an assistant turn that does not "
                                "continue its generation prompt; a1jax cannot record it")
        text = whole[len(before):]
        end = text.find(END_OF_TURN)
        return self.renderer.encode(text[:end + len(END_OF_TURN)] if end >= 0 else text)
