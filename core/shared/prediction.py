"""Prediction types and the noise-level math, in the k-diffusion convention ComfyUI samples in.

Variance-preserving models (EPS, V) are sampled as x = x0 + sigma * noise and fed x / sqrt(sigma^2 + 1);
flow models (FLOW, ComfyUI's CONST) as x = (1 - sigma) * x0 + sigma * noise and fed x unchanged.
Keeping the formulas here lets the diffusers adapter and the tests use the same math ComfyUI uses.
"""
from __future__ import annotations

import enum

import torch


class PredictionType(enum.Enum):
    EPS = "eps"  # model predicts the noise
    V = "v"  # model predicts v = alpha * noise - sigma_vp * x0
    FLOW = "flow"  # model predicts velocity noise - x0 (rectified flow)
    X0 = "x0"  # model predicts the clean sample


def _expand(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    return sigma.reshape(sigma.shape[:1] + (1,) * (like.ndim - 1)) if sigma.ndim else sigma


def model_input(prediction: PredictionType, x: torch.Tensor, sigma) -> torch.Tensor:
    """The tensor the network sees for a sample x at noise level sigma."""
    if prediction is PredictionType.FLOW:
        return x
    return x / (_expand(sigma, x) ** 2 + 1.0) ** 0.5


def x0_from_output(prediction: PredictionType, output: torch.Tensor, x: torch.Tensor, sigma) -> torch.Tensor:
    """Tweedie / denoised estimate of x0 from the network's raw output."""
    s = _expand(sigma, x)
    if prediction in (PredictionType.EPS, PredictionType.FLOW):
        return x - output * s
    if prediction is PredictionType.V:
        return x / (s**2 + 1.0) - output * s / (s**2 + 1.0) ** 0.5
    return output


def renoise(prediction: PredictionType, x0: torch.Tensor, sigma, noise: torch.Tensor) -> torch.Tensor:
    """A sample at noise level sigma whose clean part is x0 (differentiable in x0)."""
    s = _expand(sigma, x0)
    if prediction is PredictionType.FLOW:
        return (1.0 - s) * x0 + s * noise
    return x0 + s * noise


def vp_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """k-diffusion sigmas of a discrete variance-preserving schedule (index = training timestep)."""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
