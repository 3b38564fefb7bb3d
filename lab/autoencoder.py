"""The lab autoencoder: ComfyUI's TAESD architecture, trained on the lab world (64 px -> 4 x 8 x 8 latents).

ComfyUI builds a TAESD when a checkpoint's VAE keys are `taesd_encoder.*` / `taesd_decoder.*`; its
`vae_scale` divides encoded latents, and SD1.x's latent format then multiplies by 0.18215 before the UNet.
Setting vae_scale = 0.18215 * std(latents) makes the UNet see unit-variance latents.
"""
from __future__ import annotations

import torch

SD1_LATENT_SCALE = 0.18215


def build_taesd(device="cpu") -> torch.nn.Module:
    import comfy.taesd.taesd

    from lab.unet import reset_parameters

    with torch.device(device):
        vae = comfy.taesd.taesd.TAESD()
    reset_parameters(vae)
    vae.vae_scale.data.fill_(1.0)
    vae.vae_shift.data.fill_(0.0)
    return vae


def encode(vae, images01: torch.Tensor) -> torch.Tensor:
    """Images B x 3 x H x W in [0, 1] -> latents as the decoder reads them (before any scale)."""
    return vae.taesd_encoder(images01)


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [0, 1] (unclamped)."""
    return vae.taesd_decoder(latents)
