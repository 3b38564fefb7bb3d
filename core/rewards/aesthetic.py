"""LAION aesthetic predictor v2: a linear head on L2-normalized CLIP ViT-L/14 image embeddings (1-10 scale)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .base import Reward
from .clip_backbone import ClipBackbone
from .clip_rewards import at_least_float32
from .linear_head import LinearHead
from .local_files import RewardCheckpointError, check_keys, read_state_dict, require_path

AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth (improved-aesthetic-predictor) in ComfyUI/models/rewards/"


class LaionAesthetic(Reward):
    family = "laion_aesthetic"

    def __init__(self, backbone: ClipBackbone, head: LinearHead):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.freeze()

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        # the prompt plays no part: aesthetics are judged from the image alone
        embedding = F.normalize(at_least_float32(self.backbone.encode_images(images)), dim=-1)
        return self.head(embedding.to(self.head.layers[0].weight.dtype))


def load_aesthetic_head(path: str | Path, device="cpu", dtype=torch.float32) -> LinearHead:
    path = require_path(path, "aesthetic head", AESTHETIC_FILE)
    state = read_state_dict(path)
    with torch.inference_mode(False):
        head = LinearHead.from_state_dict(state, "", str(path))
        check_keys({k: v.shape for k, v in head.state_dict().items()}, state, str(path))
        head.load_state_dict(state)
        return head.to(device=device, dtype=dtype).eval().requires_grad_(False)


def make_aesthetic(backbone: ClipBackbone, head: LinearHead, head_source: str = "aesthetic head") -> LaionAesthetic:
    width = backbone.embed_dim
    if width != head.in_features:
        raise RewardCheckpointError(f"{head_source} takes {head.in_features}-d CLIP embeddings but the CLIP model "
                                    f"gives {width}-d ones; the LAION predictor needs CLIP ViT-L/14 (768-d).")
    return LaionAesthetic(backbone, head)
