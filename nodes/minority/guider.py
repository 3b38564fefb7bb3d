"""MinorityPrompt as a step method: a placeholder token in the positive, optimized toward minority samples.

At each scheduled step (StepOptimizerGuider: any sampler and sigmas) the placeholder's input embedding
takes K Adam steps of core.minority.optimize_step, re-encoding the prompt through the user's CLIP on
every iteration; the step itself is then taken with plain CFG and the optimized conditioning. The CLIP
is the method's additional model, so ComfyUI loads it with the diffusion model and can offload both
afterwards; the user's model, CLIP and conditioning are not changed (the weights are re-viewed for
autograd, not copied, and only during an optimized step). With target
"whole_embedding" (the paper's ablation) the prompt's encoder output itself is optimized and the CLIP
is not re-run.
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable

import torch

import comfy.model_management as mm
import comfy.utils

from ...core.minority.optimize import (MinoritySettings, StepResult, optimize_step, whole_embedding_encoder,
                                       whole_embedding_start)
from ...core.shared.conditioning import TextConditioning
from ...core.shared.text_encoder import LearnableTokens
from ..comfy.denoiser import ComfyDenoiser
from ..comfy.step_guider import GuiderError, ScheduledStep, StepMethod, StepOptimizerGuider, progress_text
from ..comfy.text_encoder import ComfyTextEncoder
from .placeholder_token import SPEC_KEY, LearnedToken, PlaceholderSpec


@dataclass
class MinorityRun:
    planned: list[int] = field(default_factory=list)
    steps: list[tuple[int, float, StepResult]] = field(default_factory=list)  # (step, sigma, result)
    token: LearnedToken | None = None
    conditioning: TextConditioning | None = None  # the last optimized conditioning (batch)

    def report(self) -> str:
        if not self.steps:
            return f"MinorityPrompt: no optimized step in this schedule (planned {self.planned})."
        lines = [f"MinorityPrompt: {len(self.steps)} optimized steps {[s[0] for s in self.steps]}"]
        for step, sigma, result in self.steps:
            first, last = result.objectives[0], result.objectives[-1]
            lines.append(f"step {step} (sigma {sigma:.3f}, re-noise sigma {result.renoise_sigma:.3f}): "
                         f"objective {first:.5g} -> {last:.5g} over {len(result.objectives)} iterations")
            if result.before is not None:
                lines.append(f"  same noise before/after: {result.before.mean():.5g} -> {result.after.mean():.5g}")
        return "\n".join(lines)


def spec_of(positive) -> PlaceholderSpec | None:
    specs = [entry[1].get(SPEC_KEY) for entry in positive if entry[1].get(SPEC_KEY) is not None]
    return specs[0] if specs else None


class MinorityStep(StepMethod):
    name = "MinorityPrompt"
    additional_models_key = "prompt_optim_minority"

    def __init__(self, settings: MinoritySettings, spec: PlaceholderSpec, per_image: bool = True,
                 probe: bool = False, concatenated: torch.Tensor | None = None, node: str = "MinorityPrompt"):
        self.settings, self.spec, self.per_image, self.probe = settings, spec, per_image, probe
        self.node = node
        self.concatenated = concatenated  # tokens Conditioning Concat appended after the encode node
        self.on_iteration: Callable[[int, int, float], None] | None = None  # (step, k, objective), e.g. a bar
        self.run = MinorityRun()

    def additional_models(self) -> list:
        return [self.spec.clip.patcher]

    def begin_run(self):
        self.run = MinorityRun()
        self._tokens = None
        self._kept_positive = None

    @property
    def whole_embedding(self) -> bool:
        return self.settings.target == "whole_embedding"

    def end_run(self):
        if self._tokens is not None and not self.whole_embedding:  # the ablation has no token to save
            self.run.token = LearnedToken({k: v.cpu() for k, v in self._tokens.items()},
                                          self.spec.position, self.spec.text)

    def planned_steps(self, sigmas: list[float]) -> list[int]:
        self.run.planned = self.settings.steps(len(sigmas) - 1)
        return self.run.planned

    def positive_between(self, guider):
        return self._kept_positive if self.settings.between_steps == "keep" else None

    # -- an optimized step -----------------------------------------------------------------------
    def _encoder_batch(self, encoder: ComfyTextEncoder, tokens, batch: int) -> TextConditioning:
        parts = []
        rows = next(iter(tokens.values())).shape[0]
        for i in range(rows):
            learnable = LearnableTokens({k: v[i:i + 1] for k, v in tokens.items()}, self.spec.position)
            parts.append(encoder.encode(self.spec.text, learnable))
        cross = torch.cat([p.cross_attn for p in parts])
        if self.concatenated is not None:  # re-encoding replaces the encode node's tokens, not what follows them
            tail = self.concatenated.to(cross.device, cross.dtype)
            cross = torch.cat([cross, tail.expand(cross.shape[0], *tail.shape[1:])], dim=1)
        pooled = None if parts[0].pooled is None else torch.cat([p.pooled for p in parts])
        if rows != batch:  # one shared token
            cross = cross.expand(batch, *cross.shape[1:])
            pooled = None if pooled is None else pooled.expand(batch, *pooled.shape[1:])
        return TextConditioning(cross, pooled)

    @staticmethod
    def _noise(seed, step: int, like: torch.Tensor):
        base = 0 if seed is None else int(seed)

        def draw(k: int) -> torch.Tensor:
            generator = torch.Generator().manual_seed((base * 1_000_003 + step * 1009 + k) % (2**63))
            return torch.randn(like.shape, generator=generator).to(like.device, like.dtype)
        return draw

    def _iteration_hook(self, step: int):
        bar = comfy.utils.ProgressBar(self.settings.iterations) if self.on_iteration is None else None

        def after(k: int, objective: float) -> None:
            if bar is not None:
                bar.update_absolute(k + 1, self.settings.iterations)
            else:
                self.on_iteration(step, k, objective)
            progress_text(f"MinorityPrompt step {step}: iteration {k + 1}/{self.settings.iterations}, "
                          f"objective {objective:.5g}")
        return after

    def optimize(self, at: ScheduledStep):
        guider, x = at.guider, at.x
        entry = guider.positive_entry()
        batch = x.shape[0]
        with ExitStack() as stack:
            encoder = None if self.whole_embedding else stack.enter_context(ComfyTextEncoder(self.spec.clip))
            # sampler-side tensors were made under inference mode; autograd may need to save them
            x_ = x.clone()
            pooled = entry.get("pooled_output")
            original = TextConditioning(entry["cross_attn"].clone(), None if pooled is None else pooled.clone())
            if original.cross_attn.shape[0] not in (1, batch):
                raise GuiderError(f"the positive conditioning has batch {original.cross_attn.shape[0]}, "
                                  f"the latent {batch}.")
            denoiser = ComfyDenoiser(guider.inner_model, [dict(entry)], at.model_options)
            rows = batch if self.per_image else 1
            if self.whole_embedding:
                encode = whole_embedding_encoder(original, batch)
                if self._tokens is None:
                    self._tokens = whole_embedding_start(original, rows)
            else:
                def encode(t):
                    return self._encoder_batch(encoder, t, batch)
                if self._tokens is None:
                    self._tokens = self.spec.start_tokens(encoder, rows)
            start = {k: v.to(x.device) for k, v in self._tokens.items()}
            result = optimize_step(
                denoiser, encode, original, x_, at.sigma, float(at.sigmas[at.step + 1]), start,
                self.settings, self._noise(at.seed, at.step, x_), probe=self.probe,
                before_iteration=lambda k: mm.throw_exception_if_processing_interrupted(),
                after_iteration=self._iteration_hook(at.step))
            self._tokens = result.tokens
            with torch.no_grad():
                current = encode(result.tokens)
                current = TextConditioning(current.cross_attn.detach().clone(),
                                           None if current.pooled is None else current.pooled.detach().clone())
        self.run.steps.append((at.step, at.sigma, result))
        self.run.conditioning = current
        self._kept_positive = denoiser.conds_with_text(current, x)
        status = (f"MinorityPrompt: optimized step {at.step}, objective {result.objectives[0]:.5g} -> "
                  f"{result.objectives[-1]:.5g} over {len(result.objectives)} iterations")
        return self._kept_positive, status


def minority_guider(model_patcher, cfg: float, settings: MinoritySettings, spec: PlaceholderSpec,
                    per_image: bool = True, probe: bool = False,
                    concatenated: torch.Tensor | None = None, node: str = "MinorityPrompt") -> StepOptimizerGuider:
    return StepOptimizerGuider(model_patcher, cfg, MinorityStep(settings, spec, per_image, probe, concatenated, node))
