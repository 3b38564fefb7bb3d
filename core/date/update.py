"""DATE (Diffusion Adaptive Text Embedding): the conditional text embedding follows a reward during sampling.

At a scheduled step the reward h is measured on the CFG-guided x0 estimate (decoded to pixels) as a
function of the conditional encoder output c, and c moves by rho along the per-sample normalized
gradient:

    cumulative rule  c = c     + rho * g / ||g||      (the authors' released code: the default)
    paper rule       c = c_ref + rho * g / ||g||      (the paper's text; g at the current c, ||c - c_ref|| = rho)

||.|| is the Frobenius norm over all tokens x width of one sample. With a prior weight w the objective
is h - w * mean((c_ref - c)^2), as in the authors' code. The unconditional embedding never changes.
This module is the sampler-independent math; adapters supply `objective(c) -> (B,) rewards`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..shared.settings_error import SettingsError

RULES = ("cumulative", "paper")
SCHEDULES = ("every_k_steps", "percent_of_steps", "step_list", "sigma_range")


class DateSettingsError(SettingsError):
    """A setting out of range; the message names the setting and `field` holds its name."""


@dataclass(frozen=True)
class DateSettings:
    rho: float = 0.5
    rule: str = "cumulative"  # the authors' released code; "paper" = the paper's text
    prior_weight: float = 0.0
    iterations: int = 1

    def __post_init__(self):
        if not (math.isfinite(self.rho) and self.rho > 0):
            raise DateSettingsError(f"rho must be a positive number; got {self.rho}.", "rho")
        if self.rule not in RULES:
            raise DateSettingsError(f"rule must be one of {RULES}; got {self.rule!r}.", "rule")
        if not (math.isfinite(self.prior_weight) and self.prior_weight >= 0):
            raise DateSettingsError(f"prior_weight must be >= 0; got {self.prior_weight}.", "prior_weight")
        if not (math.isfinite(self.iterations) and int(self.iterations) == self.iterations >= 1):
            raise DateSettingsError(f"iterations must be a whole number >= 1; got {self.iterations}.", "iterations")


def _parse_numbers(text: str, what: str, cast=int) -> list:
    """'0, 5, 10-14' -> [0, 5, 10, 11, 12, 13, 14] (ranges inclusive, for integers)."""
    values = []
    text = re.sub(r"\s*-\s*", "-", text.strip())
    for part in filter(None, (p.strip() for p in re.split(r"[,\s]+", text))):
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part) if cast is int else None
        try:
            if match:
                lo, hi = int(match.group(1)), int(match.group(2))
                if hi < lo:
                    raise ValueError
                values += range(lo, hi + 1)
            else:
                values.append(cast(part))
        except ValueError:
            raise DateSettingsError(f"{what}: cannot read {part!r} in {text!r}.", "value") from None
    if not values:
        raise DateSettingsError(f"{what}: no number in {text!r}.", "value")
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise DateSettingsError(f"{what}: numbers must be finite and >= 0; got {text!r}.", "value")
    return values


@dataclass(frozen=True)
class UpdateSchedule:
    """Which sampling steps update the embedding. Step i goes from sigmas[i] to sigmas[i + 1].

    every_k_steps "10": steps 0, 10, 20, ... (the authors' `i % k == 0`; "1" = every step).
    percent_of_steps "10": that share of the steps, evenly spaced from the first (10% of 50 = every 10th).
    step_list "0, 5, 20-24": explicit step indices, ranges inclusive.
    sigma_range "1.0-6.0": every step whose starting sigma lies in [lo, hi].
    """

    kind: str
    value: str
    _numbers: tuple = field(default=(), repr=False, compare=False)

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise DateSettingsError(f"schedule must be one of {SCHEDULES}; got {self.kind!r}.", "kind")
        text = str(self.value).strip()
        if not text:
            raise DateSettingsError(f"schedule value is empty (schedule {self.kind}).", "value")
        if self.kind == "sigma_range":
            number = r"(\d*\.?\d+(?:[eE][+-]?\d+)?)"
            match = re.fullmatch(number + r"\s*(?:-|,|\s)\s*" + number, text)
            try:
                numbers = (float(match.group(1)), float(match.group(2))) if match else None
            except ValueError:
                numbers = None
            if numbers is None or not numbers[0] <= numbers[1]:
                raise DateSettingsError(f"sigma_range must read 'low-high' with low <= high; got {text!r}.", "value")
        elif self.kind == "step_list":
            numbers = tuple(sorted(set(_parse_numbers(text, "step_list"))))
        else:
            numbers = tuple(_parse_numbers(text, self.kind, float))
            if len(numbers) != 1:
                raise DateSettingsError(f"{self.kind} takes one number; got {text!r}.", "value")
            if self.kind == "every_k_steps" and (numbers[0] < 1 or numbers[0] != int(numbers[0])):
                raise DateSettingsError(f"every_k_steps must be a whole number >= 1; got {text!r}.", "value")
            if self.kind == "percent_of_steps" and not 0 < numbers[0] <= 100:
                raise DateSettingsError(f"percent_of_steps must be in (0, 100]; got {text!r}.", "value")
        object.__setattr__(self, "_numbers", tuple(numbers))

    def beyond(self, steps: int) -> list[int]:
        """Listed steps that a run of `steps` steps does not have (step_list only)."""
        return [i for i in self._numbers if i >= steps] if self.kind == "step_list" else []

    def steps(self, sigmas: Sequence[float] | torch.Tensor) -> list[int]:
        """Indices of the update steps for a schedule of len(sigmas) - 1 steps."""
        sigmas = [float(s) for s in sigmas]
        count = max(len(sigmas) - 1, 0)
        if self.kind == "every_k_steps":
            k = int(self._numbers[0])
            return list(range(0, count, k))
        if self.kind == "percent_of_steps":
            n = min(count, max(1, math.floor(self._numbers[0] * count / 100 + 0.5)))  # halves round up
            return sorted({(j * count) // n for j in range(n)}) if count else []
        if self.kind == "step_list":
            return [i for i in self._numbers if i < count]
        lo, hi = self._numbers
        return [i for i in range(count) if lo <= sigmas[i] <= hi]


def normalized_per_sample(grad: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """g / ||g||_F for each sample (all dims but the first); a zero gradient stays zero."""
    flat = grad.float().flatten(1)
    norm = flat.norm(dim=1).clamp_min(eps)
    return (flat / norm[:, None]).view_as(grad)


@dataclass
class UpdateRecord:
    """One gradient iteration of one update: rewards measured at the embedding it started from."""

    rewards: torch.Tensor  # (B,) reward h (without the prior term)
    grad_norms: torch.Tensor  # (B,) ||d objective / d c||_F


def date_update(reference: torch.Tensor, current: torch.Tensor,
                objective: Callable[[torch.Tensor], torch.Tensor],
                settings: DateSettings) -> tuple[torch.Tensor, list[UpdateRecord]]:
    """Run `settings.iterations` DATE steps from `current`; return the new embedding and what each measured.

    `objective(c)` maps a (B, ...) embedding to (B,) rewards with sample b depending on c[b] only, so
    each image's embedding moves by its own reward's gradient.
    """
    if reference.shape != current.shape:
        raise DateSettingsError(f"reference {tuple(reference.shape)} and current {tuple(current.shape)} differ.")
    reference = reference.detach()
    c = current.detach()
    records = []
    for _ in range(int(settings.iterations)):
        leaf = c.clone().requires_grad_(True)
        rewards = objective(leaf)
        if rewards.ndim != 1 or rewards.shape[0] != c.shape[0]:
            raise DateSettingsError(f"the objective must return one reward per sample; got {tuple(rewards.shape)}.")
        total = rewards
        if settings.prior_weight:
            dims = tuple(range(1, c.ndim))
            total = rewards - settings.prior_weight * ((reference - leaf) ** 2).mean(dim=dims)
        (grad,) = torch.autograd.grad(total.sum(), leaf)
        if not torch.isfinite(grad).all():
            raise FloatingPointError("DATE: the reward gradient is NaN or infinite; try fp32 or a smaller rho.")
        records.append(UpdateRecord(rewards.detach().float().cpu(), grad.float().flatten(1).norm(dim=1).cpu()))
        step = (settings.rho * normalized_per_sample(grad)).to(c.dtype)
        c = (reference if settings.rule == "paper" else c) + step
    return c.detach(), records


def guided_x0(cond_x0: torch.Tensor, uncond_x0: torch.Tensor | None, cfg: float) -> torch.Tensor:
    """Classifier-free guidance on x0 predictions (equal to guiding eps, since both are affine in x0)."""
    if uncond_x0 is None:
        return cond_x0
    return uncond_x0 + cfg * (cond_x0 - uncond_x0)

