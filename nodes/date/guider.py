"""DATE as a step method: updates of the positive text embedding at scheduled steps (StepOptimizerGuider).

The VAE and reward are the method's additional models, so ComfyUI loads them with the diffusion model
(and may offload them afterwards) through its memory manager.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

import comfy.model_management as mm
import comfy.samplers

from ...core.date.update import DateSettings, UpdateRecord, UpdateSchedule, date_update
from ..comfy.errors import NodeInputError
from ..comfy.reward import ComfyReward
from ..comfy.step_guider import GuiderError, ScheduledStep, StepMethod, StepOptimizerGuider, combine
from ..comfy.vae_pixels import decode_pixels

DateGuiderError = GuiderError


@dataclass
class DateRun:
    """What one sampling run did: the planned steps, one entry per update, the final embedding."""

    planned: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # listed steps this run does not have
    steps: int = 0
    reward_prompt: str = ""
    updates: list[tuple[int, float, list[UpdateRecord]]] = field(default_factory=list)  # (step, sigma, records)
    reward_evaluations: int = 0
    reference: torch.Tensor | None = None
    final: torch.Tensor | None = None

    def report(self, label: str) -> str:
        if not self.updates:
            return f"DATE: no update step in this schedule (planned {self.planned})."
        lines = [f"DATE with {label}: {len(self.updates)} updates at steps {[u[0] for u in self.updates]}",
                 f"reward text: {self.reward_prompt!r}"]
        if self.skipped:
            lines.append(f"listed steps {self.skipped} are beyond this run's {self.steps} steps (0-{self.steps - 1}) "
                         "and were skipped")
        for step, sigma, records in self.updates:
            rewards = ", ".join(f"{r.rewards.mean():.5g}" for r in records)
            lines.append(f"step {step} (sigma {sigma:.3f}): mean reward {rewards}")
        return "\n".join(lines)


class DateStep(StepMethod):
    name = "DATE"
    additional_models_key = "prompt_optim_date"

    def __init__(self, settings: DateSettings, schedule: UpdateSchedule, reward: ComfyReward, vae,
                 reward_prompt: str, decode_scale: float = 1.0, node: str = "DATE"):
        self.settings, self.schedule, self.node = settings, schedule, node
        self.reward, self.vae, self.reward_prompt = reward, vae, reward_prompt
        self.decode_scale = decode_scale
        self.run = DateRun()

    def additional_models(self) -> list:
        return [self.vae.patcher, *self.reward.patchers]

    # -- one run ---------------------------------------------------------------------------------
    def begin_run(self):
        self.run = DateRun(reward_prompt=self.reward_prompt)
        self._current = None

    def end_run(self):
        self.run.final = None if self._current is None else self._current.detach().cpu()

    def planned_steps(self, sigmas: list[float]) -> list[int]:
        count = len(sigmas) - 1
        self.run.planned, self.run.skipped = self.schedule.steps(sigmas), self.schedule.beyond(count)
        self.run.steps = count
        if not self.run.planned and count > 0:  # a run without a single update would look like DATE and be plain
            raise NodeInputError(self.node, "schedule_value", f"{self.schedule.kind} {self.schedule.value!r} picks no "
                                 f"step of this run: {count} steps (0-{count - 1}), sigmas {sigmas[0]:.4g} to "
                                 f"{sigmas[-2]:.4g}. Pick steps the run has.")
        return self.run.planned

    def before_prediction(self, guider, x):
        """The first call takes the prompt's token states as the reference (one row per image)."""
        if self._current is not None:
            return
        cond = guider.positive_entry()["model_conds"]["c_crossattn"].cond
        batch = x.shape[0]
        if cond.shape[0] not in (1, batch):
            raise DateGuiderError(f"the positive conditioning has batch {cond.shape[0]}, the latent {batch}.")
        with torch.inference_mode(False):
            self._ref = cond.detach().clone().expand(batch, *cond.shape[1:]).clone()
        self._current = self._ref
        self.run.reference = self._ref.cpu()

    def positive_between(self, guider):
        return None if self._current is None else guider.positive_with(self._current)

    def autograd_modules(self, guider):
        return [guider.inner_model, self.vae.first_stage_model, self.reward.reward]

    # -- an update step --------------------------------------------------------------------------
    def _decode(self, guider, x0: torch.Tensor) -> torch.Tensor:
        try:
            return decode_pixels(self.vae, guider.inner_model, x0, self.decode_scale)
        except ValueError as e:
            raise DateGuiderError(f"{e} (DATE)") from None

    def optimize(self, at: ScheduledStep):
        guider, model_options = at.guider, at.model_options
        reward_model = self.reward.reward
        prompts = [self.reward_prompt] * at.x.shape[0]
        # sampler-side tensors were made under inference mode; autograd may need to save them
        x_, t_, uncond_ = at.x.clone(), at.timestep.clone(), at.uncond_pred.clone()
        reward_device = next(reward_model.parameters()).device

        def objective(c: torch.Tensor) -> torch.Tensor:
            mm.throw_exception_if_processing_interrupted()
            positive = guider.positive_with(c, clone_rest=True)
            with torch.enable_grad():
                cond_pred = comfy.samplers.calc_cond_batch(guider.inner_model, [positive], x_, t_, model_options)[0]
                guided = combine(guider, x_, t_, cond_pred, uncond_, positive, at.uncond, model_options)
                images = self._decode(guider, guided)
                self.run.reward_evaluations += 1
                return reward_model(images.to(reward_device), prompts)

        self._current, records = date_update(self._ref, self._current, objective, self.settings)
        self.run.updates.append((at.step, at.sigma, records))
        status = f"DATE step {at.step}: {self.reward.label} " + " -> ".join(f"{r.rewards.mean():.5g}" for r in records)
        # the step itself is taken with the new embedding
        return guider.positive_with(self._current), status


def date_guider(model_patcher, cfg: float, settings: DateSettings, schedule: UpdateSchedule, reward: ComfyReward,
                vae, reward_prompt: str, decode_scale: float = 1.0, node: str = "DATE") -> StepOptimizerGuider:
    return StepOptimizerGuider(model_patcher, cfg, DateStep(settings, schedule, reward, vae, reward_prompt,
                                                            decode_scale, node))
