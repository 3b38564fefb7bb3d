"""Evaluation metrics for benchmarks: CLIPScore, embedding diversity and FID, in plain PyTorch.

They score finished images; none is meant to be optimized. Import without ComfyUI.
"""
from .clip_score import clip_score
from .diversity import image_diversity, mean_pairwise_distance, prompt_diversity
from .fid import InceptionFeatures, feature_statistics, fid, frechet_distance

__all__ = ["InceptionFeatures", "clip_score", "feature_statistics", "fid", "frechet_distance", "image_diversity",
           "mean_pairwise_distance", "prompt_diversity"]
