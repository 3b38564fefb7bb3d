"""The log-reward of a rewrite y of prompt x, and its decomposition over steps.

    log R(x, y) = log p_ref(y | x) / gamma + c(x, y) / beta

p_ref is the frozen initial policy; c is the task reward (image reward, or a toy reward). Progressive
reward decomposition hands the reference part to the transition that produced each token,
r_t = log p_ref(a_t | s_t) / (gamma tau), and the task part to the last one, c / (beta tau); the parts
sum to log R / tau. Paper: beta = 0.05, gamma = 1. Rewrites shorter than min_new_tokens cannot occur:
the end token is masked before it in the policy and in p_ref alike (the authors instead penalize
them with log p_ref = -500, which has the same effect on the target distribution).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import trajectories


@torch.no_grad()
def reference_log_probs(reference, traj: trajectories.Trajectories, eos_id: int, min_new_tokens: int) -> torch.Tensor:
    """log p_ref(a_t | s_t) per action (n, T), 0 where masked, on the CPU."""
    return trajectories.score(reference, traj, eos_id, min_new_tokens, hidden=False).log_probs.float().cpu()


@dataclass
class LogReward:
    ref_log_probs: torch.Tensor  # (n, T)
    task: torch.Tensor  # (n,) c(x, y)
    beta: float
    gamma: float

    @property
    def total(self) -> torch.Tensor:
        """log R (untempered), what the replay buffer prioritizes and the metrics report."""
        return self.ref_log_probs.sum(1) / self.gamma + self.task / self.beta

    def steps(self, tau: float) -> torch.Tensor:
        return self.ref_log_probs / (self.gamma * tau)

    def terminal(self, tau: float) -> torch.Tensor:
        return self.task / (self.beta * tau)
