"""The flow function log F(s) of the GFlowNet: a small head on the policy's detached hidden states.

Authors' design: Linear(D, 256) -> ReLU -> FiLM (scale and shift computed from the prompt's hidden
state) -> Linear(256, 1). The hidden states are detached, so the flow loss trains only this head's
weights through F while the policy learns through its log-probabilities.
"""
from __future__ import annotations

import torch
from torch import nn


REACTIVATION_INITS = ("normal", "linear_default")


class FlowHead(nn.Module):
    def __init__(self, dim: int, hidden: int = 256):
        super().__init__()
        self.state_in = nn.Linear(dim, hidden)
        self.film = nn.Linear(dim, 2 * hidden)
        self.out = nn.Linear(hidden, 1)

    def activations(self, state: torch.Tensor) -> torch.Tensor:
        """The ReLU units (…, hidden), whose dormant share training logs."""
        return torch.relu(self.state_in(state))

    def features(self, state: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """What the last layer reads: the ReLU units modulated by the prompt (FiLM)."""
        scale, shift = self.film(prompt).chunk(2, dim=-1)
        h = self.activations(state)
        if h.ndim == 3:  # (n, T, hidden): one prompt conditioning per row
            scale, shift = scale.unsqueeze(1), shift.unsqueeze(1)
        return scale * h + shift

    def forward(self, state: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """log F for states (n, T, D) or (n, D), conditioned on prompts (n, D)."""
        return self.out(self.features(state, prompt)).squeeze(-1)

    @torch.no_grad()
    def reactivate(self, generator: torch.Generator | None = None, init: str = "normal") -> None:
        """Flow reactivation: re-initialize the last layer only, so that neurons the old output weights had
        silenced can learn again; the policy is untouched. init "normal": N(0, 1) weights and bias, as the
        authors' code (`randn_like`); "linear_default": nn.Linear's U(-1/sqrt(fan_in), 1/sqrt(fan_in)). A
        seeded generator gives every DDP rank the same new weights."""
        if init not in REACTIVATION_INITS:
            raise ValueError(f"init must be one of {REACTIVATION_INITS}; got {init!r}")
        bound = 1.0 / self.out.in_features ** 0.5
        for p in (self.out.weight, self.out.bias):
            if init == "normal":
                fresh = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            else:
                fresh = torch.rand(p.shape, generator=generator, dtype=torch.float32) * 2 * bound - bound
            p.copy_(fresh.to(p.device, p.dtype))
