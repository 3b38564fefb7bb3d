"""What training logs besides the reward: diversity of the rewrites, share of dormant flow neurons."""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch

from ..metrics.diversity import mean_pairwise_distance
from .prompt_rewards import WORD


def text_diversity(texts: Sequence[str]) -> float:
    """Mean pairwise cosine distance of the rewrites' bag-of-words vectors (0: all use the same words in
    the same proportions; 1: no two share a word). The authors use a sentence encoder instead; this one
    needs no model."""
    counts = [Counter(WORD.findall(t.lower())) for t in texts]
    vocab = sorted(set().union(*counts))
    if len(texts) < 2 or not vocab:
        return 0.0
    index = {w: i for i, w in enumerate(vocab)}
    bags = torch.zeros(len(texts), len(vocab))
    for row, c in enumerate(counts):
        for w, k in c.items():
            bags[row, index[w]] = k
    return mean_pairwise_distance(bags)


def dormant_share(activations: torch.Tensor, tau: float = 0.025) -> float:
    """Share of tau-dormant neurons (Sokar et al., 2023) in (N, H) activations: neuron i is dormant when its
    mean |activation| over the N inputs is at most tau times the layer's average of that mean."""
    per_neuron = activations.detach().abs().reshape(-1, activations.shape[-1]).float().mean(0)
    return float((per_neuron <= tau * per_neuron.mean().clamp_min(1e-12)).float().mean())
