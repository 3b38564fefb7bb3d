"""A task reward on text alone, for tests and quick experiments without images.

TargetWords: c(x, y) = share of the rewrite's words that belong to a target set. Many different
rewrites reach c = 1, so a sampler of p_ref * exp(c / beta) stays diverse where a reward maximizer
may settle on one of them: the paper's central claim in miniature.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch

WORD = re.compile(r"[\w']+|[^\w\s]")


class TargetWords:
    def __init__(self, words: Sequence[str]):
        self.words = {w.lower() for w in words}
        if not self.words:
            raise ValueError("TargetWords needs at least one word")

    def __call__(self, prompts: Sequence[str], rewrites: Sequence[str]) -> torch.Tensor:
        scores = []
        for text in rewrites:
            tokens = WORD.findall(text.lower())
            scores.append(sum(t in self.words for t in tokens) / len(tokens) if tokens else 0.0)
        return torch.tensor(scores, dtype=torch.float32)
