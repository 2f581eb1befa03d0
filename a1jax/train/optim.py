"""AdamW with linear warmup and cosine decay, global-norm clipping (all from optax)."""

from __future__ import annotations

import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    # The paper's SFT recipe: AdamW, lr 1e-5, cosine, 5% warmup, weight decay 0.1.
    learning_rate: float = 1e-5
    warmup_fraction: float = 0.05
    total_steps: int = 1000
    end_lr_fraction: float = 0.0
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0

    def schedule(self) -> optax.Schedule:
        warmup = int(round(self.warmup_fraction * self.total_steps))
        end = self.learning_rate * self.end_lr_fraction
        if warmup == 0:
            return optax.cosine_decay_schedule(self.learning_rate, max(self.total_steps, 1),
                                               alpha=self.end_lr_fraction)
        return optax.warmup_cosine_decay_schedule(
            0.0, self.learning_rate, warmup, max(self.total_steps, warmup + 1), end_value=end)


def _decay_mask(params):
    # Matrices decay; norms, A_log and dt_bias (vectors) do not, as usual for AdamW fine-tuning.
    # Under `scan_layers` a decoder parameter (params["layers"]) carries one more, stacked, axis.
    def decays(path, p):
        stacked = bool(path) and getattr(path[0], "key", None) == "layers"
        return p.ndim - stacked >= 2
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: OptimConfig) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(config.schedule(), b1=config.b1, b2=config.b2, eps=config.eps,
                    weight_decay=config.weight_decay, mask=_decay_mask),
    )
