"""DateGuider: ComfyUI's CFGGuider with DATE updates of the positive text embedding at scheduled steps.

Step detection (any SAMPLER and SIGMAS, one update per scheduled step) comes from SteppedGuider.
The VAE and reward ride along as additional models of a cloned ModelPatcher, so ComfyUI loads them
with the diffusion model (and may offload them afterwards) through its memory manager.
"""
from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

import comfy.model_management as mm
import comfy.samplers

from ...core.date.update import DateSettings, UpdateRecord, UpdateSchedule, date_update
from ...core.shared.autograd_weights import autograd_ready
from ..comfy.reward import ComfyReward
from ..comfy.step_guider import GuiderError, SteppedGuider, progress_text
from ..comfy.vae_pixels import decode_pixels

ADDITIONAL_MODELS_KEY = "prompt_optim_date"
log = logging.getLogger("prompt_optim.date")
DateGuiderError = GuiderError

@dataclass
class DateRun:
    """What one sampling run did: the planned steps, one entry per update, the final embedding."""

    planned: list[int] = field(default_factory=list)
    updates: list[tuple[int, float, list[UpdateRecord]]] = field(default_factory=list)  # (step, sigma, records)
    reward_evaluations: int = 0
    reference: torch.Tensor | None = None
    final: torch.Tensor | None = None

    def report(self, label: str) -> str:
        if not self.updates:
            return f"DATE: no update step in this schedule (planned {self.planned})."
        lines = [f"DATE with {label}: {len(self.updates)} updates at steps {[u[0] for u in self.updates]}"]
        for step, sigma, records in self.updates:
            rewards = ", ".join(f"{r.rewards.mean():.5g}" for r in records)
            lines.append(f"step {step} (sigma {sigma:.3f}): mean reward {rewards}")
        return "\n".join(lines)


class DateGuider(SteppedGuider):
    method = "DATE"

    def __init__(self, model_patcher, cfg: float, settings: DateSettings, schedule: UpdateSchedule,
                 reward: ComfyReward, vae, reward_prompt: str, decode_scale: float = 1.0):
        model_patcher = model_patcher.clone()
        model_patcher.set_additional_models(ADDITIONAL_MODELS_KEY, [vae.patcher, *reward.patchers])
        super().__init__(model_patcher)
        self.set_cfg(cfg)
        self.settings, self.schedule = settings, schedule
        self.reward, self.vae, self.reward_prompt = reward, vae, reward_prompt
        self.decode_scale = decode_scale
        self.last_run = DateRun()

    # -- one run ---------------------------------------------------------------------------------
    def begin_run(self):
        self.last_run = DateRun()
        self._current = None

    def end_run(self):
        self.last_run.final = None if self._current is None else self._current.detach().cpu()

    def planned_steps(self, sigmas: list[float]) -> list[int]:
        self.last_run.planned = self.schedule.steps(sigmas)
        return self.last_run.planned

    def _ensure_reference(self, batch: int) -> None:
        if self._current is not None:
            return
        cond = self.positive_entry()["model_conds"]["c_crossattn"].cond
        if cond.shape[0] not in (1, batch):
            raise DateGuiderError(f"the positive conditioning has batch {cond.shape[0]}, the latent {batch}.")
        with torch.inference_mode(False):
            self._ref = cond.detach().clone().expand(batch, *cond.shape[1:]).clone()
        self._current = self._ref
        self.last_run.reference = self._ref.cpu()

    def positive_between(self):
        return None if self._current is None else self.positive_with(self._current)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        self._ensure_reference(x.shape[0])
        return super().predict_noise(x, timestep, model_options, seed)

    # -- an update step --------------------------------------------------------------------------
    def _decode(self, x0: torch.Tensor) -> torch.Tensor:
        try:
            return decode_pixels(self.vae, self.inner_model, x0, self.decode_scale)
        except ValueError as e:
            raise DateGuiderError(f"{e} (DATE)") from None

    def scheduled_step(self, x, timestep, model_options, seed, step, sigmas):
        uncond, uncond_pred = self.uncond_prediction(x, timestep, model_options)  # once, without gradient
        reward_model = self.reward.reward
        prompts = [self.reward_prompt] * x.shape[0]

        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            for module in (self.inner_model, self.vae.first_stage_model, reward_model):
                stack.enter_context(autograd_ready(module))
            # sampler-side tensors were made under inference mode; autograd may need to save them
            x_, t_, uncond_ = x.clone(), timestep.clone(), uncond_pred.clone()
            reward_device = next(reward_model.parameters()).device

            def objective(c: torch.Tensor) -> torch.Tensor:
                mm.throw_exception_if_processing_interrupted()
                positive = self.positive_with(c, clone_rest=True)
                with torch.enable_grad():
                    cond_pred = comfy.samplers.calc_cond_batch(self.inner_model, [positive], x_, t_, model_options)[0]
                    guided = self.combine(x_, t_, cond_pred, uncond_, positive, uncond, model_options)
                    images = self._decode(guided)
                    self.last_run.reward_evaluations += 1
                    return reward_model(images.to(reward_device), prompts)

            new, records = date_update(self._ref, self._current, objective, self.settings)
        self._current = new
        sigma = float(timestep.reshape(-1)[0])
        self.last_run.updates.append((step, sigma, records))
        text = f"DATE step {step}: {self.reward.label} " + " -> ".join(f"{r.rewards.mean():.5g}" for r in records)
        log.info(text)
        progress_text(text)
        # the step itself is taken with the new embedding
        return self.guided(x, timestep, model_options, self.positive_with(self._current), uncond, uncond_pred)
