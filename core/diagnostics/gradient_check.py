"""Autograd against central finite differences, along one direction."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class DirectionalCheck:
    autograd: float  # <grad f(x), v>
    finite_difference: float  # (f(x + h v) - f(x - h v)) / 2h, or its Richardson extrapolation
    step: float

    @property
    def relative_error(self) -> float:
        scale = max(abs(self.autograd), abs(self.finite_difference), 1e-12)
        return abs(self.autograd - self.finite_difference) / scale


def directional_check(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                      direction: torch.Tensor | None, step: float, richardson: bool = False) -> DirectionalCheck:
    """Compare autograd's directional derivative of scalar f at x with a central difference.

    With direction=None the check runs along the normalized autograd gradient, where the change in f
    is largest (best against float32 round-off) and a wrongly scaled gradient still shows. `richardson`:
    (4 D(h/2) - D(h)) / 3, which cancels the central difference's h^2 error term, for strongly curved
    functions where a step small enough for that term meets float32 round-off (e.g. T5 at embedding norms
    of ~60).
    """
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x), x)
    if direction is None:
        direction = grad / grad.norm().clamp_min(1e-30)
    def central(h: float) -> float:
        with torch.no_grad():
            return (f(x.detach() + h * direction).item() - f(x.detach() - h * direction).item()) / (2 * h)

    difference = central(step)
    if richardson:
        difference = (4 * central(step / 2) - difference) / 3
    return DirectionalCheck(float((grad * direction).sum()), difference, step)
