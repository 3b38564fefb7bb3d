"""Training objectives, per rewrite (one value per row; the trainer averages them).

fl_db: forward-looking detailed balance with progressive reward decomposition. With log F(s_T) = 0
at the terminal state and per-step log-reward parts r_t (the reference policy's token
log-likelihood / (gamma tau)), each transition must satisfy
    delta_t = log F(s_t) + log P_F(a_t | s_t) - log F(s_{t+1}) - r_t   (= 0)
and the last one also subtracts the terminal part (c / (beta tau)). Loss = sum_t delta_t^2.
Summed over t, the deltas telescope to the trajectory-balance residual with log Z = log F(s_0).

tb: trajectory balance, (log Z(x) + sum_t log P_F - log R)^2, log Z(x) = log F(s_0) from the same head.
reward_max: REINFORCE on log R with the group's mean as baseline: reward maximization, for ablations.
"""
from __future__ import annotations

import torch

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
