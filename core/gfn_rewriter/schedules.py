"""Temperature schedules: value(step) moves linearly from `start` to `end` over `horizon` steps, then stays.

Paper: reward temperature tau 2.0 -> 1.0 over 500 steps (divides log R in the loss); exploration
temperature 2.0 -> 0.5 over 5,000 steps (divides the logits when sampling on-policy only).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinearSchedule:
    start: float
    end: float
    horizon: int

    def __call__(self, step: int) -> float:
        if self.horizon <= 0:
            return self.end
        return self.start + (self.end - self.start) * min(1.0, max(step, 0) / self.horizon)
