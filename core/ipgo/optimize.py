"""IPGO (Indirect Prompt Gradient Optimization, arXiv 2503.21812): learned prefix/suffix tokens.

A few tokens are injected in the text encoder's OUTPUT space around the unpadded prompt sequence,

    [prefix (n tokens); encoder(prompt) from BOS to EOS; suffix (n tokens)]

and learned by gradient ascent on a reward of the generated image, with gradients through only the
last K denoising steps and the VAE decode. Each token is low-rank and rotated:

    token_i = R(theta_i) (W x_i + b),   x_i in [-1, 1]^m,   W (width x m) with orthonormal columns,

R(theta_i) = two rotations of all (even, odd) coordinate pairs by theta_i0 and then of the pairs shifted
by one by theta_i1, both offset by the token index i (the paper's rotation; the authors' notebook slices
the angles away, which `rotation=False` reproduces). Loss = -reward + conformity_weight * conformity.
Nothing here knows ComfyUI: `train` calls back into an `evaluate` that renders and scores.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrizations

from ..shared.settings_error import SettingsError


class IpgoSettingsError(SettingsError):
    pass


@dataclass(frozen=True)
class IpgoSettings:
    """Defaults are what the authors' notebook runs prompt-wise (SD1.5, 50 steps, cfg 7.5), which is the
    paper's setting except the rotation: the notebook slices the angles away (no rotation), the paper's
    text rotates (rotation=True). Batch-wise in the notebook: 20 epochs, lr_step 15, lr_gamma 0.95,
    accumulation 4."""

    prefix_tokens: int = 10
    suffix_tokens: int = 10
    rank: int = 300  # m: coefficients per token
    rotation: bool = False  # the notebook's effective behaviour; True = the paper's text
    conformity_weight: float = 0.001
    last_steps: int = 2  # K: gradients flow through the last K denoising steps only
    epochs: int = 50
    lr: float = 1e-3
    lr_step: int = 10  # StepLR: lr *= lr_gamma every lr_step optimizer steps
    lr_gamma: float = 0.9
    clip_norm: float = 1.0  # gradient-norm clipping (0 = off)
    accumulation: int = 4  # prompts per optimizer step (prompt lists)
    bound: float = 1.0  # coefficient range [-bound, bound]
    keep_best: bool = True

    def __post_init__(self):
        def bad(name, why):
            raise IpgoSettingsError(f"{name} {why}, got {getattr(self, name)!r}", name)

        for name in ("prefix_tokens", "suffix_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                bad(name, "must be a whole number >= 0")
        if self.prefix_tokens + self.suffix_tokens < 1:
            bad("prefix_tokens", "plus suffix_tokens must be at least 1")
        for name in ("rank", "last_steps", "epochs", "lr_step", "accumulation"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                bad(name, "must be a whole number >= 1")
        for name in ("conformity_weight", "lr", "lr_gamma", "clip_norm", "bound"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                bad(name, "must be a finite number >= 0")
        for name in ("lr", "lr_gamma", "bound"):
            if getattr(self, name) <= 0:
                bad(name, "must be > 0")


# -- the parameterization ---------------------------------------------------------------------------
def rotate_pairs(vector: torch.Tensor, angle: torch.Tensor, offset: int) -> torch.Tensor:
    """Rotate every coordinate pair (offset + 2k, offset + 2k + 1) mod width of `vector` by `angle`."""
    width = vector.shape[-1]
    shifted = torch.roll(vector, -offset, dims=-1).reshape(*vector.shape[:-1], width // 2, 2)
    a, b = shifted[..., 0], shifted[..., 1]
    cos, sin = torch.cos(angle), torch.sin(angle)
    turned = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).reshape(vector.shape)
    return torch.roll(turned, offset, dims=-1)


def rotate_tokens(tokens: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """The paper's rotation of (n, width) tokens by (n, 2) angles: token i's pairs start at i, then i + 1."""
    if tokens.shape[0] == 0:
        return tokens
    rows = []
    for i in range(tokens.shape[0]):
        row = tokens[i]
        for j in range(angles.shape[1]):
            row = rotate_pairs(row, angles[i, j], i + j)
        rows.append(row)
    return torch.stack(rows)


class TokenBlock(nn.Module):
    """n tokens = R(theta) (W x + b): coefficients x (n, m), angles (n, 2), orthonormal basis W, bias b."""

    def __init__(self, count: int, rank: int, width: int, bound: float, rotation: bool):
        super().__init__()
        if rank > width:
            raise IpgoSettingsError(f"rank must be at most the conditioning width {width}, got {rank}", "rank")
        if rotation and width % 2:
            raise IpgoSettingsError(f"the rotation needs an even conditioning width, got {width}", "rotation")
        self.bound, self.rotation = bound, rotation
        self.coefficients = nn.Parameter((torch.rand(count, rank) * 2 - 1) * bound)
        self.angles = nn.Parameter((torch.rand(count, 2) * 2 - 1) * math.pi)
        # weight (width, rank): the orthogonal parametrization keeps its columns orthonormal
        self.basis = parametrizations.orthogonal(nn.Linear(rank, width))

    @property
    def count(self) -> int:
        return self.coefficients.shape[0]

    def forward(self) -> torch.Tensor:
        tokens = self.basis(self.coefficients)
        return rotate_tokens(tokens, self.angles) if self.rotation else tokens

    @torch.no_grad()
    def project_(self) -> None:
        """Back into range after an optimizer step (the notebook clamps in the forward pass instead)."""
        self.coefficients.clamp_(-self.bound, self.bound)
        self.angles.clamp_(-math.pi, math.pi)


class BoundaryTokens(nn.Module):
    """Learnable prefix and suffix for one conditioning width."""

    def __init__(self, width: int, settings: IpgoSettings, seed: int = 0):
        super().__init__()
        self.width = width
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(seed)
            self.prefix = TokenBlock(settings.prefix_tokens, settings.rank, width, settings.bound, settings.rotation)
            self.suffix = TokenBlock(settings.suffix_tokens, settings.rank, width, settings.bound, settings.rotation)

    def blocks(self) -> tuple[TokenBlock, TokenBlock]:
        return self.prefix, self.suffix

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prefix(), self.suffix()

    def project_(self) -> None:
        for block in self.blocks():
            block.project_()

    def orthonormality_error(self) -> float:
        """max over blocks of ||W^T W - I||_max (0 for an exactly orthonormal basis)."""
        errors = []
        for block in self.blocks():
            w = block.basis.weight.detach().double()
            errors.append(float((w.T @ w - torch.eye(w.shape[1], dtype=w.dtype)).abs().max()))
        return max(errors)

    def in_range(self) -> bool:
        return all(bool((b.coefficients.abs() <= b.bound + 1e-6).all() and (b.angles.abs() <= math.pi + 1e-6).all())
                   for b in self.blocks())


@dataclass
class LearnedTokens:
    """What the apply node needs: fixed prefix/suffix tokens for conditionings of `width`."""

    prefix: torch.Tensor  # (n_prefix, width)
    suffix: torch.Tensor  # (n_suffix, width)
    info: dict[str, str] = field(default_factory=dict)  # family, prompts, reward, settings ...

    @property
    def width(self) -> int:
        return self.prefix.shape[1] if self.prefix.shape[0] else self.suffix.shape[1]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"prefix": self.prefix.contiguous(), "suffix": self.suffix.contiguous()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], info: dict[str, str] | None = None) -> "LearnedTokens":
        missing = {"prefix", "suffix"} - set(tensors)
        if missing:
            raise ValueError(f"not an IPGO tokens file: no {sorted(missing)} tensor")
        prefix, suffix = tensors["prefix"], tensors["suffix"]
        if prefix.ndim != 2 or suffix.ndim != 2 or prefix.shape[1] != suffix.shape[1]:
            raise ValueError(f"prefix {tuple(prefix.shape)} and suffix {tuple(suffix.shape)} must be "
                             "(tokens, width) with one width")
        if not (torch.isfinite(prefix).all() and torch.isfinite(suffix).all()):
            raise ValueError("the tokens contain NaN or infinite values")
        return cls(prefix, suffix, dict(info or {}))


# -- injection and the loss -------------------------------------------------------------------------
def inject(prompt_states: torch.Tensor, prefix: torch.Tensor, suffix: torch.Tensor) -> torch.Tensor:
    """[prefix; prompt (B, L, width) unpadded; suffix] -> (B, n_prefix + L + n_suffix, width)."""
    if prompt_states.shape[-1] != prefix.shape[-1]:
        raise ValueError(f"the tokens are {prefix.shape[-1]} wide, the conditioning {prompt_states.shape[-1]}")
    batch = prompt_states.shape[0]
    parts = [prefix.unsqueeze(0).expand(batch, -1, -1).to(prompt_states.dtype), prompt_states,
             suffix.unsqueeze(0).expand(batch, -1, -1).to(prompt_states.dtype)]
    return torch.cat(parts, dim=1)


def conformity(new: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per sample: sum over width of |token mean of the new sequence - token mean of the original| / width."""
    return (new.float().mean(dim=1) - original.float().mean(dim=1)).abs().sum(dim=-1) / new.shape[-1]


# -- training ---------------------------------------------------------------------------------------
Evaluate = Callable[[int, torch.Tensor, Callable[[torch.Tensor], None]], object]


@dataclass
class TrainResult:
    tokens: LearnedTokens | None = None  # the best (or, with several steps per epoch, the last) tokens
    best_reward: float = -math.inf
    best_epoch: int = -1
    best_outputs: dict[int, object] = field(default_factory=dict)  # prompt index -> what evaluate returned
    curve: list[float] = field(default_factory=list)  # mean reward per epoch
    lrs: list[float] = field(default_factory=list)  # learning rate used in each epoch
    optimizer_steps: int = 0
    skipped_steps: int = 0  # steps the gradient scaler skipped (non-finite fp16 gradients)
    cancelled: bool = False
    epochs_done: int = 0


def snapshot(tokens: BoundaryTokens) -> LearnedTokens:
    with torch.no_grad():
        prefix, suffix = tokens()
    return LearnedTokens(prefix.detach().float().cpu().clone(), suffix.detach().float().cpu().clone())


def train(tokens: BoundaryTokens, prompt_states: Sequence[torch.Tensor], evaluate: Evaluate,
          settings: IpgoSettings, grad_scaling: bool = False, device_type: str = "cpu",
          on_epoch: Callable[[int, float, float], None] | None = None,
          is_cancel: Callable[[BaseException], bool] = lambda e: False) -> TrainResult:
    """Learn `tokens` on the prompts (their unpadded encoder states, each (1, L, width)).

    `evaluate(index, conditioning, backward)` renders prompt `index` with `conditioning` (differentiable
    in the tokens), computes the per-image reward tensor r, calls `backward(r)` while everything it
    needs is still alive, and returns what should be kept for the best epoch (e.g. the images).
    Prompts are visited in order; every `accumulation` prompts (or at the end of the list) the
    optimizer steps. With one step per epoch the tokens of the best epoch are returned; with several
    (a long prompt list) the last ones, because one epoch's rewards then mix several token states.
    A cancel (an exception `is_cancel` recognises) after at least one full epoch returns what was
    kept so far instead of raising.
    """
    if not prompt_states:
        raise IpgoSettingsError("no prompts to train on")
    params = [p for p in tokens.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_step, gamma=settings.lr_gamma)
    scaler = torch.amp.GradScaler(device_type, enabled=grad_scaling)
    group = min(settings.accumulation, len(prompt_states))
    steps_per_epoch = math.ceil(len(prompt_states) / group)
    result = TrainResult()

    def step() -> None:
        scaler.unscale_(optimizer)
        finite = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)
        if not finite and not grad_scaling:
            raise FloatingPointError("the reward's gradient w.r.t. the tokens is not finite")
        if settings.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, settings.clip_norm)
        scale = scaler.get_scale() if grad_scaling else None
        scaler.step(optimizer)
        scaler.update()
        if grad_scaling and scaler.get_scale() < scale:
            result.skipped_steps += 1
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens.project_()
        result.optimizer_steps += 1

    try:
        for epoch in range(settings.epochs):
            lr = optimizer.param_groups[0]["lr"]
            state = snapshot(tokens)  # the tokens this epoch's (single-step) rewards belong to
            rewards, outputs = [], {}
            optimizer.zero_grad(set_to_none=True)
            for index, states in enumerate(prompt_states):
                prefix, suffix = tokens()
                conditioning = inject(states, prefix, suffix)
                seen: list[float] = []

                def backward(reward: torch.Tensor, states=states, conditioning=conditioning, seen=seen) -> None:
                    penalty = conformity(conditioning, states).mean()
                    loss = (-reward.float().mean() + settings.conformity_weight * penalty) / group
                    scaler.scale(loss).backward()
                    seen.append(float(reward.detach().float().mean()))

                outputs[index] = evaluate(index, conditioning, backward)
                if len(seen) != 1:
                    raise RuntimeError("evaluate must call backward(reward) exactly once")
                rewards.append(seen[0])
                if (index + 1) % group == 0 or index + 1 == len(prompt_states):
                    step()
            mean = sum(rewards) / len(rewards)
            result.curve.append(mean)
            result.lrs.append(lr)
            result.epochs_done = epoch + 1
            if steps_per_epoch == 1 and settings.keep_best:
                if mean > result.best_reward:
                    result.best_reward, result.best_epoch = mean, epoch
                    result.tokens, result.best_outputs = state, outputs
            else:
                result.best_reward, result.best_epoch = mean, epoch
                result.tokens, result.best_outputs = (snapshot(tokens) if steps_per_epoch > 1 else state), outputs
            if on_epoch is not None:
                on_epoch(epoch, mean, lr)
    except BaseException as error:
        if not is_cancel(error) or result.tokens is None:
            raise
        result.cancelled = True
    return result

