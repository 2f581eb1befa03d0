r"""Generate with a model: token prompts in, tokens and log-probabilities out; or a chat.

    python -m a1jax.generate --model HF_DIR|CHECKPOINT --prompt-tokens prompts.json \
        --max-new-tokens 64 [--greedy | --temperature T --top-p P --top-k K --min-p M \
        --presence-penalty X --repetition-penalty R --seed S] [--stop-tokens 7,8] \
        [--dtype float32] [--mesh data=2,expert=4] --out out.json
    python -m a1jax.generate --model HF_DIR --messages chat.json [--tokenizer DIR] ...

prompts.json is a JSON list of token-id lists (lengths may differ). out.json gets
{"tokens": [[...]], "logprobs": [[...]], "finish_reason": [...]}: the new tokens of each
prompt, each one's log-probability under the distribution it was drawn from, and why the row
stopped ("stop": a stop token, included; "length": --max-new-tokens; "context": the cache).

chat.json is a list of messages, or {"messages": [...], "tools": [...]}: it is rendered with the
tokenizer's chat template (generation prompt added), and the reply is printed decoded, with the
tool calls the template's format parses. Stop tokens default to the model's end-of-sequence
token and the tokenizer's <|im_end|> and <|endoftext|>. Without a flag the sampling settings
are Agents-A1's release ones (temperature 0.85, top-p 0.95, top-k 20, presence penalty 1.1).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Sequence

from a1jax import cli, devices
from a1jax.errors import A1Error
from a1jax.infer.sampling import RELEASE, SamplingParams


def read_prompts(path: str, vocab_size: int) -> list[list[int]]:
    """A JSON list of non-empty token-id lists (ragged allowed), ids in [0, vocab_size)."""
    rows = cli.read_json(path)
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
        raise A1Error(f"{path}: expected a non-empty JSON list of token-id lists")
    for i, row in enumerate(rows):
        if not row:
            raise A1Error(f"{path}: row {i} is empty")
        for j, tok in enumerate(row):
            if not isinstance(tok, int) or isinstance(tok, bool) or not 0 <= tok < vocab_size:
                raise A1Error(f"{path}: row {i}, position {j}: {tok!r} is not a token id in "
                              f"[0, {vocab_size})")
    return rows


def read_chat(path: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    raw = cli.read_json(path)
    if isinstance(raw, list):
        return raw, None
    if isinstance(raw, dict) and isinstance(raw.get("messages"), list):
        return raw["messages"], raw.get("tools")
    raise A1Error(f"{path}: expected a list of messages or {{\"messages\": [...], "
                  "\"tools\": [...]}")


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """The sampling flags, shared by generate and eval."""
    g = parser.add_argument_group("sampling (default: Agents-A1's release settings)")
    g.add_argument("--greedy", action="store_true", help="always the most likely token")
    g.add_argument("--temperature", type=float, default=RELEASE.temperature)
    g.add_argument("--top-p", type=float, default=RELEASE.top_p)
    g.add_argument("--top-k", type=int, default=RELEASE.top_k, help="0: off")
    g.add_argument("--min-p", type=float, default=RELEASE.min_p)
    g.add_argument("--presence-penalty", type=float, default=RELEASE.presence_penalty)
    g.add_argument("--repetition-penalty", type=float, default=RELEASE.repetition_penalty)
    g.add_argument("--seed", type=int, default=0)


def sampling_from_args(args: argparse.Namespace, max_new_tokens: int,
                       stop_tokens: Sequence[int]) -> SamplingParams:
    if args.greedy:
        return SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens,
                              stop_tokens=tuple(stop_tokens), seed=args.seed)
    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                          min_p=args.min_p, presence_penalty=args.presence_penalty,
                          repetition_penalty=args.repetition_penalty,
                          max_new_tokens=max_new_tokens, stop_tokens=tuple(stop_tokens),
                          seed=args.seed)


def default_stop_tokens(config, tokenizer) -> list[int]:
    """The model's end of sequence (when `config` is given) and the tokenizer's end of turn."""
    stops = [] if config is None or config.eos_token_id is None else [config.eos_token_id]
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        stops += [vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab]
    return sorted(set(stops))


def parse_stop_tokens(text: str) -> list[int]:
    if text.strip().lower() == "none":
        return []
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise A1Error(f"--stop-tokens: expected comma-separated token ids or 'none', got "
                      f"{text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m a1jax.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Hugging Face directory or a1jax checkpoint")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt-tokens", help="JSON list of token-id lists")
    source.add_argument("--messages", help="JSON chat: messages, or {messages, tools}")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the model's own, "
                        "else the one a1jax ships)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--stop-tokens", help="comma-separated ids, or 'none' (default: the "
                        "model's end of sequence and the tokenizer's end-of-turn tokens)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--mesh", default="", help="axis sizes, e.g. data=2,expert=4 "
                        "(rows over data and expert, experts over expert); default one device")
    parser.add_argument("--out", help="output JSON (required with --prompt-tokens)")
    add_sampling_args(parser)
    args = parser.parse_args(argv)
    if args.prompt_tokens and not args.out:
        parser.error("--out is required with --prompt-tokens")
    spec_axes = devices.parse_axes(args.mesh)
    devices.simulate_for(spec_axes)

    from a1jax.data.tokenizer import load_tokenizer
    from a1jax.infer.engine import Engine
    from a1jax.infer.load import load_model, tokenizer_dir

    start = time.perf_counter()
    tok_path = args.tokenizer or tokenizer_dir(args.model)  # checked before loading
    config, params = load_model(args.model, args.dtype)
    tokenizer = load_tokenizer(tok_path) if (tok_path or args.messages) else None
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise A1Error(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary "
                      f"{config.vocab_size}: pass the model's own tokenizer (--tokenizer)")
    if args.messages:
        from a1jax.data.chat_template import render, template_for

        messages, tools = read_chat(args.messages)
        text = render(messages, tools, template=template_for(tokenizer),
                      add_generation_prompt=True)
        prompts = [tokenizer(text, add_special_tokens=False)["input_ids"]]
    else:
        prompts = read_prompts(args.prompt_tokens, config.vocab_size)
    stops = (parse_stop_tokens(args.stop_tokens) if args.stop_tokens is not None
             else default_stop_tokens(config, tokenizer))
    sampling = sampling_from_args(args, args.max_new_tokens, stops)
    spec = devices.mesh_spec(spec_axes)
    batch = len(prompts)
    if spec is not None:  # rows fill whole shards; the padding rows are never generated
        shards = spec.axes["data"] * spec.axes["expert"]
        batch = -(-batch // shards) * shards
    max_len = max(len(p) for p in prompts) + args.max_new_tokens
    engine = Engine(config, params, batch=batch, max_len=max_len, spec=spec)
    engine.extend(dict(enumerate(prompts)))
    out = engine.generate(range(len(prompts)), sampling)
    took = time.perf_counter() - start
    results = [out[i] for i in range(len(prompts))]
    new = sum(len(r.tokens) for r in results)
    print(f"generated {new} tokens for {len(prompts)} prompt(s) in {took:.1f}s "
          f"(load, compile and run)")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"tokens": [r.tokens for r in results],
                       "logprobs": [r.logprobs for r in results],
                       "finish_reason": [r.finish_reason for r in results]}, f)
        print(f"wrote {args.out}")
    if args.messages:
        from a1jax.data.tool_calls import ToolCallParseError, parse_assistant

        reply = tokenizer.decode(results[0].tokens, skip_special_tokens=False)
        print(f"reply ({results[0].finish_reason}):\n{reply}")
        try:
            calls = parse_assistant(reply, tools).tool_calls
            if calls:
                print(f"tool calls: {json.dumps(calls, ensure_ascii=False)}")
        except ToolCallParseError as e:
            print(f"the reply's tool call does not parse: {e}")
    return 0


if __name__ == "__main__":
    cli.run(main)
