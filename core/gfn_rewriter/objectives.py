"""What GFlowNet fine-tuning learns toward: the log-reward and its decomposition over steps, the flow
function's head, the training objectives, and the temperature schedules.

The log-reward of a rewrite y of prompt x, and its decomposition over steps:

    log R(x, y) = log p_ref(y | x) / gamma + c(x, y) / beta

p_ref is the frozen initial policy; c is the task reward (image reward, or a toy reward). Progressive
reward decomposition hands the reference part to the transition that produced each token,
r_t = log p_ref(a_t | s_t) / (gamma tau), and the task part to the last one, c / (beta tau); the parts
sum to log R / tau. Paper: beta = 0.05, gamma = 1. Rewrites shorter than min_new_tokens cannot occur:
the end token is masked before it in the policy and in p_ref alike (the authors instead penalize
them with log p_ref = -500, which has the same effect on the target distribution).

Training objectives, per rewrite (one value per row; the trainer averages them):

fl_db: forward-looking detailed balance with progressive reward decomposition. With log F(s_T) = 0
at the terminal state and per-step log-reward parts r_t (the reference policy's token
log-likelihood / (gamma tau)), each transition must satisfy
    delta_t = log F(s_t) + log P_F(a_t | s_t) - log F(s_{t+1}) - r_t   (= 0)
and the last one also subtracts the terminal part (c / (beta tau)). Loss = sum_t delta_t^2.
Summed over t, the deltas telescope to the trajectory-balance residual with log Z = log F(s_0).

tb: trajectory balance, (log Z(x) + sum_t log P_F - log R)^2, log Z(x) = log F(s_0) from the same head.
reward_max: REINFORCE on log R with the group's mean as baseline: reward maximization, for ablations.

The flow function log F(s): a small head on the policy's detached hidden states. Authors' design:
Linear(D, 256) -> ReLU -> FiLM (scale and shift computed from the prompt's hidden state) -> Linear(256, 1).
The hidden states are detached, so the flow loss trains only this head's weights through F while the
policy learns through its log-probabilities. dormant_share: the share of its neurons that have gone
quiet, which training logs.

Temperature schedules: value(step) moves linearly from `start` to `end` over `horizon` steps, then stays.
Paper: reward temperature tau 2.0 -> 1.0 over 500 steps (divides log R in the loss); exploration
temperature 2.0 -> 0.5 over 5,000 steps (divides the logits when sampling on-policy only).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

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


OBJECTIVES = ("fl_db", "tb", "reward_max")


def fl_db(log_flow: torch.Tensor, log_pf: torch.Tensor, step_log_reward: torch.Tensor,
          terminal_log_reward: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log_flow, log_pf, step_log_reward, mask: (n, T), entries t < length valid; terminal: (n,)."""
    mask = mask.to(log_pf.dtype)
    flow = log_flow * mask
    next_flow = torch.cat([flow[:, 1:], torch.zeros_like(flow[:, :1])], 1)  # log F(s_{t+1}); 0 after the end
    delta = flow + log_pf - next_flow - step_log_reward * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    delta = delta - torch.nn.functional.one_hot(last, mask.shape[1]).to(delta.dtype) * terminal_log_reward.unsqueeze(1)
    return (delta.square() * mask).sum(1)


def tb(log_z: torch.Tensor, log_pf: torch.Tensor, log_reward: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (log_z + (log_pf * mask).sum(1) - log_reward).square()


def reward_max(log_pf: torch.Tensor, log_reward: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    advantage = (log_reward - log_reward.mean()).detach()
    return -advantage * (log_pf * mask).sum(1)


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


def dormant_share(activations: torch.Tensor, tau: float = 0.025) -> float:
    """Share of tau-dormant neurons (Sokar et al., 2023) in (N, H) activations: neuron i is dormant when its
    mean |activation| over the N inputs is at most tau times the layer's average of that mean."""
    per_neuron = activations.detach().abs().reshape(-1, activations.shape[-1]).float().mean(0)
    return float((per_neuron <= tau * per_neuron.mean().clamp_min(1e-12)).float().mean())


@dataclass(frozen=True)
class LinearSchedule:
    start: float
    end: float
    horizon: int

    def __call__(self, step: int) -> float:
        if self.horizon <= 0:
            return self.end
        return self.start + (self.end - self.start) * min(1.0, max(step, 0) / self.horizon)
