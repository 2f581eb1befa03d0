"""Deterministic synthetic long-horizon tool-use tasks with verifiers: the project's own data.

Three domains, each a multi-step task whose `horizon` sets the number of steps (so trajectories run
from a few hundred tokens at horizon 1 to beyond 64K tokens at a few hundred steps):

  kb_search   multi-hop search over a generated knowledge base: follow `mentor` links `horizon`
              times from a start person, report the city of the person reached.
  calculator  a running computation of `horizon` modular operations with a calculator tool (and a
              python tool to double-check, two calls in one turn).
  files       file manipulation under a constraint: of `horizon` files in /inbox, move the ones
              holding an even number to /archive, report how many moved and their sum (added
              with a calculator tool when two or more moved).

Trajectories carry reasoning on every assistant turn, tool calls (arguments sometimes as JSON
strings, as real logs have them), observations, failed calls followed by recoveries (a misspelt
search, a malformed expression, a wrong path), and a final answer that `verify` accepts. Everything
derives from `random.Random` seeded by a string of (domain, horizon, seed, index), so the same
command writes the same bytes on every machine.

    python -m a1jax.data.synth --domain kb_search --horizon 8 --n 100 --seed 0 --out kb.jsonl
"""

from __future__ import annotations

import json
import random
import re
from typing import Any, Callable, Iterator

from a1jax import cli
from a1jax.data import args as argparsing
from a1jax.errors import A1Error

MOD = 1_000_003
# Task seeds from here on are held out for evaluation (a1jax.eval); training seeds stay below
# (a1jax.experiment refuses others), so no evaluated task was ever trained on.
EVAL_SEED_BASE = 1_000_000
SYSTEM = "You are an agent that solves tasks step by step with tools. Verify before answering."


def _tool(name: str, description: str, **params: str) -> dict[str, Any]:
    props = {k: {"type": t, "description": f"the {k}"} for k, t in params.items()}
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": props, "required": list(params)}}}


class _Builder:
    """Accumulates one trajectory's messages, numbering tool calls."""

    def __init__(self, rng: random.Random, tools: list[dict[str, Any]], task: str):
        self.rng, self.tools, self.calls = rng, tools, 0
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM},
                                               {"role": "user", "content": task}]

    def call(self, reasoning: str, *calls: tuple[str, dict[str, Any]],
             content: str = "") -> list[str]:
        out, ids = [], []
        for name, args in calls:
            self.calls += 1
            ids.append(f"call_{self.calls}")
            as_string = self.rng.random() < 0.3  # real logs often carry arguments as JSON text
            out.append({"id": ids[-1], "type": "function", "function": {
                "name": name, "arguments": json.dumps(args) if as_string else args}})
        self.messages.append({"role": "assistant", "reasoning_content": reasoning,
                              "content": content, "tool_calls": out})
        return ids

    def result(self, call_id: str, name: str, content: str) -> None:
        self.messages.append({"role": "tool", "tool_call_id": call_id, "name": name,
                              "content": content})

    def step(self, reasoning: str, name: str, args: dict[str, Any], result: str) -> None:
        (cid,) = self.call(reasoning, (name, args))
        self.result(cid, name, result)

    def answer(self, reasoning: str, answer: str) -> None:
        self.messages.append({"role": "assistant", "reasoning_content": reasoning,
                              "content": f"Final answer: {answer}"})


_SYLLABLES = ("ka", "lo", "mi", "ren", "sa", "tor", "vi", "del", "an", "bri", "cos", "ul",
              "fen", "ga", "hal", "ish", "jo", "mar", "nel", "or", "pe", "qui", "ros", "tam")
_EMPLOYERS = ("a shipyard", "the observatory", "a bakery", "the city archive", "a glassworks",
              "the railway", "a seed bank", "the lighthouse", "a print shop", "the museum")


# Every name starts with a title. Why: the Qwen pre-tokenizer joins a word to the character
# before it (" Torjo" after a space, "Torjo" after the newline that opens a tool-call parameter),
# and BPE spells the two differently ("ĠTorjo" vs "Tor" "jo"). Without a title, searching the
# person the task names is not a copy but a respelling of every first name, which the `tiny`
# model never learned (docs/recipe.md); with one, only the title is respelt, and every name word
# is the same tokens in the task, the results and the call. Surnames have two syllables (three
# until the study in docs/recipe.md showed `tiny` copying first names but not surnames): fewer
# tokens to copy, and still 576 of them. That did not make `tiny` copy names (docs/recipe.md,
# runs/recipe4: name tokens were rare in training; benchmarks/copy_tokens.py counts them); the
# tokenizer trained on syllables (`train_tokenizer.syllabify`) did (runs/recipe5).
_TITLES = ("Dr", "Mr", "Ms")


def _name(rng: random.Random, taken: set[str]) -> str:
    while True:
        name = (rng.choice(_TITLES) + " "
                + "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
                + " " + "".join(rng.choice(_SYLLABLES) for _ in range(2)).capitalize())
        if name not in taken:
            taken.add(name)
            return name


def _city(rng: random.Random) -> str:
    """An invented place name of two syllables (576 of them). Why not a list of real-looking
    names: with 14 cities, each one token, the `tiny` SFT model named a likely city instead of
    copying the one it had read (runs/recipe12 and runs/recipe13 in docs/recipe.md: half of its
    kb_search answers named a city no observation held), while it copied every mentor's name.
    Spelt from the names' syllables, a city is copied the way a name is."""
    return "".join(rng.choice(_SYLLABLES) for _ in range(2)).capitalize()


def _misspell(name: str) -> str:
    """The name with its last two letters swapped (or the last dropped, if they are equal)."""
    return name[:-2] + name[-1] + name[-2] if name[-1] != name[-2] else name[:-1]


def kb_search(rng: random.Random, horizon: int) -> tuple[list, dict, list]:
    tools = [_tool("search", "Search the knowledge base for documents about a person.",
                   query="string"),
             _tool("open_document", "Open a document by id and return its full text.",
                   doc_id="string")]
    taken: set[str] = set()
    chain = [_name(rng, taken) for _ in range(horizon + 1)]
    kb = {p: {"mentor": chain[i + 1] if i < horizon else _name(rng, taken),
              "city": _city(rng), "employer": rng.choice(_EMPLOYERS)}
          for i, p in enumerate(chain)}
    task = (f"Start from {chain[0]}. Follow the 'mentor' link {horizon} time(s) in the knowledge "
            "base. In which city does the person you reach live? Answer with the city name.")
    b = _Builder(rng, tools, task)
    for i, person in enumerate(chain):
        need = "mentor" if i < horizon else "city"
        if rng.random() < 0.15:
            wrong = _misspell(person)
            b.step(f"I need the {need} of {person}. Searching for them.", "search",
                   {"query": wrong}, f"No documents match '{wrong}'.")
            why = f"The search found nothing because I misspelt the name; retrying as '{person}'."
        else:
            why = f"Step {i + 1}: I need the {need} of {person}, so I search the knowledge base."
        facts = kb[person]
        doc = f"doc-{rng.randrange(10**6):06d}"
        # The employer comes first. Why: only the person's own line has one, and a causal model
        # can mark a token by what precedes it, not by what follows. After "works at", the city
        # and the mentor are both marked; with the city first (as before), finding it meant
        # matching the reached person's name across lines, which the `tiny` SFT model learned in
        # one run of three (docs/recipe.md, runs/recipe12) while it copied every mentor.
        hits = [f"[{doc}] {person}: works at {facts['employer']}; lives in {facts['city']}; "
                f"mentor: {facts['mentor']}."]
        for _ in range(rng.randint(1, 3)):  # distractors: other people with similar names
            other = _name(rng, taken)
            hits.append(f"[doc-{rng.randrange(10**6):06d}] {other}: lives in "
                        f"{_city(rng)}; mentor: {_name(rng, taken)}.")
        rng.shuffle(hits)
        b.step(why, "search", {"query": person}, "\n".join(hits))
        if rng.random() < 0.2:
            b.step(f"Several results; opening {doc} to confirm it is about {person}.",
                   "open_document", {"doc_id": doc},
                   f"{person} ({facts['city']}). Employer: {facts['employer']}. "
                   f"Mentor: {facts['mentor']}.")
    answer = kb[chain[-1]]["city"]
    b.answer(f"After {horizon} mentor link(s) I reached {chain[-1]}, who lives in {answer}.",
             answer)
    verifier = {"type": "kb_chain", "start": chain[0], "hops": horizon,
                "kb": {p: {"mentor": f["mentor"], "city": f["city"]} for p, f in kb.items()},
                "answer": answer}
    return b.messages, verifier, tools


_OPS = (("add", "+"), ("subtract", "-"), ("multiply by", "*"))
_CALCULATOR = _tool("calculator", "Evaluate an integer arithmetic expression.",
                    expression="string")


def calculator(rng: random.Random, horizon: int) -> tuple[list, dict, list]:
    tools = [_CALCULATOR,
             _tool("python", "Run a Python snippet and return what it prints.", code="string")]
    start = value = rng.randrange(1, 1000)
    ops = [[rng.choice(_OPS)[0], rng.randrange(2, 99)] for _ in range(horizon)]
    listing = "\n".join(f"{k + 1}. {op} {n}" for k, (op, n) in enumerate(ops))
    task = (f"Start with {value}. Apply these operations in order, reducing modulo {MOD} after "
            f"each one, and report the final value:\n{listing}")
    b = _Builder(rng, tools, task)
    for k, (op, n) in enumerate(ops):
        sym = dict(_OPS)[op]
        expr = f"({value} {sym} {n}) % {MOD}"
        new = {"+": value + n, "-": value - n, "*": value * n}[sym] % MOD
        if rng.random() < 0.1:
            bad = expr.replace(sym, {"+": "plus", "-": "minus", "*": "x"}[sym], 1)
            b.step(f"Operation {k + 1}: {op} {n} on {value}.", "calculator", {"expression": bad},
                   f"error: invalid syntax near '{bad.split()[1]}'")
            b.step(f"The calculator wants the operator symbol '{sym}'; retrying.", "calculator",
                   {"expression": expr}, str(new))
        elif k % 5 == 4:  # every fifth step: double-check with a second tool in the same turn
            ids = b.call(f"Operation {k + 1}: {op} {n} on {value}; I'll compute it with both tools "
                         "to check the running value.",
                         ("calculator", {"expression": expr}),
                         ("python", {"code": f"print({expr})"}))
            b.result(ids[0], "calculator", str(new))
            b.result(ids[1], "python", f"{new}\n")
        else:
            b.step(f"Operation {k + 1}: {op} {n} on the current value {value}.", "calculator",
                   {"expression": expr}, str(new))
        value = new
    b.answer(f"All {horizon} operation(s) applied; the value is {value}.", str(value))
    verifier = {"type": "modular_arithmetic", "start": start,
                "ops": ops, "modulus": MOD, "answer": str(value)}
    return b.messages, verifier, tools


def files(rng: random.Random, horizon: int) -> tuple[list, dict, list]:
    tools = [_tool("list_dir", "List one page (20 entries) of a directory.", path="string",
                   page="integer"),
             _tool("read_file", "Return the contents of a file.", path="string"),
             _tool("move", "Move a file to a directory.", src="string", dst_dir="string"),
             _CALCULATOR]
    names: set[str] = set()
    inbox = {}
    while len(inbox) < horizon:
        fname = f"{rng.choice(_SYLLABLES)}{rng.choice(_SYLLABLES)}_{rng.randrange(1000):03d}.txt"
        if fname not in names:
            names.add(fname)
            inbox[fname] = rng.randrange(1, 10_000)
    task = ("In /inbox, every file holds one line 'value: N'. Move each file whose N is even to "
            "/archive (it exists) and leave the others. Then report how many files you moved and "
            "the sum of their values, as 'moved=K sum=S'; the calculator can add them.")
    b = _Builder(rng, tools, task)
    listed = sorted(inbox)
    here = list(listed)  # what /inbox holds now (even files leave it)

    def listing(page: int) -> str:
        # Full paths, here and in the reasoning, for the reason names have titles (`_name`): a
        # bare name after '["' or a space is other tokens than the same name after '/inbox' in
        # the path the model must write, and the model copies the path from its own reasoning.
        return json.dumps({"entries": [f"/inbox/{f}" for f in here[page * 20:(page + 1) * 20]],
                           "more": (page + 1) * 20 < len(here), "total": len(here)})

    for page in range((len(listed) + 19) // 20):
        b.step(f"Listing page {page} of /inbox.", "list_dir", {"path": "/inbox", "page": page},
               listing(page))
    moved, total = 0, 0
    for k, fname in enumerate(listed, 1):
        path = f"/inbox/{fname}"
        # Each read says which file of how many it is (the listing gives the total) before the
        # path: runs/recipe14's model, trained mostly on horizons 1-2, wrote the third path of a
        # horizon-3 inbox with wrong digits in 23 of 48 episodes, or answered after two reads.
        reading = f"Reading file {k} of {len(listed)}: {path}, to check whether its value is even."
        error = rng.random()
        if error < 0.08:  # a typo in the call, the reasoning right: the same path again
            wrong = path.replace("_", "-")
            b.step(reading, "read_file", {"path": wrong}, f"error: {wrong}: no such file")
            reading = "Wrong path: the separator is an underscore. Reading again."
        elif error < 0.16:
            # The name miscopied, in the reasoning and the call: list its page again and copy it
            # from there (that model retried its wrong path until the turns ran out).
            stem, _, digits = fname.removesuffix(".txt").rpartition("_")
            other = f"{stem}_{(int(digits) + rng.randrange(1, 1000)) % 1000:03d}.txt"
            while other in inbox:
                other = f"{stem}_{rng.randrange(1000):03d}.txt"
            b.step(reading.replace(fname, other), "read_file", {"path": f"/inbox/{other}"},
                   f"error: /inbox/{other}: no such file")
            page = here.index(fname) // 20
            b.step(f"No such file: I miscopied the name. Listing page {page} of /inbox again.",
                   "list_dir", {"path": "/inbox", "page": page}, listing(page))
        b.step(reading, "read_file", {"path": path}, f"value: {inbox[fname]}")
        if inbox[fname] % 2:
            continue
        dst = "/archiv" if rng.random() < 0.08 else "/archive"
        b.step(f"{inbox[fname]} is even, so {path} goes to /archive.", "move",
               {"src": path, "dst_dir": dst},
               f"moved {path} -> /archive/{fname}" if dst == "/archive"
               else "error: /archiv: no such directory")
        if dst != "/archive":
            b.step("Typo in the destination; the directory is /archive.", "move",
                   {"src": path, "dst_dir": "/archive"}, f"moved {path} -> /archive/{fname}")
        here.remove(fname)
        moved, total = moved + 1, total + inbox[fname]
    kept = [inbox[f] for f in listed if inbox[f] % 2 == 0]
    if len(kept) > 1:
        # Why a tool: a sum stated without working is a 4-digit addition in one step, which no
        # `tiny` model learned (runs/recipe11, docs/recipe.md: 0 of every files task with two
        # even files solved); the calculator makes it a copy of the values it read.
        b.step(f"Adding the {moved} even values with the calculator.", "calculator",
               {"expression": " + ".join(map(str, kept))}, str(total))
    answer = f"moved={moved} sum={total}"
    b.answer(f"I checked all {horizon} file(s): {moved} held even values, summing to {total}.",
             answer)
    verifier = {"type": "even_files", "inbox": inbox, "answer": answer}
    return b.messages, verifier, tools


DOMAINS: dict[str, Callable[[random.Random, int], tuple[list, dict, list]]] = {
    "kb_search": kb_search, "calculator": calculator, "files": files}


def make_trajectory(domain: str, horizon: int, seed: int, index: int) -> dict[str, Any]:
    """Trajectory number `index` of (domain, horizon, seed): the same on every call and machine."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r} (known: {', '.join(DOMAINS)})")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    rng = random.Random(f"a1jax-synth/{domain}/{horizon}/{seed}/{index}")
    messages, verifier, tools = DOMAINS[domain](rng, horizon)
    traj = {"id": f"{domain}-h{horizon}-s{seed}-{index}", "domain": domain, "tools": tools,
            "messages": messages, "verifier": verifier,
            "metadata": {"generator": "a1jax.data.synth", "horizon": horizon, "seed": seed}}
    assert verify(traj), traj["id"]
    return traj


def generate(domain: str, horizon: int, n: int, seed: int) -> Iterator[dict[str, Any]]:
    for index in range(n):
        yield make_trajectory(domain, horizon, seed, index)


def final_answer(traj: dict[str, Any]) -> str | None:
    """The answer in the last assistant message ('Final answer: ...'), if there is one."""
    for msg in reversed(traj["messages"]):
        if msg["role"] == "assistant":
            m = re.search(r"Final answer:\s*(.+)\s*$", msg.get("content") or "")
            return m.group(1).strip() if m else None
    return None


def verify(traj: dict[str, Any]) -> bool:
    """Whether the trajectory's final answer solves its task, recomputed from the verifier spec."""
    spec, got = traj.get("verifier") or {}, final_answer(traj)
    if spec.get("type") == "kb_chain":
        person = spec["start"]
        for _ in range(spec["hops"]):
            person = spec["kb"][person]["mentor"]
        return got == spec["kb"][person]["city"]
    if spec.get("type") == "modular_arithmetic":
        value = spec["start"]
        for op, n in spec["ops"]:
            value = {"add": value + n, "subtract": value - n, "multiply by": value * n}[op]
            value %= spec["modulus"]
        return got == str(value)
    if spec.get("type") == "even_files":
        even = [v for v in spec["inbox"].values() if v % 2 == 0]
        return got == f"moved={len(even)} sum={sum(even)}"
    return False


def main(argv: list[str] | None = None) -> int:
    p = argparsing.ArgumentParser(prog="python -m a1jax.data.synth",
                                  description=__doc__.split("\n")[0])
    p.add_argument("--domain", required=True, choices=sorted(DOMAINS))
    p.add_argument("--horizon", type=int, required=True, help="steps per task")
    p.add_argument("--n", type=int, required=True, help="number of trajectories")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output JSONL file")
    args = p.parse_args(argv)
    if args.horizon < 1 or args.n < 0:
        raise A1Error("--horizon must be >= 1 and --n >= 0")
    try:
        with open(args.out, "w", encoding="utf-8") as f:
            for traj in generate(args.domain, args.horizon, args.n, args.seed):
                f.write(json.dumps(traj, ensure_ascii=False) + "\n")
    except OSError as e:
        raise A1Error(f"cannot write {args.out}: {e.strerror}") from None
    print(f"wrote {args.n} {args.domain} trajectories (horizon {args.horizon}) to {args.out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
