"""Decoded images for rewards."""
from __future__ import annotations

import torch


def pixels_from_decoder(decoded: torch.Tensor) -> torch.Tensor:
    """VAE output in [-1, 1] -> [0, 1] images, without clamping (as the authors: clamping kills gradients)."""
    return decoded.float() / 2 + 0.5
