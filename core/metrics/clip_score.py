"""CLIPScore (Hessel et al., 2021): 100 * max(cos(image, prompt), 0).

Measure it with a CLIP model OTHER than the one a method optimized against: a method that climbs a
CLIP reward inflates CLIPScore on that same model without the images matching the prompt any better.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..rewards.base import check_images, prompts_for_batch
from ..rewards.clip_backbone import ClipBackbone
from ..rewards.clip_rewards import cosine


def clip_score(backbone: ClipBackbone, images: torch.Tensor, prompts: str | Sequence[str]) -> torch.Tensor:
    """(B,) float32 CLIPScores in [0, 100] for [0, 1] images (B x 3 x H x W) and one prompt or one per image.

    `backbone` should be an evaluation CLIP, not the one used as the optimized reward (see module doc).
    """
    check_images(images)
    prompts = prompts_for_batch(prompts, images.shape[0])
    with torch.no_grad():
        return 100.0 * cosine(backbone, images, prompts).clamp(min=0.0)
