"""Differentiable image preprocessing shared by the CLIP-style reward models.

Resize the short side with antialiased bicubic interpolation, center-crop, normalize: the same
arithmetic as torchvision's tensor transforms (a test compares them), on float tensors so that
gradients reach the input image. The PIL path the reward authors used differs by ~1/255.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_short_side(images: torch.Tensor, size: int) -> torch.Tensor:
    h, w = images.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    if short == size:
        return images
    new_short, new_long = size, int(size * long / short)
    new_h, new_w = (new_short, new_long) if h <= w else (new_long, new_short)
    return F.interpolate(images, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    h, w = images.shape[-2:]
    if h < size or w < size:  # only after a resize to a smaller short side; pad like torchvision would
        pad_w, pad_h = max(size - w, 0), max(size - h, 0)
        images = F.pad(images, [pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2])
        h, w = images.shape[-2:]
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return images[..., top:top + size, left:left + size]


@dataclass(frozen=True)
class ImageTransform:
    """[0, 1] images of any size -> normalized size x size model input."""

    size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.resize(images))

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        return center_crop(resize_short_side(images, self.size), self.size)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    @classmethod
    def from_hf_preprocessor(cls, config: dict) -> "ImageTransform":
        """From a Hugging Face preprocessor_config.json (CLIPImageProcessor fields)."""
        size = config.get("crop_size", config.get("size", 224))
        if isinstance(size, dict):
            size = size.get("height", size.get("shortest_edge", 224))
        return cls(int(size), tuple(config.get("image_mean", CLIP_MEAN)), tuple(config.get("image_std", CLIP_STD)))
