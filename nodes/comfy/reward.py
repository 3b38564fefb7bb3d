"""REWARD_MODEL: a core Reward that ComfyUI's memory manager can load onto the GPU and offload.

Each loaded reward sits in a ModelPatcher, as ComfyUI's own CLIP-vision models do; before scoring,
`load_models_gpu` brings it (and any other rewards it is combined with) to the compute device and
may offload other models to make room. Gradients w.r.t. images work inside a node's execution
(ComfyUI runs nodes under inference mode) through `ready(grad=True)`.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Sequence

import torch

import comfy.model_management as mm
import comfy.model_patcher

from ...core.rewards import Reward, WeightedReward
from ...core.shared.autograd_weights import autograd_ready
from .module_holder import managed_patcher


def compute_dtype(choice: str, device: torch.device) -> torch.dtype:
    if choice == "fp32":
        return torch.float32
    if choice == "fp16":
        return torch.float16
    if choice == "bf16":
        return torch.bfloat16
    # auto: half precision where the device runs it well; rewards are small next to the diffusion model
    if device.type == "cpu":
        return torch.float32
    if mm.should_use_bf16(device):
        return torch.bfloat16
    return torch.float16 if mm.should_use_fp16(device) else torch.float32


class ComfyReward:
    """What flows through REWARD_MODEL sockets."""

    def __init__(self, reward: Reward, patchers: Sequence[comfy.model_patcher.ModelPatcher]):
        self.reward = reward
        self.patchers = list(patchers)

    @classmethod
    def load(cls, build, dtype_choice: str = "auto") -> "ComfyReward":
        """`build(device, dtype) -> Reward` builds on the offload device; ComfyUI moves it when needed."""
        load_device = mm.get_torch_device()
        offload_device = mm.unet_offload_device()
        # the core loaders build their weights outside inference mode, so autograd can use them later
        reward = build(offload_device, compute_dtype(dtype_choice, load_device))
        return cls(reward, [managed_patcher(reward, load_device, offload_device)])

    @classmethod
    def combine(cls, parts: Sequence[tuple["ComfyReward", float]]) -> "ComfyReward":
        reward = WeightedReward([(p.reward, w) for p, w in parts])
        patchers = []
        for part, _ in parts:
            patchers += [p for p in part.patchers if p not in patchers]
        return cls(reward, patchers)

    @property
    def label(self) -> str:
        return self.reward.label

    @property
    def device(self) -> torch.device:
        return self.patchers[0].load_device

    @contextmanager
    def ready(self, grad: bool = False, together_with: Sequence[comfy.model_patcher.ModelPatcher] = ()):
        """The reward on its compute device; with grad=True, usable by autograd inside a node.

        A method that samples while it scores passes its diffusion model (and VAE) in `together_with`,
        so the memory manager keeps them loaded side by side instead of offloading one for the other."""
        mm.load_models_gpu([*together_with, *self.patchers])
        with torch.inference_mode(False) if grad else nullcontext():
            with autograd_ready(self.reward) if grad else nullcontext():
                yield self.reward

    def score(self, images_bhwc: torch.Tensor, prompts: Sequence[str], batch_size: int = 8) -> torch.Tensor:
        """Scores (CPU float32, no gradient) of ComfyUI IMAGE tensors (B x H x W x C in [0, 1])."""
        images = images_bhwc[..., :3].movedim(-1, 1)
        scores = []
        with self.ready(grad=False) as reward, torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                mm.throw_exception_if_processing_interrupted()
                chunk = images[start:start + batch_size].to(self.device, torch.float32)
                scores.append(reward(chunk, list(prompts[start:start + batch_size])).float().cpu())
        return torch.cat(scores)
