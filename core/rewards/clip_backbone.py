"""A CLIP model seen as two towers: images -> embedding, prompts -> embedding.

CLIP similarity, PickScore, HPSv2 and the LAION aesthetic head all sit on a CLIP model; users have
them as Hugging Face CLIPModel folders or as open_clip checkpoints. `ClipBackbone` hides which.
Embeddings are returned unnormalized; the rewards normalize.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from .preprocess import ImageTransform


class ClipBackbone(nn.Module, ABC):
    transform: ImageTransform

    @abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B x 3 x H x W) -> (B, D) image embeddings (preprocessing included)."""

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> (B, D) text embeddings on the backbone's device."""

    @property
    @abstractmethod
    def logit_scale(self) -> torch.Tensor:
        """The learned temperature (log scale), as CLIP stores it."""

    @property
    def embed_dim(self) -> int:
        """Width of the shared embedding space (subclasses may read it from their config)."""
        with torch.no_grad():
            device = next(self.parameters()).device
            return int(self.encode_images(torch.zeros(1, 3, 8, 8, device=device)).shape[-1])


class HFClipBackbone(ClipBackbone):
    """transformers.CLIPModel + its CLIP BPE tokenizer."""

    def __init__(self, model: nn.Module, tokenizer, transform: ImageTransform, max_length: int | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.transform = transform
        self.max_length = max_length or int(model.config.text_config.max_position_embeddings)

    def _device(self) -> torch.device:
        return self.model.visual_projection.weight.device

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.transform(images.to(self._device(), self.model.visual_projection.weight.dtype))
        # vision_model(...).pooler_output + projection works on transformers 4.x and 5.x alike
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return self.model.visual_projection(pooled)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        device = self._device()
        pooled = self.model.text_model(input_ids=tokens["input_ids"].to(device),
                                       attention_mask=tokens["attention_mask"].to(device)).pooler_output
        return self.model.text_projection(pooled)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)
