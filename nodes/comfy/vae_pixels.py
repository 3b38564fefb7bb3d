"""Differentiable VAE decode of a sampler-space latent into [0, 1] images (B, C, H, W), for rewards."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...core.shared.pixels import pixels_from_decoder


def decode_pixels(vae, inner_model, x0: torch.Tensor, scale: float = 1.0, clamp: bool = False) -> torch.Tensor:
    """`inner_model` converts the sampler's latent to the VAE's (process_latent_out); `scale` resizes the
    latent first (a cheaper decode). Gradients flow to `x0` when the caller made the VAE autograd-ready."""
    latent = inner_model.process_latent_out(x0)
    if scale != 1.0:
        latent = F.interpolate(latent, scale_factor=scale, mode="bilinear", align_corners=False)
    vae_model = vae.first_stage_model
    device = next(vae_model.parameters()).device
    decoded = vae_model.decode(latent.to(device, vae.vae_dtype))
    if decoded.ndim != 4:
        raise ValueError(f"the VAE decodes to {decoded.ndim}-D output; rewards need images (B, C, H, W).")
    pixels = pixels_from_decoder(decoded)
    return pixels.clamp(0, 1) if clamp else pixels
