"""The stacked-linear score head shared by the LAION aesthetic predictor and ImageReward.

Both checkpoints store `layers.{i}.weight/bias` for an nn.Sequential of Linear layers with Dropout
in between (no activations: the head is affine). The head is rebuilt from the checkpoint's own
indices and shapes, so the file's key names load unchanged.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from .local_files import RewardCheckpointError


class LinearHead(nn.Module):
    def __init__(self, shapes: dict[int, tuple[int, int]]):
        """shapes: Sequential index -> (out_features, in_features); other indices are dropout slots."""
        super().__init__()
        last = max(shapes)
        self.layers = nn.Sequential(*[nn.Linear(shapes[i][1], shapes[i][0]) if i in shapes else nn.Identity()
                                      for i in range(last + 1)])
        self.in_features = shapes[min(shapes)][1]

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], prefix: str, source: str) -> "LinearHead":
        return cls(cls.shapes_in(state, prefix, source))

    @staticmethod
    def shapes_in(state: dict[str, torch.Tensor], prefix: str, source: str) -> dict[int, tuple[int, int]]:
        """Sequential index -> (out, in) of each Linear under `prefix`, checked to chain into one score."""
        shapes: dict[int, tuple[int, int]] = {}
        pattern = re.compile(re.escape(prefix) + r"layers\.(\d+)\.weight$")
        for key, value in state.items():
            match = pattern.match(key)
            if match:
                shapes[int(match.group(1))] = tuple(value.shape)
        if not shapes:
            raise RewardCheckpointError(f"'{source}' has no '{prefix}layers.N.weight' keys: not a score head.")
        order = sorted(shapes)
        for a, b in zip(order, order[1:]):
            if shapes[a][0] != shapes[b][1]:
                raise RewardCheckpointError(f"'{source}': layer {a} outputs {shapes[a][0]} features but layer {b} "
                                            f"takes {shapes[b][1]}.")
        if shapes[order[-1]][0] != 1:
            raise RewardCheckpointError(f"'{source}': the last layer gives {shapes[order[-1]][0]} outputs, not one score.")
        return shapes

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1)
