"""The denoiser view every method uses: x0 at a noise level for a given conditioning, and re-noising."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from . import prediction as _prediction
from .conditioning import TextConditioning
from .prediction import PredictionType


class Denoiser(ABC):
    """A diffusion model seen as x0 = D(x, sigma, conditioning), family and prediction type hidden.

    `x` is in the k-diffusion convention of `core.shared.prediction` (the sampler's latent); gradients flow
    to `x` and to the conditioning. Noise levels are sigmas; `sigma_at` maps a position in the
    model's training schedule (0 = clean, 1 = pure noise) to a sigma, so methods can express
    "re-noise to T - t" without knowing the schedule.
    """

    prediction: PredictionType

    @abstractmethod
    def predict_x0(self, x: torch.Tensor, sigma: torch.Tensor, cond: TextConditioning) -> torch.Tensor:
        """Denoised estimate of the clean latent (conditional branch only, no CFG)."""

    @abstractmethod
    def sigma_at(self, fraction: float) -> float:
        """Sigma at `fraction` of the training schedule: 0 -> least noise, 1 -> most noise."""

    @abstractmethod
    def fraction_of(self, sigma: float) -> float:
        """Inverse of `sigma_at`."""

    def renoise(self, x0: torch.Tensor, sigma, noise: torch.Tensor) -> torch.Tensor:
        return _prediction.renoise(self.prediction, x0, sigma, noise)
