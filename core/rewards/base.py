"""The reward interface every method optimizes against, and weighted combinations of rewards.

A reward maps images (B x 3 x H x W, values in [0, 1], any size) and their prompts to one score per
image. It is differentiable with respect to the images; its own weights are frozen. Each reward does
its model-specific preprocessing (resize, crop, normalize) inside, on tensors, so gradients flow.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch
from torch import nn


class RewardInputError(ValueError):
    """Images or prompts a reward cannot score; the message says what to change."""


def prompts_for_batch(prompts: str | Sequence[str], batch: int) -> list[str]:
    """One prompt per image: a single prompt is repeated over the batch."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if len(prompts) == 1:
        prompts = prompts * batch
    if len(prompts) != batch:
        raise RewardInputError(f"got {len(prompts)} prompts for {batch} images; give one prompt, or one per image.")
    if any(not isinstance(p, str) for p in prompts):
        raise RewardInputError("prompts must be text.")
    return prompts


def check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise RewardInputError(f"images must be a B x 3 x H x W tensor (values in [0, 1]); got {shape}.")
    if images.shape[0] == 0:
        raise RewardInputError("no images to score.")
    if not torch.isfinite(images).all():
        raise RewardInputError("images contain NaN or infinite values.")


class Reward(nn.Module, ABC):
    """Base class: `reward(images, prompts) -> (B,) scores` (float32, or float64 for a float64 model); higher is better."""

    #: short id of the reward family, e.g. "image_reward"
    family: str = "reward"

    @property
    def label(self) -> str:
        """What the reward is, for reports and progress bars."""
        return self.family

    def freeze(self) -> "Reward":
        self.requires_grad_(False)
        self.eval()
        return self

    def train(self, mode: bool = True) -> "Reward":
        # dropout / drop-path must never be active: scores are deterministic
        return super().train(False)

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        return torch.device("cpu")

    def forward(self, images: torch.Tensor, prompts: str | Sequence[str]) -> torch.Tensor:
        check_images(images)
        prompts = prompts_for_batch(prompts, images.shape[0])
        scores = self.score(images.to(self.device), prompts).reshape(images.shape[0])
        return scores.to(torch.promote_types(scores.dtype, torch.float32))

    @abstractmethod
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Scores for validated inputs: images on self.device, one prompt per image."""


class WeightedReward(Reward):
    """sum_i weight_i * reward_i(images, prompts), e.g. 0.7 * ImageReward + 0.3 * CLIP."""

    family = "weighted"

    def __init__(self, parts: Sequence[tuple[Reward, float]]):
        super().__init__()
        if not parts:
            raise RewardInputError("a weighted reward needs at least one reward.")
        for reward, weight in parts:
            if not isinstance(reward, Reward):
                raise RewardInputError(f"{type(reward).__name__} is not a reward.")
            if not (isinstance(weight, (int, float)) and torch.isfinite(torch.tensor(float(weight)))):
                raise RewardInputError(f"reward weight {weight!r} is not a finite number.")
        self.rewards = nn.ModuleList([r for r, _ in parts])
        self.weights = [float(w) for _, w in parts]

    @property
    def label(self) -> str:
        return " + ".join(f"{w:g}*{r.label}" for r, w in zip(self.rewards, self.weights))

    def parts(self, images: torch.Tensor, prompts: str | Sequence[str]) -> list[torch.Tensor]:
        """Each reward's unweighted scores."""
        return [reward(images, prompts) for reward in self.rewards]

    def forward(self, images: torch.Tensor, prompts: str | Sequence[str]) -> torch.Tensor:
        check_images(images)
        prompts = prompts_for_batch(prompts, images.shape[0])
        return self.score(images, prompts)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        total = None
        for reward, weight in zip(self.rewards, self.weights):
            part = weight * reward(images, prompts).to(images.device)
            total = part if total is None else total + part
        return total
