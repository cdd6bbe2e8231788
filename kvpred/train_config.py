"""Training settings (`TrainConfig`) and the optimiser they define: optax AdamW (b1 0.9, b2 0.95,
weight decay 0.1 on matrices only), linear warm-up then cosine decay, global-norm clipping."""

from __future__ import annotations

import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    lr: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    clip_norm: float = 1.0
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps={self.steps}]")
        if self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError("log_every and checkpoint_every must be >= 1")


def lr_schedule(c: TrainConfig) -> optax.Schedule:
    warmup = max(c.warmup_steps, 1)  # optax needs >= 1 warm-up and >= 1 decay step
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=c.lr,
        warmup_steps=warmup,
        decay_steps=max(c.steps, warmup + 1),
        end_value=c.lr * c.min_lr_ratio,
    )


def make_optimizer(c: TrainConfig) -> optax.GradientTransformation:
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(c.clip_norm),
        optax.adamw(lr_schedule(c), c.b1, c.b2, weight_decay=c.weight_decay, mask=decay_mask),
    )
