"""Learning-rate schedule: linear warmup, then constant or cosine (same formulas as open_clip_train)."""

from __future__ import annotations

import math


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, schedule: str = "constant") -> float:
    """Learning rate of optimizer step ``step`` (0-based).

    Warmup: ``base_lr * (step + 1) / warmup_steps`` for ``step < warmup_steps`` (the first step already
    moves). After warmup: ``constant`` keeps ``base_lr``; ``cosine`` decays as
    ``0.5 * (1 + cos(pi * e / es)) * base_lr`` with ``e = step - warmup_steps`` and
    ``es = total_steps - warmup_steps`` (reaches 0 at ``total_steps``).
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        decay_steps = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress)) * base_lr
    raise ValueError(f"unknown schedule {schedule!r} (constant | cosine)")
