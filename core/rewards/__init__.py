"""Differentiable rewards: images in [0, 1] and prompts -> one score per image, loaded from local files."""
from .base import Reward, RewardInputError, WeightedReward
from .local_files import RewardCheckpointError, RewardFileError
from .preprocess import ImageTransform
from .registry import FAMILIES, load_reward

__all__ = ["FAMILIES", "ImageTransform", "Reward", "RewardCheckpointError", "RewardFileError", "RewardInputError",
           "WeightedReward", "load_reward"]
