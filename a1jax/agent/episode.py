"""The episode loop: a policy acts in environments, many episodes batched through one sampler.

Each episode: the task's system and user turns are rendered with the chat template (generation
prompt added) and prefilled; then, turn by turn, the policy generates an assistant turn, the
turn is parsed (`tool_calls.parse_assistant`), its calls run in the environment, and the
observations, rendered as the template renders tool turns, are appended to the live cache. A
turn without calls is the final answer, which the environment verifies. A malformed call or an
unknown tool is answered with an error observation and the episode goes on.

Statuses: `finished` (a final answer), `truncated` (a budget: turns, response tokens, the
context; the record is a valid prefix), `aborted` (the environment failed). Every episode is
recorded token-in/token-out: the exact ids, which of them the model produced (1) and which the
environment inserted (0), the sampler's log-probabilities, the parsed conversation, the reward.
"""

from __future__ import annotations

import dataclasses
import json
import traceback
from collections import deque
from typing import Any, Callable, Iterable, Protocol, Sequence

from a1jax.agent.environment import Environment, Task, make_environment
from a1jax.data.chat_template import render
from a1jax.data.tool_calls import ToolCallParseError, parse_assistant
from a1jax.infer.engine import Engine, Generated
from a1jax.infer.sampling import SamplingParams

STATUSES = ("finished", "truncated", "aborted")


@dataclasses.dataclass(frozen=True)
class Budgets:
    max_turns: int = 100  # model calls per episode (Agents-A1's harness: 100)
    max_turn_tokens: int = 1024  # new tokens per model call
    max_response_tokens: int = 32_768  # model tokens per episode
    max_context: int = 32_768  # tokens per episode, prompt and observations included


class Policy(Protocol):
    """What the loop needs of a model: slots that hold one episode's tokens each."""

    def start(self, slot: int, tokens: list[int], task: Task) -> None: ...
    # `messages`: the tool turns those tokens render (a chat server takes messages, not tokens).
    def extend(self, slot: int, tokens: list[int], messages: Sequence[dict[str, Any]]
               ) -> None: ...
    def generate(self, slots: Sequence[int], max_new_tokens: int) -> dict[int, Generated]: ...


class EnginePolicy:
    """A model through `a1jax.infer.Engine`: one engine row per slot."""

    def __init__(self, engine: Engine, sampling: SamplingParams):
        self.engine, self.sampling, self.calls = engine, sampling, 0

    @property
    def slots(self) -> int:
        return self.engine.batch

    def start(self, slot: int, tokens: list[int], task: Task) -> None:
        self.engine.reset([slot])
        self.engine.extend({slot: tokens})

    def extend(self, slot: int, tokens: list[int], messages: Sequence[dict[str, Any]] = ()
               ) -> None:
        self.engine.extend({slot: tokens})

    def generate(self, slots: Sequence[int], max_new_tokens: int) -> dict[int, Generated]:
        # A fresh seed per call (from the run's seed), so turns do not repeat each other's draws.
        sampling = self.sampling.replace(max_new_tokens=max_new_tokens,
                                         seed=self.sampling.seed * 1_000_003 + self.calls)
        self.calls += 1
        return self.engine.generate(slots, sampling)


@dataclasses.dataclass
class Episode:
    task: Task
    messages: list[dict[str, Any]]
    tokens: list[int]
    model_mask: list[int]
    logprobs: list[float]
    status: str = ""
    reason: str = ""  # what ended it: answer, max_turns, max_response_tokens, context, ...
    reward: float = 0.0
    turns: int = 0
    tool_calls: int = 0
    malformed_calls: int = 0
    tool_errors: int = 0
    progress: float = 0.0  # the environment's `progress()` when the episode ended
    run: int = 0

    @property
    def assistant_tokens(self) -> int:
        return sum(self.model_mask)

    def record(self) -> dict[str, Any]:
        """The episode as a trajectory `a1jax.data` reads back (so verified episodes can be
        trained on), with the token-level record under metadata.episode."""
        t = self.task
        return {"id": f"{t.id}-run{self.run}", "domain": t.domain, "tools": t.tools,
                "messages": self.messages, "verifier": t.verifier,
                "metadata": {"generator": "a1jax.agent", "horizon": t.horizon, "seed": t.seed,
                             "index": t.index, "run": self.run, "episode": {
                                 "status": self.status, "reason": self.reason,
                                 "reward": self.reward, "turns": self.turns,
                                 "tool_calls": self.tool_calls,
                                 "malformed_calls": self.malformed_calls,
                                 "tool_errors": self.tool_errors,
                                 "progress": self.progress,
                                 "assistant_tokens": self.assistant_tokens,
                                 "tokens": self.tokens, "model_mask": self.model_mask,
                                 "logprobs": self.logprobs}}}


class Renderer:
    """Chat-template text as token ids: the prompt, and tool observations to append."""

    def __init__(self, tokenizer, template: str):
        self.tokenizer, self.template = tokenizer, template
        # Observations are rendered after a fixed short exchange and cut where it ends: the
        # template's tool-turn text (which depends on no earlier message but the assistant turn
        # before it), without rendering the whole conversation each turn.
        self._base = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
        self._base_text = render(self._base, None, template=template)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt(self, task: Task) -> list[int]:
        return self.encode(render(task.messages, task.tools, template=self.template,
                                  add_generation_prompt=True))

    def observations(self, tool_messages: list[dict[str, Any]]) -> list[int]:
        """The tokens after an assistant turn's end-of-turn token up to the next generation
        prompt (inclusive)."""
        full = render(self._base + tool_messages, None, template=self.template,
                      add_generation_prompt=True)
        end = self._base_text.rstrip("\n")  # the turn's last token is already in the cache
        if not full.startswith(end):
            raise ValueError("the chat template does not render tool turns after the "
                             "conversation before them")
        return self.encode(full[len(end):])

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=False)


def run_episodes(tasks: Iterable[Task], policy: Policy, renderer: Renderer, *, slots: int,
                 budgets: Budgets = Budgets(),
                 environment: Callable[[str], Environment] = make_environment,
                 on_done: Callable[[Episode], None] | None = None, run: int = 0
                 ) -> list[Episode]:
    """Runs every task to an end, `slots` episodes at a time (a finished one frees its slot for
    the next task). Returns the episodes in the order of `tasks`."""
    queue = deque(enumerate(tasks))
    done: dict[int, Episode] = {}
    active: dict[int, tuple[int, Episode, Environment]] = {}  # slot -> (order, episode, env)

    def finish(slot: int, status: str, reason: str) -> None:
        order, ep, env = active.pop(slot)
        ep.status, ep.reason = status, reason
        if env is not None:
            ep.progress = env.progress()
        done[order] = ep
        if on_done is not None:
            on_done(ep)

    while queue or active:
        for slot in range(slots):
            if slot in active or not queue:
                continue
            order, task = queue.popleft()
            ep = Episode(task, [dict(m) for m in task.messages], [], [], [], run=run)
            active[slot] = (order, ep, None)
            try:
                env = environment(task.domain)
                env.reset(task)
            except Exception:  # noqa: BLE001  (any failure of the environment aborts)
                ep.reason = traceback.format_exc(limit=1).strip().splitlines()[-1]
                finish(slot, "aborted", ep.reason)
                continue
            active[slot] = (order, ep, env)
            prompt = renderer.prompt(task)
            ep.tokens += prompt
            ep.model_mask += [0] * len(prompt)
            ep.logprobs += [0.0] * len(prompt)
            if len(prompt) >= budgets.max_context:
                finish(slot, "truncated", "context")
                continue
            policy.start(slot, prompt, task)
        if not active:
            continue
        # One turn length for every call (a compiled decode loop per length): the context
        # is the cache's own limit ("context"), the response budget is checked after the turn.
        generated = policy.generate(sorted(active), budgets.max_turn_tokens)
        for slot, out in generated.items():
            _, ep, env = active[slot]
            ep.tokens += out.tokens
            ep.model_mask += [1] * len(out.tokens)
            ep.logprobs += list(out.logprobs)
            ep.turns += 1
            text = renderer.decode(out.tokens)
            if out.finish_reason != "stop":
                finish(slot, "truncated", _budget_hit(ep, budgets, out.finish_reason))
                continue
            try:
                parsed = parse_assistant(text, ep.task.tools)
            except ToolCallParseError as e:
                ep.malformed_calls += 1
                ep.messages.append({"role": "assistant", "content": text.split("<|im_end|>")[0]})
                tool_messages = [{"role": "tool", "tool_call_id": f"call_{ep.tool_calls}",
                                  "name": "error", "content": f"error: {e}"}]
            else:
                message = {"role": "assistant", "reasoning_content": parsed.reasoning,
                           "content": parsed.content}
                if not parsed.tool_calls:
                    ep.messages.append(message)
                    ep.reward = float(env.verify(parsed.content))
                    finish(slot, "finished", "answer")
                    continue
                ids = [f"call_{ep.tool_calls + i + 1}" for i in range(len(parsed.tool_calls))]
                message["tool_calls"] = [{"id": i, "type": "function", "function": call}
                                         for i, call in zip(ids, parsed.tool_calls)]
                ep.messages.append(message)
                ep.tool_calls += len(parsed.tool_calls)
                try:
                    results = env.step(parsed.tool_calls)
                except Exception:  # noqa: BLE001  (a failing environment aborts the episode)
                    finish(slot, "aborted",
                           traceback.format_exc(limit=1).strip().splitlines()[-1])
                    continue
                ep.tool_errors += sum(r.error for r in results)
                ep.malformed_calls += sum(r.error and r.content.startswith(
                    ("error: unknown tool", "error: malformed")) for r in results)
                tool_messages = [{"role": "tool", "tool_call_id": i, "name": r.name,
                                  "content": r.content} for i, r in zip(ids, results)]
            ep.messages += tool_messages
            if ep.turns >= budgets.max_turns:
                finish(slot, "truncated", "max_turns")
                continue
            observation = renderer.observations(tool_messages)
            if len(ep.tokens) + len(observation) >= budgets.max_context:
                finish(slot, "truncated", "context")
                continue
            if ep.assistant_tokens >= budgets.max_response_tokens:
                finish(slot, "truncated", "max_response_tokens")
                continue
            ep.tokens += observation
            ep.model_mask += [0] * len(observation)
            ep.logprobs += [0.0] * len(observation)
            policy.extend(slot, observation, tool_messages)
    return [done[i] for i in sorted(done)]


def _budget_hit(ep: Episode, budgets: Budgets, finish_reason: str) -> str:
    if finish_reason == "context" or len(ep.tokens) >= budgets.max_context:
        return "context"
    if ep.assistant_tokens >= budgets.max_response_tokens:
        return "max_response_tokens"
    return "max_turn_tokens"


def write_jsonl(path: str, episodes: Iterable[Episode]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for ep in episodes:
            f.write(json.dumps(ep.record(), ensure_ascii=False) + "\n")
