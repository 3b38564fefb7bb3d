"""A module that is not a diffusion model (a reward, a rewriter policy) under ComfyUI's memory manager."""
from __future__ import annotations

import comfy.model_patcher
import torch
from torch import nn


class ModuleHolder(nn.Module):
    """ModelPatcher writes bookkeeping attributes (device, ...) on its module; this keeps them off the held one."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


def managed_patcher(module: nn.Module, load_device: torch.device,
                    offload_device: torch.device) -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher ComfyUI can load onto `load_device` and offload, like any model it manages."""
    return comfy.model_patcher.ModelPatcher(ModuleHolder(module), load_device=load_device,
                                            offload_device=offload_device)
