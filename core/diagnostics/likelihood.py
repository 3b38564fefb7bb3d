"""An ELBO-style likelihood estimate of a clean latent under a denoiser and a prompt.

The diffusion ELBO is, up to constants and weighting, the noise-prediction error averaged over noise
levels. We average it at `levels` evenly spaced positions of the model's own training schedule (the
midpoints of `levels` equal bins, i.e. uniform in training timestep as in the "simple" DDPM loss),
with noise from a fixed generator so two images (or two runs) are compared on the same draws. A
higher loss means a less likely latent; `-loss` is reported as the log-likelihood estimate.
"""
from __future__ import annotations

import torch

from ..shared.conditioning import TextConditioning
from ..shared.denoiser import Denoiser
from ..shared.prediction import PredictionType


def level_fractions(levels: int) -> list[float]:
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    return [(j + 0.5) / levels for j in range(levels)]


def noise_error_scale(prediction: PredictionType, sigma: float) -> float:
    """c such that (noise - predicted noise) = c * (x0_hat - x0) at noise level sigma."""
    if prediction is PredictionType.FLOW:
        return (1.0 - sigma) / sigma
    return 1.0 / sigma


@torch.no_grad()
def denoising_loss(denoiser: Denoiser, x0: torch.Tensor, cond: TextConditioning, levels: int = 10,
                   seed: int = 0) -> torch.Tensor:
    """Per-sample mean squared noise-prediction error of `x0` (sampler space), averaged over levels."""
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    for fraction in level_fractions(levels):
        sigma = denoiser.sigma_at(fraction)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        x0_hat = denoiser.predict_x0(denoiser.renoise(x0, sigma, noise), sigma, cond)
        scale = noise_error_scale(denoiser.prediction, sigma)
        error = (scale * (x0_hat.float() - x0.float())).pow(2).flatten(1).mean(dim=1)
        total += error.double().cpu()
    return total / levels
