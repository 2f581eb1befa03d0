"""Where a run reports: a JSONL file, TensorBoard event files, and a progress line.

WORKDIR/metrics.jsonl has one object per record, `{"step", "kind": "train"|"eval", ...}`; it is
appended to across restarts, and a restarted run first drops the records after the step it
resumes from, so the file always describes one uninterrupted history. TensorBoard files go to
WORKDIR/tensorboard (tensorboardX writes them without TensorFlow). Only process 0 writes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np


class MetricsLog:
    def __init__(self, workdir: str, resume_step: int):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not self.enabled:
            return
        _truncate_after(self.path, resume_step)
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1)

    def write(self, step: int, kind: str, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, **{k: _plain(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in record.items():
            if name not in ("step", "kind") and isinstance(value, (int, float)):
                self._tb.add_scalar(f"{kind}/{name}", value, step)
        if "expert_load" in values:
            load_le = np.asarray(values["expert_load"], np.float64)
            for layer, row in enumerate(load_le):
                # max / mean share: 1.0 is perfectly balanced
                self._tb.add_scalar(f"expert_imbalance/layer_{layer}",
                                    float(row.max() / max(row.mean(), 1e-12)), step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read(workdir: str) -> list[dict[str, Any]]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _truncate_after(path: str, step: int) -> None:
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        with open(path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)


def _plain(value: Any) -> Any:
    value = np.asarray(value)
    if value.ndim == 0:
        return value.item()
    return value.tolist()


class Progress:
    """A tqdm bar (loss, tokens/s, ETA) on a terminal; elsewhere (logs, CI) a plain line every
    `every` steps."""

    def __init__(self, name: str, start: int, total: int, every: int):
        self.enabled = jax.process_index() == 0
        self.every, self.total = every, total
        self._bar = None
        self._start_time, self._start_step = time.perf_counter(), start
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=start, desc=name, unit="step", file=sys.stderr,
                             dynamic_ncols=True)

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}",
                                  refresh=False)
            self._bar.update(step - self._bar.n)
            return
        if step % self.every and step != self.total:
            return
        done = step - self._start_step
        elapsed = time.perf_counter() - self._start_time
        eta = elapsed / max(done, 1) * (self.total - step)
        print(f"  step {step}/{self.total}  loss {loss:.4f}  {tokens_per_s:,.0f} tokens/s  "
              f"eta {_fmt_time(eta)}", flush=True)

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
