"""Rewards that compare a CLIP image embedding with a CLIP text embedding."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Reward
from .clip_backbone import ClipBackbone


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Half-precision embeddings are normalized in float32; float64 (for exact checks) stays."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def cosine(backbone: ClipBackbone, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    image = F.normalize(at_least_float32(backbone.encode_images(images)), dim=-1)
    text = F.normalize(at_least_float32(backbone.encode_prompts(prompts)), dim=-1)
    return (image * text).sum(-1)


class ClipSimilarity(Reward):
    """Cosine similarity of image and prompt embeddings (in [-1, 1]; the CLIPScore metric is 100 x this,
    clipped at 0). HPSv2 is this reward on an open_clip ViT-H-14 fine-tuned by the HPS authors."""

    family = "clip"

    def __init__(self, backbone: ClipBackbone, family: str | None = None):
        super().__init__()
        self.backbone = backbone
        if family:
            self.family = family
        self.freeze()

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return cosine(self.backbone, images, prompts)


class PickScore(Reward):
    """PickScore v1: logit_scale.exp() x cosine, on the PickScore CLIP-H model (about 18-23 for typical images)."""

    family = "pickscore"

    def __init__(self, backbone: ClipBackbone):
        super().__init__()
        self.backbone = backbone
        self.freeze()

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return at_least_float32(self.backbone.logit_scale).exp() * cosine(self.backbone, images, prompts)
