"""What a compiled step holds at its memory peak, buffer by buffer, from XLA's own dump.

    XLA_FLAGS="--xla_dump_to=DUMP --xla_dump_hlo_module_re=.*train_step.*" \
        python -m a1jax.plan --config ... --layouts sequence        # any compile; GPU or CPU
    python benchmarks/peak_account.py DUMP [--top 25]

XLA writes, per module, the buffers live at the peak (`*-live-range.txt`, "Live ranges at N
(peak)") and the optimized HLO (`*_after_optimizations.txt`). This groups the live buffers by
what made them: the step's arguments by their state path (parameters, Adam moments), others by
their op_name with layer indices kept, or by shape where XLA's rematerialisation dropped the
name. Prints a Markdown table: GiB, buffers, shape(s), what.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys


def _peak_buffers(live_range: str) -> list[tuple[str, int]]:
    out, inside = [], False
    for line in open(live_range):
        if re.match(r"\s+Live ranges at \d+ \(peak\):", line):
            inside = True
            continue
        if inside:
            found = re.match(r"\s+(\S+?)(\{[\d,]*\})?: (\d+) bytes", line)
            if not found:
                break
            out.append((found.group(1), int(found.group(3))))
    return out


def _instructions(hlo: str) -> dict[str, tuple[str, str]]:
    """name -> (shape, op_name or '')"""
    out = {}
    pattern = re.compile(r"^\s+(?:ROOT )?%(\S+) = (\S+?)(?:\{[^}]*\})? ")
    for line in open(hlo):
        found = pattern.match(line)
        if found:
            op = re.search(r'op_name="([^"]*)"', line)
            out[found.group(1)] = (found.group(2), op.group(1) if op else "")
    return out


def _what(name: str, shape: str, op_name: str) -> str:
    if op_name.startswith("state.params"):
        return "argument: parameters (fp32)"
    if op_name.startswith("state.opt_state"):
        moment = re.search(r"\.(mu|nu)\b", op_name)
        return f"argument: optimizer state{' ' + moment.group(1) if moment else ''}"
    if op_name.startswith("batch") or op_name.startswith("state"):
        return "argument: " + op_name.split("[")[0]
    if op_name:
        parts = [p for p in op_name.split("/") if not re.fullmatch(
            r"jit\(\w+\)|closed_call|checkpoint|rematted_computation|body", p)]
        return "/".join(parts[-4:])
    kind = re.sub(r"[.\d]+(remat\d*)?$", "", name).rstrip(".")
    return f"{kind} (no op_name: {'rematerialised ' if 'remat' in name else ''}fusion)"


def account(dump: str, module: str = "train_step") -> tuple[int, list[tuple[str, int, int, set]]]:
    live = glob.glob(os.path.join(dump, f"*{module}*after_optimizations-live-range.txt"))
    if not live:
        raise SystemExit(f"no *{module}*after_optimizations-live-range.txt in {dump}")
    hlo = live[0].replace("-live-range.txt", ".txt")
    info = _instructions(hlo)
    groups: dict[str, list] = collections.defaultdict(lambda: [0, 0, set()])
    buffers = _peak_buffers(live[0])
    for name, size in buffers:
        shape, op_name = info.get(name, ("?", ""))
        g = groups[_what(name, shape, op_name)]
        g[0] += size
        g[1] += 1
        g[2].add(shape)
    rows = sorted(((k, v[0], v[1], v[2]) for k, v in groups.items()), key=lambda r: -r[1])
    return sum(s for _, s in buffers), rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dump")
    p.add_argument("--module", default="train_step")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    total, rows = account(args.dump, args.module)
    print(f"live at the peak: {total / 2**30:.1f} GiB in "
          f"{sum(r[2] for r in rows)} buffers\n")
    print("| GiB | buffers | shapes | what |\n|---|---|---|---|")
    for what, size, count, shapes in rows[:args.top]:
        def volume(shape):
            dims = re.findall(r"\[([\d,]*)\]", shape)
            return sum(eval("*".join(d.split(",")) or "1") for d in dims)  # noqa: S307
        big = sorted(shapes, key=volume, reverse=True)
        shown = ", ".join(big[:2]) + (", ..." if len(big) > 2 else "")
        print(f"| {size / 2**30:.2f} | {count} | {shown} | {what} |")
    rest = sum(r[1] for r in rows[args.top:])
    if rest:
        print(f"| {rest / 2**30:.2f} | {sum(r[2] for r in rows[args.top:])} | | the rest |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
