"""The learning-rate schedule as a pure function of the step."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence


def get_lr(
    step: int,
    base_lr: float,
    *,
    steps: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_iters: int = 0,
    warmup_factor: float = 0.001,
) -> float:
    """Linear warm-up from ``base_lr × warmup_factor`` to ``base_lr`` over ``warmup_iters``
    steps, then multiply by ``gamma`` at each milestone in ``steps`` (Detectron's schedule)."""
    lr = base_lr * gamma ** bisect_right(list(steps), step)
    if step < warmup_iters:
        alpha = step / warmup_iters
        lr *= warmup_factor * (1 - alpha) + alpha
    return lr
