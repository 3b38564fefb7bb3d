"""GFlowNet fine-tuning of a rewriter policy, one step at a time (single process or one DDP rank).

Each step takes one prompt's group of rewrites: on-policy (sampled at the exploration temperature)
or, with probability replay_ratio once the buffer has groups, a group replayed with probability
∝ exp(log R). The reference log-likelihood is recomputed for every group (cheap: one forward pass);
the task reward is computed once, when a rewrite is first sampled. Defaults are the authors' released
trainer's (dbsxodud-11/PAG: main.py and the README's command).

Reward-prioritized replay (PrioritizedReplay): as in the authors' code, each on-policy batch (the
rewrites of one prompt) is stored as one group whose priority is its mean log R; when the buffer is full
the group with the lowest priority leaves (or the newcomer is dropped if it is lower still). Rewrites
repeated within a group are stored once.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from . import objectives, trajectories
from .objectives import REACTIVATION_INITS, FlowHead, LinearSchedule, LogReward, dormant_share, reference_log_probs
from .rewards import text_diversity
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


TaskReward = Callable[[Sequence[str], Sequence[str]], torch.Tensor]  # (prompts, rewrites) -> c per rewrite


@dataclass
class TrainConfig:
    objective: str = "fl_db"  # fl_db | tb | reward_max
    steps: int = 10_000
    samples_per_step: int = 16  # rewrites of one prompt per step and rank (paper: 256 in all)
    policy_lr: float = 1e-5
    flow_lr: float = 1e-4
    max_grad_norm: float = 1.0
    beta: float = 0.05
    gamma: float = 1.0
    reward_temperature: tuple[float, float, int] = (2.0, 1.0, 500)  # start, end, horizon
    exploration_temperature: tuple[float, float, int] = (2.0, 0.5, 5_000)
    replay_ratio: float = 0.5
    buffer_size: int = 5_000
    flow_reset_period: int = 2_000  # 0: no flow reactivation
    flow_reset_init: str = "normal"  # N(0, 1) as the authors' code; "linear_default": nn.Linear's init
    min_new_tokens: int = 15
    max_new_tokens: int = 75
    template: str = trajectories.DEFAULT_TEMPLATE
    flow_hidden: int = 256
    # the flow head's prompt input, as the authors' code: the sum of the prompt's states without its last token
    # ("mean": their mean over all prompt tokens)
    prompt_summary: str = "sum_without_last"
    dropout: bool = True  # the policy in train mode (its dropout on), as the authors' code trains; False: off
    # the flow head reads detached policy states (the authors'); False: the flow loss also shapes those states,
    # which FL-DB needs when a small policy's states do not carry the reward to go (benchmarks/fl_db_toy.md)
    detach_flow_input: bool = True
    seed: int = 42  # the authors' main.py
    extra: dict = field(default_factory=dict)  # free-form notes saved with checkpoints

    def __post_init__(self):
        if self.objective not in objectives.OBJECTIVES:
            raise ValueError(f"objective must be one of {objectives.OBJECTIVES}; got {self.objective!r}")
        # checked here, not at the first step or the first flow reset thousands of steps in
        if self.prompt_summary not in trajectories.PROMPT_SUMMARIES:
            raise ValueError(f"prompt_summary must be one of {trajectories.PROMPT_SUMMARIES}; "
                             f"got {self.prompt_summary!r}")
        if self.flow_reset_init not in REACTIVATION_INITS:
            raise ValueError(f"flow_reset_init must be one of {REACTIVATION_INITS}; got {self.flow_reset_init!r}")
        self.reward_temperature = tuple(self.reward_temperature)
        self.exploration_temperature = tuple(self.exploration_temperature)

    def as_dict(self) -> dict:
        return asdict(self)


def _unwrap(module):
    return module.module if hasattr(module, "module") else module


class Trainer:
    def __init__(self, config: TrainConfig, policy, reference, tokenizer, task_reward: TaskReward,
                 prompts: Sequence[str], rank: int = 0, wrap: Callable[[nn.Module], nn.Module] = lambda m: m):
        """`wrap` turns a module into its data-parallel form (DDP) or leaves it as is."""
        if not prompts:
            raise ValueError("training needs at least one prompt")
        self.config, self.tokenizer, self.task_reward, self.rank = config, tokenizer, task_reward, rank
        self.prompts = list(prompts)
        self.eos = tokenizer.eos_token_id
        self.device = policy.get_input_embeddings().weight.device
        self.reference = reference.eval().requires_grad_(False)
        # dropout on, as the authors' code; off (dropout=False), the loss scores actions with the distribution that
        # sampled them
        policy.train(config.dropout)
        torch.manual_seed(config.seed)  # the same flow head on every rank
        self.policy = wrap(policy)
        self.flow = None
        self.optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=config.policy_lr)
        self.flow_optimizer = None
        if config.objective != "reward_max":
            head = FlowHead(policy.config.hidden_size, config.flow_hidden).to(self.device)
            self.flow = wrap(head)
            self.flow_optimizer = torch.optim.AdamW(head.parameters(), lr=config.flow_lr)
        self.buffer = PrioritizedReplay(config.buffer_size)
        self.reward_temperature = LinearSchedule(*config.reward_temperature)
        self.exploration_temperature = LinearSchedule(*config.exploration_temperature)
        self.step = 0
        self.rng = random.Random(config.seed * 1009 + rank)  # on-policy vs replay, which prompt
        self.sample_generator = torch.Generator(self.device).manual_seed(config.seed * 1009 + rank)
        self.replay_generator = torch.Generator().manual_seed(config.seed * 1009 + rank + 1)
        self._prompt_ids = {}

    @property
    def flow_head(self) -> FlowHead | None:
        return _unwrap(self.flow) if self.flow is not None else None

    def prompt_ids(self, prompt: str) -> list[int]:
        if prompt not in self._prompt_ids:
            self._prompt_ids[prompt] = trajectories.encode_prompt(self.tokenizer, prompt, self.config.template)
        return self._prompt_ids[prompt]

    def _group(self, temperature: float):
        """(trajectories, task reward, decoded rewrites, on_policy) for this step."""
        cfg = self.config
        if len(self.buffer) and self.rng.random() < cfg.replay_ratio:
            group = self.buffer.sample(self.replay_generator)
            traj = group.trajectories(self.eos)
            return traj, torch.tensor(group.task), traj.texts(self.tokenizer), False
        prompt = self.prompts[self.rng.randrange(len(self.prompts))]
        traj = trajectories.sample(_unwrap(self.policy), self.prompt_ids(prompt), cfg.samples_per_step, self.eos,
                                   cfg.max_new_tokens, cfg.min_new_tokens, temperature,
                                   generator=self.sample_generator)
        texts = traj.texts(self.tokenizer)
        return traj, self.task_reward([prompt] * len(texts), texts).float().cpu(), texts, True

    def train_step(self) -> dict:
        cfg = self.config
        tau, explore = self.reward_temperature(self.step), self.exploration_temperature(self.step)
        traj, task, texts, on_policy = self._group(explore)
        log_reward = LogReward(reference_log_probs(self.reference, traj, self.eos, cfg.min_new_tokens), task,
                               cfg.beta, cfg.gamma)
        if on_policy:
            self.buffer.add(traj, task, log_reward.total)
        scored = trajectories.score(self.policy, traj, self.eos, cfg.min_new_tokens,
                                    hidden=cfg.objective != "reward_max", prompt_summary=cfg.prompt_summary,
                                    detach_hidden=cfg.detach_flow_input)
        mask = traj.mask.to(self.device)
        metrics = {}
        if cfg.objective == "fl_db":
            log_flow = self.flow(scored.state_hidden, scored.prompt_hidden)
            loss = objectives.fl_db(log_flow, scored.log_probs, log_reward.steps(tau).to(self.device),
                                    log_reward.terminal(tau).to(self.device), mask)
        elif cfg.objective == "tb":
            log_z = self.flow(scored.state_hidden[:, 0], scored.prompt_hidden)
            loss = objectives.tb(log_z, scored.log_probs, (log_reward.total / tau).to(self.device), mask)
        else:
            loss = objectives.reward_max(scored.log_probs, (log_reward.total / tau).to(self.device), mask)
        loss = loss.mean()
        self.optimizer.zero_grad(set_to_none=True)
        if self.flow_optimizer is not None:
            self.flow_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(_unwrap(self.policy).parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        if self.flow_optimizer is not None:
            self.flow_optimizer.step()
            with torch.no_grad():
                metrics["dormant_share"] = dormant_share(self.flow_head.activations(scored.state_hidden[mask]))
        self.step += 1
        if self.flow is not None and cfg.flow_reset_period and self.step % cfg.flow_reset_period == 0:
            # seeded by the step: every rank draws the same new layer
            self.flow_head.reactivate(torch.Generator().manual_seed(cfg.seed * 7919 + self.step), cfg.flow_reset_init)
            metrics["flow_reactivated"] = 1.0
        metrics.update({"step": self.step, "loss": float(loss.detach()), "on_policy": float(on_policy),
                        "reward": float(task.mean()), "log_reward": float(log_reward.total.mean()),
                        "diversity": text_diversity(texts), "reward_temperature": tau,
                        "exploration_temperature": explore, "length": float(traj.lengths.float().mean()),
                        **self.buffer.stats()})
        return metrics

    @torch.no_grad()
    def evaluate(self, prompts: Sequence[str] | None = None, samples: int = 16, temperature: float = 1.0,
                 seed: int = 1234) -> dict:
        """Mean task reward and mean per-prompt diversity of fresh samples (fixed seed, no exploration)."""
        generator = torch.Generator(self.device).manual_seed(seed)
        rewards, diversities = [], []
        policy = _unwrap(self.policy)
        training = policy.training
        policy.eval()  # the policy as the node runs it (no dropout)
        try:
            for prompt in prompts or self.prompts:
                traj = trajectories.sample(policy, self.prompt_ids(prompt), samples, self.eos,
                                           self.config.max_new_tokens, self.config.min_new_tokens, temperature,
                                           generator=generator)
                texts = traj.texts(self.tokenizer)
                rewards.append(float(self.task_reward([prompt] * len(texts), texts).mean()))
                diversities.append(text_diversity(texts))
        finally:
            policy.train(training)
        return {"reward": sum(rewards) / len(rewards), "diversity": sum(diversities) / len(diversities)}
