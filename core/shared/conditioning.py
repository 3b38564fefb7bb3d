"""What a text encoder hands to a denoiser."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TextConditioning:
    """Encoder output as the denoiser consumes it.

    cross_attn: (B, tokens, width) token states the denoiser attends to (SDXL: both encoders
        concatenated along width, 768 + 1280 = 2048).
    pooled: (B, width) pooled vector for families that use one (SDXL), else None.
    """

    cross_attn: torch.Tensor
    pooled: torch.Tensor | None = None

    def detach(self) -> "TextConditioning":
        return TextConditioning(self.cross_attn.detach(), None if self.pooled is None else self.pooled.detach())
