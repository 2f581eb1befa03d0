"""A scripted policy: replays each task's reference trajectory, one assistant turn per call.

It answers every task correctly through the same loop, environments and verifiers a model goes
through, so an evaluation that scores it below 100% has a bug in that path, not in a model.
`python -m a1jax.eval --replay` runs it."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from a1jax.agent.environment import Task
from a1jax.agent.episode import Budgets, Renderer, run_episodes
from a1jax.data.chat_template import render
from a1jax.data.schema import validate
from a1jax.infer.engine import Generated


def assistant_turns(task: Task, renderer: Renderer) -> list[list[int]]:
    """The reference's assistant turns as the template renders them, each up to and including
    its end-of-turn token, as token ids."""
    messages = validate(task.reference)["messages"]  # tool-call arguments as mappings
    turns = []
    for j, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(messages[:j], task.tools, template=renderer.template,
                        add_generation_prompt=True)
        whole = render(messages[:j + 1], task.tools, template=renderer.template)
        text = whole[len(before):]
        turns.append(renderer.encode(text[:text.index("<|im_end|>") + len("<|im_end|>")]))
    return turns


class ReplayPolicy:
    def __init__(self, renderer: Renderer, slots: int):
        self.renderer, self.slots = renderer, slots
        self._turns: dict[int, list[list[int]]] = {}

    def start(self, slot: int, tokens: list[int], task: Task) -> None:
        self._turns[slot] = assistant_turns(task, self.renderer)

    def extend(self, slot: int, tokens: list[int], messages: Sequence[dict] = ()) -> None:
        pass

    def generate(self, slots: Sequence[int], max_new_tokens: int) -> dict[int, Generated]:
        out = {}
        for slot in slots:
            turn = self._turns[slot].pop(0)
            finish = "stop" if len(turn) <= max_new_tokens else "length"
            turn = turn[:max_new_tokens]
            out[slot] = Generated(turn, [0.0] * len(turn), finish)
        return out


def reference_success(tasks: Sequence[Task], renderer: Renderer, budgets: Budgets, slots: int
                      ) -> dict[tuple[str, int], float]:
    """Per (domain, horizon): the share of `tasks` their reference solutions solve when replayed
    through the same loop within `budgets`. Below 1, the budgets (most often the context) cut
    the references off: a model that imitates them is capped there, and only a shorter solution
    than the reference can pass those tasks (docs/recipe.md's runs/recipe6 was read against
    such a cap)."""
    episodes = run_episodes(tasks, ReplayPolicy(renderer, slots), renderer, slots=slots,
                            budgets=budgets)
    cells: dict[tuple[str, int], list[float]] = defaultdict(list)
    for task, episode in zip(tasks, episodes):
        cells[(task.domain, task.horizon)].append(float(episode.reward))
    return {cell: float(np.mean(v)) for cell, v in cells.items()}
