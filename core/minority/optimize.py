"""MinorityPrompt (Um & Ye, CVPR 2025): reach low-likelihood samples by optimizing one appended token.

At an optimized step, the input embedding v of a placeholder token spliced into the prompt takes K
Adam steps that *maximize* a reconstruction error, a proxy of -log p(x0 | prompt):

    x0_t = D(x_t, sigma_t, C_v)             the denoised estimate under the prompt with the token
    z_s  = renoise(x0_t, sigma_s, noise)    fresh noise every iteration, x0_t not detached
    x0_s = D(z_s, sigma_s, C)               under the ORIGINAL prompt C
    J    = ||sg(x0_t) - x0_s||^2 + lambda * ||x0_t - sg(x0_s)||^2    (sg = stop-gradient)

Defaults are the authors' released code, which produced the paper's tables; where the paper's text reads
differently it is an option: plain L2 norms (paper text: squared, `norm`), the optimized token kept for
all later steps (paper text: the plain prompt on steps not optimized, `between_steps`), and the annealed
re-noise level s = T - t_next, the NEXT step's level (code: `1000 - (t - Delta + 1)`; paper text:
s = T - t, `anneal_level="this_step"`), read through the sampler's own sigma list and the model's
schedule, so any sampler, scheduler and partial denoise works and a step that starts at t = T still
re-noises to a real level. Without annealing s is fixed.
Adam restarts at every optimized step; the token carries over as the next step's starting point.
The paper's ablation `target="whole_embedding"` optimizes the prompt's whole encoder output C instead
(`whole_embedding_start` / `whole_embedding_encoder`): the same objective, without the token's guard
on the prompt's meaning.
Nothing here knows ComfyUI: the denoiser is a core.Denoiser and `encode` maps tokens to conditioning.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.utils.checkpoint

from ..shared.conditioning import TextConditioning
from ..shared.denoiser import Denoiser
from ..shared.settings_error import SettingsError

NORMS = ("squared", "plain")
BETWEEN_STEPS = ("original", "keep")
ANNEAL_LEVELS = ("next_step", "this_step")  # authors' code, paper text
INITS = ("word", "random_vocabulary", "gaussian", "gaussian_diagonal")
TARGETS = ("appended_token", "whole_embedding")  # what is optimized: the paper's method, its ablation

Tokens = Mapping[str, torch.Tensor]  # encoder key -> (count, width) input embeddings


class MinoritySettingsError(SettingsError):
    pass


@dataclass(frozen=True)
class MinoritySettings:
    """Defaults are the authors' released code (SD1.5 / SD2, 50-step DDIM); the paper's text in comments."""

    iterations: int = 10  # K Adam steps per optimized sampling step
    lr: float = 0.01
    sg_lambda: float = 1.0  # weight of the term whose gradient flows through x0_t directly
    norm: str = "plain"  # the authors' code; "squared" = the paper's text
    anneal: bool = True  # s from the schedule (anneal_level); off: s = fixed_level * T
    anneal_level: str = "next_step"  # s = T - t_next (the code); "this_step": s = T - t (the paper's text)
    fixed_level: float = 0.75
    fraction: float = 0.1  # optimize within the first 10% of the steps ...
    every: int = 1  # ... every N-th of them
    between_steps: str = "keep"  # the code: later steps keep the token; "original" = the paper's text
    diversity: float = 0.0  # per-image tokens only: reward pairwise distance of the x0 estimates
    checkpointing: bool = False  # recompute denoiser activations in backward (less memory, slower)
    target: str = "appended_token"  # "whole_embedding": the paper's ablation (optimize all of C)

    def __post_init__(self):
        def bad(name, why):
            raise MinoritySettingsError(f"{name} {why}, got {getattr(self, name)!r}", name)

        for name in ("lr", "sg_lambda", "fixed_level", "fraction", "diversity"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                bad(name, "must be a finite number >= 0")
        if not isinstance(self.iterations, int) or self.iterations < 1:
            bad("iterations", "must be a whole number >= 1")
        if not isinstance(self.every, int) or self.every < 1:
            bad("every", "must be a whole number >= 1")
        if self.lr <= 0:
            bad("lr", "must be > 0")
        if self.fraction > 1 or self.fixed_level > 1:
            bad("fraction" if self.fraction > 1 else "fixed_level", "must be at most 1")
        if self.norm not in NORMS:
            bad("norm", f"must be one of {NORMS}")
        if self.between_steps not in BETWEEN_STEPS:
            bad("between_steps", f"must be one of {BETWEEN_STEPS}")
        if self.anneal_level not in ANNEAL_LEVELS:
            bad("anneal_level", f"must be one of {ANNEAL_LEVELS}")
        if self.target not in TARGETS:
            bad("target", f"must be one of {TARGETS}")

    def steps(self, n_steps: int) -> list[int]:
        """Optimized step indices of an n-step schedule (step 0 is the noisiest).

        The authors optimize where t > 0.9 T, i.e. the first 10% of DDIM's evenly spaced steps; by
        step count this holds for any sigma spacing.
        """
        first = math.ceil(self.fraction * n_steps - 1e-9)
        return [i for i in range(min(first, n_steps)) if i % self.every == 0]

    def renoise_fraction(self, fraction_t: float, fraction_next: float) -> float:
        """Re-noise level s/T for a step from t/T = `fraction_t` to t_next/T = `fraction_next`."""
        if not self.anneal:
            return self.fixed_level
        level = 1.0 - (fraction_next if self.anneal_level == "next_step" else fraction_t)
        return min(max(level, 0.0), 1.0)


def _distance(difference: torch.Tensor, norm: str) -> torch.Tensor:
    # float64: J is a large sum whose change per iteration can be far below float32's resolution
    squared = difference.flatten(1).double().pow(2).sum(dim=1)
    return squared if norm == "squared" else squared.sqrt()


def split_objective(x0_t: torch.Tensor, x0_s: torch.Tensor, settings: MinoritySettings) -> torch.Tensor:
    """Per-sample J with the stop-gradient split: the first term's gradient reaches the token only
    through the re-noised branch, the second's only through x0_t."""
    return (_distance(x0_t.detach() - x0_s, settings.norm)
            + settings.sg_lambda * _distance(x0_t - x0_s.detach(), settings.norm))


def pairwise_diversity(x0: torch.Tensor) -> torch.Tensor:
    """Mean L2 distance between the samples' estimates over ordered pairs i != j (0 for one sample)."""
    b = x0.shape[0]
    if b < 2:
        return x0.new_zeros(())
    flat = x0.flatten(1).float()
    distances = torch.cdist(flat, flat)
    return distances.sum() / (b * (b - 1))


@dataclass
class StepResult:
    tokens: dict[str, torch.Tensor]  # final tokens (detached)
    objectives: list[float] = field(default_factory=list)  # mean J at each iteration's starting point
    predicted_gains: list[float] = field(default_factory=list)  # first order: <dJ_total/dv, v_new - v_old>
    before: torch.Tensor | None = None  # per-sample J at the starting tokens, mean over the K draws
    after: torch.Tensor | None = None  # ... and at the final tokens, on the same draws
    renoise_sigma: float = 0.0


def optimize_step(denoiser: Denoiser, encode: Callable[[Tokens], TextConditioning], original: TextConditioning,
                  x: torch.Tensor, sigma: float, sigma_next: float, start: Tokens, settings: MinoritySettings,
                  noise: Callable[[int], torch.Tensor], probe: bool = False,
                  before_iteration: Callable[[int], None] | None = None,
                  after_iteration: Callable[[int, float], None] | None = None) -> StepResult:
    """K Adam iterations of the token(s) at one sampling step (x = the sampler's state at `sigma`; the
    sampler's next sigma is `sigma_next`, 0 at the last step).

    `encode(tokens)` returns the batch's conditioning with the tokens spliced in (differentiable);
    `noise(k)` the re-noise draw of iteration k. With `probe`, J is also measured (without gradient)
    at the starting and at the final tokens, averaged over the same K draws the iterations used, so the
    gain is measured on the same noise (2K extra evaluations).
    """
    fraction_next = denoiser.fraction_of(sigma_next) if sigma_next > 0 else 0.0
    sigma_s = denoiser.sigma_at(settings.renoise_fraction(denoiser.fraction_of(sigma), fraction_next))
    x = x.detach()
    original = TextConditioning(original.cross_attn.detach(),
                                None if original.pooled is None else original.pooled.detach())

    def predict(latent, level, cond):
        if not settings.checkpointing or not torch.is_grad_enabled():
            return denoiser.predict_x0(latent, level, cond)
        return torch.utils.checkpoint.checkpoint(
            lambda a, c, p: denoiser.predict_x0(a, level, TextConditioning(c, p)),
            latent, cond.cross_attn, cond.pooled, use_reentrant=False)

    def evaluate(cond, eps):
        x0_t = predict(x, sigma, cond)
        x0_s = predict(denoiser.renoise(x0_t, sigma_s, eps), sigma_s, original)
        return split_objective(x0_t, x0_s, settings), x0_t

    def probe_mean(tokens):
        with torch.no_grad():
            cond = encode(tokens)  # the same tokens for every draw: encode once
            return torch.stack([evaluate(cond, noise(k))[0] for k in range(settings.iterations)]).mean(dim=0)

    params = {k: v.detach().float().clone().requires_grad_(True) for k, v in start.items()}
    result = StepResult(tokens={}, renoise_sigma=float(sigma_s))
    if probe:
        result.before = probe_mean(params)
    optimizer = torch.optim.Adam(list(params.values()), lr=settings.lr)
    with torch.enable_grad():
        for k in range(settings.iterations):
            if before_iteration is not None:
                before_iteration(k)
            objective, x0_t = evaluate(encode(params), noise(k))
            total = objective.sum()
            if settings.diversity > 0:
                total = total + settings.diversity * pairwise_diversity(x0_t)
            optimizer.zero_grad(set_to_none=True)
            (-total).backward()  # gradient ascent on J
            for name, p in params.items():
                if p.grad is None or not torch.isfinite(p.grad).all():
                    raise FloatingPointError(
                        f"the placeholder's gradient (text encoder {name}) is not finite at sigma {sigma:.4g}: the "
                        "model's prediction overflowed or the state was not finite; try fp32 weights or a lower lr")
            old = {name: p.detach().clone() for name, p in params.items()}
            optimizer.step()
            result.predicted_gains.append(sum(float((-p.grad.double() * (p.detach() - old[name]).double()).sum())
                                              for name, p in params.items()))
            result.objectives.append(float(objective.detach().mean()))
            if after_iteration is not None:
                after_iteration(k, result.objectives[-1])
    result.tokens = {k: p.detach() for k, p in params.items()}
    if probe:
        result.after = probe_mean(result.tokens)
    return result


# -- the whole-embedding ablation ------------------------------------------------------------------
WHOLE_EMBEDDING_KEY = "cross_attn"


def whole_embedding_start(original: TextConditioning, rows: int) -> Tokens:
    """Starting point of the ablation: the prompt's own encoder output, one copy per row (1 = shared)."""
    cross = original.cross_attn.detach().float()
    if cross.shape[0] != rows:
        cross = cross[:1].expand(rows, *cross.shape[1:])
    return {WHOLE_EMBEDDING_KEY: cross.clone()}


def whole_embedding_encoder(original: TextConditioning, batch: int) -> Callable[[Tokens], TextConditioning]:
    """`encode` for optimize_step when C itself is optimized: the tensor is the conditioning (a pooled
    output, SDXL's, stays the prompt's; only the cross-attention sequence is optimized)."""
    def encode(tokens: Tokens) -> TextConditioning:
        cross = tokens[WHOLE_EMBEDDING_KEY]
        if cross.shape[0] != batch:
            cross = cross.expand(batch, *cross.shape[1:])
        pooled = original.pooled
        if pooled is not None and pooled.shape[0] != batch:
            pooled = pooled[:1].expand(batch, *pooled.shape[1:])
        return TextConditioning(cross.to(original.cross_attn.dtype), pooled)
    return encode


# -- initialization --------------------------------------------------------------------------------
def initial_tokens(vocabulary: torch.Tensor, kind: str, count: int, generator: torch.Generator,
                   word: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
    """(count, width) starting embeddings from one encoder's (vocab, width) input-embedding table.

    word: copies of `word` (1, width). random_vocabulary: the table's `rows` (draw them once and pass
    the same rows to every encoder of a model, so SDXL's two halves start from the same word).
    gaussian / gaussian_diagonal: draws from a normal fitted to the table (full / diagonal covariance).
    """
    table = vocabulary.detach().double()
    if kind == "word":
        if word is None or word.ndim != 2 or word.shape[0] != 1:
            raise MinoritySettingsError("init 'word' needs exactly one token's embedding")
        return word.detach().float().expand(count, -1).clone()
    if kind == "random_vocabulary":
        if rows is None:
            rows = torch.randint(0, table.shape[0], (count,), generator=generator)
        return table[rows].float().clone()
    if kind not in INITS:
        raise MinoritySettingsError(f"init must be one of {INITS}, got {kind!r}")
    mean = table.mean(dim=0)
    z = torch.randn(count, table.shape[1], generator=generator, dtype=torch.float64)
    centered = table - mean
    if kind == "gaussian_diagonal":
        return (mean + z * centered.pow(2).mean(dim=0).sqrt()).float()
    covariance = centered.T @ centered / table.shape[0]
    jitter = 1e-8 * covariance.diagonal().mean()
    factor = torch.linalg.cholesky(covariance + jitter * torch.eye(table.shape[1], dtype=torch.float64))
    return (mean + z @ factor.T).float()
