"""The reward families the pack can load, what files each needs, and one function that loads any of them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .aesthetic import AESTHETIC_FILE, load_aesthetic_head, make_aesthetic
from .base import Reward
from .clip_backbone import ClipBackbone
from .clip_rewards import ClipSimilarity, PickScore
from .hf_clip import HF_CLIP_LAYOUT, is_hf_clip_folder, load_hf_clip
from .image_reward import IMAGE_REWARD_LAYOUT, load_image_reward
from .local_files import BACKBONE, RewardArchitectureError, RewardCheckpointError, RewardFileError


@dataclass(frozen=True)
class RewardFamily:
    id: str
    title: str
    layout: str  # the files a user needs, for tooltips and errors
    needs_backbone: bool = False  # a second path: the CLIP model the head sits on


FAMILIES: dict[str, RewardFamily] = {f.id: f for f in [
    RewardFamily("clip", "CLIP similarity (cosine)",
                 f"{HF_CLIP_LAYOUT}; or an open_clip checkpoint (a folder with open_clip_config.json, or a "
                 "weights file plus its architecture name, e.g. ViT-L-14-quickgelu for OpenAI-trained weights; "
                 "needs open_clip_torch)"),
    RewardFamily("pickscore", "PickScore v1", f"{HF_CLIP_LAYOUT} holding yuvalkirstain/PickScore_v1"),
    RewardFamily("hpsv2", "HPS v2", "HPS_v2_compressed.pt (open_clip ViT-H-14 weights; needs open_clip_torch)"),
    RewardFamily("laion_aesthetic", "LAION aesthetic predictor v2",
                 f"{AESTHETIC_FILE}, on a CLIP ViT-L/14 given as the backbone", needs_backbone=True),
    RewardFamily("image_reward", "ImageReward v1.0", IMAGE_REWARD_LAYOUT),
]}


def family(family_id: str) -> RewardFamily:
    if family_id not in FAMILIES:
        raise ValueError(f"unknown reward family '{family_id}'; choose one of {', '.join(FAMILIES)}.")
    return FAMILIES[family_id]


def load_clip_backbone(path: str | Path, architecture: str | None = None, device="cpu", dtype=torch.float32,
                       fallback_tokenizer_dir: str | Path | None = None, what: str = "CLIP model") -> ClipBackbone:
    """A Hugging Face CLIPModel folder, else an open_clip checkpoint (optional extra)."""
    path = Path(path)
    if not path.exists():
        raise RewardFileError(f"{what}: '{path}' does not exist; expected {FAMILIES['clip'].layout}.")
    if is_hf_clip_folder(path):
        return load_hf_clip(path, device, dtype, fallback_tokenizer_dir, what=what)
    from .open_clip_backbone import load_open_clip

    return load_open_clip(path, architecture, device=device, dtype=dtype, what=what)


def load_reward(family_id: str, path: str | Path, *, backbone_path: str | Path | None = None,
                architecture: str | None = None, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32, fallback_tokenizer_dir: str | Path | None = None) -> Reward:
    """Load a reward of `family_id` from local files. Raises RewardFileError / RewardCheckpointError with
    a message naming the files expected, or an ImportError naming the optional package to install."""
    fam = family(family_id)
    if fam.id == "clip":
        backbone = load_clip_backbone(path, architecture, device, dtype, fallback_tokenizer_dir)
        return ClipSimilarity(backbone)
    if fam.id == "pickscore":
        return PickScore(load_hf_clip(path, device, dtype, fallback_tokenizer_dir, what="PickScore"))
    if fam.id == "hpsv2":
        from .open_clip_backbone import load_hpsv2

        return load_hpsv2(path, architecture or "ViT-H-14", device=device, dtype=dtype)
    if fam.id == "laion_aesthetic":
        if backbone_path is None:
            raise RewardFileError("LAION aesthetic predictor: no CLIP backbone given; it needs CLIP ViT-L/14 "
                                  f"({FAMILIES['clip'].layout}).")
        head = load_aesthetic_head(path, device, dtype)
        try:
            backbone = load_clip_backbone(backbone_path, architecture, device, dtype, fallback_tokenizer_dir,
                                          what="aesthetic predictor's CLIP backbone")
        except (RewardFileError, RewardCheckpointError, RewardArchitectureError) as e:
            e.part = BACKBONE  # so a caller can name the input that holds the backbone
            raise
        return make_aesthetic(backbone, head, str(path))
    return load_image_reward(path, device, dtype)
