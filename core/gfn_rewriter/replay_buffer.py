"""Reward-prioritized replay: groups of rewrites of one prompt, sampled with probability ∝ exp(log R).

As in the authors' code, each on-policy batch (the rewrites of one prompt) is stored as one group
whose priority is its mean log R; when the buffer is full the group with the lowest priority leaves
(or the newcomer is dropped if it is lower still). Rewrites repeated within a group are stored once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .trajectories import Trajectories


@dataclass
class Group:
    prompt_ids: list[int]
    actions: list[list[int]]  # each rewrite's tokens, the end token included when it ended
    task: list[float]  # c(x, y) per rewrite
    priority: float  # mean log R when stored

    def trajectories(self, eos_id: int) -> Trajectories:
        T = max(len(a) for a in self.actions)
        actions = torch.full((len(self.actions), T), eos_id, dtype=torch.long)
        mask = torch.zeros(len(self.actions), T, dtype=torch.bool)
        for i, a in enumerate(self.actions):
            actions[i, :len(a)] = torch.tensor(a, dtype=torch.long)
            mask[i, :len(a)] = True
        return Trajectories(torch.tensor(self.prompt_ids, dtype=torch.long), actions, mask)


class PrioritizedReplay:
    def __init__(self, capacity: int = 5000):
        self.capacity = capacity
        self.groups: list[Group] = []

    def __len__(self) -> int:
        return len(self.groups)

    def add(self, traj: Trajectories, task: torch.Tensor, log_reward: torch.Tensor) -> bool:
        """Store a group; False when the buffer is full and the group ranks below all stored ones."""
        seen, keep = set(), []
        for i, (row, m) in enumerate(zip(traj.actions, traj.mask)):
            key = tuple(row[m].tolist())
            if key not in seen:
                seen.add(key)
                keep.append(i)
        group = Group(traj.prompt_ids.tolist(), [traj.actions[i][traj.mask[i]].tolist() for i in keep],
                      [float(task[i]) for i in keep], float(log_reward[keep].mean()))
        if len(self.groups) >= self.capacity:
            lowest = min(range(len(self.groups)), key=lambda i: self.groups[i].priority)
            if self.groups[lowest].priority >= group.priority:
                return False
            self.groups.pop(lowest)
        self.groups.append(group)
        return True

    def probabilities(self) -> torch.Tensor:
        priorities = torch.tensor([g.priority for g in self.groups], dtype=torch.float64)
        return torch.softmax(priorities, 0)  # exp(log R) / sum exp(log R), computed stably

    def sample(self, generator: torch.Generator | None = None) -> Group:
        if not self.groups:
            raise IndexError("the replay buffer is empty")
        return self.groups[int(torch.multinomial(self.probabilities(), 1, generator=generator))]

    def stats(self) -> dict:
        if not self.groups:
            return {"buffer_size": 0}
        p = torch.tensor([g.priority for g in self.groups])
        return {"buffer_size": len(self.groups), "buffer_mean_log_reward": float(p.mean()),
                "buffer_max_log_reward": float(p.max()), "buffer_min_log_reward": float(p.min())}

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "groups": [vars(g) for g in self.groups]}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = state["capacity"]
        self.groups = [Group(**g) for g in state["groups"]]
