"""Autograd against central finite differences, along one direction."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class DirectionalCheck:
    autograd: float  # <grad f(x), v>
    finite_difference: float  # (f(x + h v) - f(x - h v)) / 2h
    step: float

    @property
    def relative_error(self) -> float:
        scale = max(abs(self.autograd), abs(self.finite_difference), 1e-12)
        return abs(self.autograd - self.finite_difference) / scale


def directional_check(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                      direction: torch.Tensor | None, step: float) -> DirectionalCheck:
    """Compare autograd's directional derivative of scalar f at x with a central difference.

    With direction=None the check runs along the normalized autograd gradient, where the change in f
    is largest (best against float32 round-off) and a wrongly scaled gradient still shows.
    """
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x), x)
    if direction is None:
        direction = grad / grad.norm().clamp_min(1e-30)
    with torch.no_grad():
        plus = f(x.detach() + step * direction).item()
        minus = f(x.detach() - step * direction).item()
    return DirectionalCheck(float((grad * direction).sum()), (plus - minus) / (2 * step), step)
