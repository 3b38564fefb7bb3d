"""Diversity of a set of images or prompts: mean pairwise cosine distance of their CLIP embeddings.

0 means all embeddings point the same way; 1 is what mutually orthogonal embeddings give. Used to
check that an optimized prompt set has not collapsed onto one phrasing or one picture.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..rewards.base import check_images
from ..rewards.clip_backbone import ClipBackbone


def mean_pairwise_distance(embeddings: torch.Tensor) -> float:
    """Mean of (1 - cosine similarity) over unordered pairs i < j of the N rows of an (N, D) array.

    A zero row has cosine 0 with everything (distance 1).
    """
    embeddings = torch.as_tensor(embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be an (N, D) array; got shape {tuple(embeddings.shape)}.")
    count = embeddings.shape[0]
    if count < 2:
        raise ValueError(f"diversity needs at least 2 embeddings to compare; got {count}.")
    unit = F.normalize(embeddings.detach().to(torch.float64), dim=-1)
    similarity = unit @ unit.T
    upper = torch.triu_indices(count, count, offset=1, device=similarity.device)
    return float((1.0 - similarity[upper[0], upper[1]]).mean())


def image_diversity(backbone: ClipBackbone, images: torch.Tensor) -> float:
    """Mean pairwise cosine distance of the CLIP image embeddings of [0, 1] images (B >= 2)."""
    check_images(images)
    with torch.no_grad():
        return mean_pairwise_distance(backbone.encode_images(images))


def prompt_diversity(backbone: ClipBackbone, prompts: Sequence[str]) -> float:
    """Mean pairwise cosine distance of the CLIP text embeddings of the prompts (at least 2)."""
    if isinstance(prompts, str) or any(not isinstance(p, str) for p in prompts):
        raise ValueError("prompt_diversity needs a list of prompt strings.")
    with torch.no_grad():
        return mean_pairwise_distance(backbone.encode_prompts(list(prompts)))
