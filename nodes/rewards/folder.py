"""The `models/rewards` folder. Reward weights come as folders (Hugging Face CLIPModel folders, ImageReward
folders, open_clip folders) or single files (aesthetic head, HPS v2), so the listing includes both."""
from __future__ import annotations

from ...core.rewards.local_files import WEIGHT_SUFFIXES
from ..comfy.model_folder import ModelFolder

REWARDS = ModelFolder("rewards", markers=("config.json", "open_clip_config.json", "ImageReward.pt", "med_config.json"),
                      file_suffixes=tuple(WEIGHT_SUFFIXES))
NONE = "none"
