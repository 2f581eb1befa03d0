"""The episode loop: records equal the chat template's rendering, and every way an episode can
go wrong ends as described, with the evaluation's summary reporting it."""

import pytest

from a1jax.agent.domains import Calculator
from a1jax.agent.environment import make_environment, make_task
from a1jax.agent.episode import Budgets, Renderer, run_episodes
from a1jax.agent.replay import ReplayPolicy
from a1jax.data.chat_template import template_for
from a1jax.data.schema import validate
from a1jax.data.tokenizer import TrajectoryEncoder, load_tokenizer
from a1jax.eval import summarize
from a1jax.infer.engine import Generated


@pytest.fixture(scope="module")
def renderer():
    tok = load_tokenizer()
    return Renderer(tok, template_for(tok))


def test_replayed_episodes_equal_the_template_rendering_and_solve_every_task(renderer):
    tasks = [make_task(d, h, 1_000_000, i) for d in ("kb_search", "calculator", "files")
             for h in (1, 2, 4) for i in range(2)]
    episodes = run_episodes(tasks, ReplayPolicy(renderer, 4), renderer, slots=4)
    encoder = TrajectoryEncoder(renderer.tokenizer)
    assert [e.task.id for e in episodes] == [t.id for t in tasks]
    newline = renderer.encode("\n")
    for ep in episodes:
        assert (ep.status, ep.reason, ep.reward) == ("finished", "answer", 1.0), ep.task.id
        for trajectory in (validate(ep.task.reference), validate(ep.record())):
            want = encoder(trajectory)
            # The rendering ends with the newline after the final <|im_end|>: not generated.
            assert ep.tokens + newline == want.tokens.tolist()
            assert ep.model_mask + [0] == want.loss_mask.tolist()
        assert ep.tool_calls == sum(len(m.get("tool_calls") or ())
                                    for m in ep.task.reference["messages"])


class Scripted:
    """Says the given assistant texts in order, whatever it is shown."""

    def __init__(self, renderer, texts):
        self.renderer, self.texts, self.seen = renderer, list(texts), []

    def start(self, slot, tokens, task):
        self.seen.append(list(tokens))

    def extend(self, slot, tokens, messages):
        self.seen[-1] += tokens

    def generate(self, slots, max_new_tokens):
        turn = self.renderer.encode(self.texts.pop(0) + "<|im_end|>")
        finish = "stop" if len(turn) <= max_new_tokens else "length"
        turn = turn[:max_new_tokens]
        self.seen[-1] += turn  # as an engine's cache holds its own samples
        return {slots[0]: Generated(turn, [-0.5] * len(turn), finish)}


def call(name, **args):
    params = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in args.items())
    return f"Thinking.\n</think>\n\n<tool_call>\n<function={name}>\n{params}</function>\n</tool_call>"


def episode(renderer, domain, texts, budgets=Budgets(), environment=make_environment):
    task = make_task(domain, 1, 1_000_000, 0)
    policy = Scripted(renderer, texts)
    (ep,) = run_episodes([task], policy, renderer, slots=1, budgets=budgets,
                         environment=environment)
    assert policy.seen[0] == ep.tokens  # what the model was shown is the record
    return ep


def test_bad_calls_get_error_observations_and_the_episode_goes_on(renderer):
    task = make_task("files", 1, 1_000_000, 0)
    (name,) = task.verifier["inbox"]  # one odd file: nothing to move
    texts = [
        "Listing.\n</think>\n\n<tool_call>\n<function=list_dir>\n<parameter=path>\n/inbox",
        call("list_files", path="/inbox"),
        call("list_dir", path="/inbox", page="two"),
        call("list_dir", path="/inbox", page=0),
        call("read_file", path=f"/inbox/{name}"),
        f"Done.\n</think>\n\nFinal answer: {task.verifier['answer']}"]
    ep = episode(renderer, "files", texts)
    assert (ep.status, ep.reward, ep.turns) == ("finished", 1.0, 6)
    assert ep.progress == ep.record()["metadata"]["episode"]["progress"] == 1.0  # its file read
    cut = episode(renderer, "files", texts, Budgets(max_turns=4))  # stopped before the read
    assert (cut.status, cut.reason, cut.progress) == ("truncated", "max_turns", 0.0)
    observations = [m["content"] for m in ep.messages if m["role"] == "tool"]
    assert observations[0].startswith("error: malformed tool call: ")
    assert observations[1] == ("error: unknown tool 'list_files'; available: list_dir, "
                               "read_file, move, calculator")
    assert observations[2] == "error: list_dir: argument 'page' must be an integer, got 'two'"
    assert observations[3].startswith('{"entries": [')
    assert observations[4] == f"value: {task.verifier['inbox'][name]}"
    assert (ep.malformed_calls, ep.tool_errors, ep.tool_calls) == (2, 2, 4)
    assert ep.assistant_tokens == sum(ep.model_mask) and len(ep.logprobs) == len(ep.tokens)


def test_budgets_truncate_and_failures_abort(renderer):
    ops = [call("calculator", expression="(1 + 2) % 7")] * 3
    turns = episode(renderer, "calculator", ops, Budgets(max_turns=2))
    assert (turns.status, turns.reason, turns.turns) == ("truncated", "max_turns", 2)
    long = episode(renderer, "calculator", ["x" * 400], Budgets(max_turn_tokens=16))
    assert (long.status, long.reason, sum(long.model_mask)) == ("truncated", "max_turn_tokens", 16)
    prompt = len(renderer.prompt(make_task("calculator", 1, 1_000_000, 0)))
    context = episode(renderer, "calculator", ops, Budgets(max_context=prompt + 40))
    assert (context.status, context.reason) == ("truncated", "context")
    assert len(context.tokens) < prompt + 40
    response = episode(renderer, "calculator", ops, Budgets(max_response_tokens=30))
    assert (response.status, response.reason) == ("truncated", "max_response_tokens")

    class Broken(Calculator):
        def tool_calculator(self, expression):
            raise RuntimeError("the sandbox died")

    aborted = episode(renderer, "calculator", ops, environment=lambda domain: Broken())
    assert (aborted.status, aborted.reason) == ("aborted", "RuntimeError: the sandbox died")
    wrong = episode(renderer, "calculator", ["Sure.\n</think>\n\nFinal answer: -1"])
    assert (wrong.status, wrong.reward) == ("finished", 0.0)

    rows = summarize([e.record() for e in (turns, long, context, response, aborted, wrong)],
                     runs=1)
    (row,) = rows
    assert (row["finished"], row["truncated"], row["aborted"]) == (1 / 6, 4 / 6, 1 / 6)
    assert row["avg@1"] == 0.0 and row["episodes"] == 6
