"""The text-encoder view: encode a prompt with extra learnable token embeddings spliced in."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal, Mapping

import torch

from .conditioning import TextConditioning

Position = Literal["start", "end"]


@dataclass(frozen=True)
class LearnableTokens:
    """Input embeddings to splice into the prompt, one (n, width) tensor per encoder.

    "end" puts them after the last prompt token (before end-of-text), "start" right after
    start-of-text. For SDXL give one tensor per encoder ("l": 768 wide, "g": 1280 wide).
    """

    vectors: Mapping[str, torch.Tensor]
    position: Position = "end"

    def __post_init__(self):
        if self.position not in ("start", "end"):
            raise ValueError(f"position must be 'start' or 'end', got {self.position!r}")
        counts = {k: v.shape[0] for k, v in self.vectors.items()}
        if any(v.ndim != 2 for v in self.vectors.values()) or len(set(counts.values())) > 1:
            raise ValueError(f"each encoder needs an (n, width) tensor with the same n; got {counts}")

    @property
    def count(self) -> int:
        return next(iter(self.vectors.values())).shape[0]


class TextEncoder(ABC):
    """A prompt encoder, differentiable with respect to spliced token embeddings."""

    @property
    @abstractmethod
    def token_widths(self) -> dict[str, int]:
        """Input-embedding width of each encoder, e.g. {"l": 768} (SD1.x) or {"l": 768, "g": 1280} (SDXL)."""

    @abstractmethod
    def vocabulary(self, encoder: str) -> torch.Tensor:
        """The (vocab, width) input-embedding table of one encoder (read-only)."""

    @abstractmethod
    def word_embeddings(self, encoder: str, text: str) -> torch.Tensor:
        """Input embeddings (n, width) of the tokens of `text` (no start/end tokens)."""

    @abstractmethod
    def encode(self, prompt: str, learnable: LearnableTokens | None = None) -> TextConditioning:
        """Encode `prompt`; with `learnable`, its vectors are spliced in and receive gradients."""

    def check_learnable(self, learnable: LearnableTokens) -> None:
        widths = self.token_widths
        if set(learnable.vectors) != set(widths):
            raise ValueError(f"learnable tokens are for encoders {sorted(learnable.vectors)}, "
                             f"this text encoder has {sorted(widths)}")
        for k, v in learnable.vectors.items():
            if v.shape[1] != widths[k]:
                raise ValueError(f"encoder {k!r} takes {widths[k]}-wide token embeddings, got {v.shape[1]}")
