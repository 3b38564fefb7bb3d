"""Differentiable rewards: images in [0, 1] and prompts -> one score per image, loaded from local files."""
from .base import Reward, RewardInputError, WeightedReward
from .local_files import BACKBONE, RewardArchitectureError, RewardCheckpointError, RewardFileError, error_part
from .preprocess import ImageTransform
from .registry import FAMILIES, load_reward

__all__ = ["BACKBONE", "FAMILIES", "ImageTransform", "Reward", "RewardArchitectureError", "RewardCheckpointError",
           "RewardFileError", "RewardInputError", "WeightedReward", "error_part", "load_reward"]
