"""DateGuider: ComfyUI's CFGGuider with DATE updates of the positive text embedding at scheduled steps.

Works with every SAMPLER and SIGMAS: a step is recognised by its starting sigma in
`transformer_options["sample_sigmas"]`; each scheduled step updates once, so the extra model calls of
second-order or SDE samplers (at sigmas in between, or at the next step's sigma) never add updates.
(For Heun-type samplers the update of step i + 1 happens at the first call at sigma[i + 1], which is
step i's corrector evaluation on the predicted state.)
The VAE and reward ride along as additional models of a cloned ModelPatcher, so ComfyUI loads them
with the diffusion model (and may offload them afterwards) through its memory manager.
"""
from __future__ import annotations

import logging
import math
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import comfy.conds
import comfy.model_management as mm
import comfy.samplers

from ..core.autograd_weights import autograd_ready
from ..core.date import DateSettings, UpdateRecord, UpdateSchedule, date_update, pixels_from_decoder
from .comfy_reward import ComfyReward

ADDITIONAL_MODELS_KEY = "prompt_optim_date"
log = logging.getLogger("prompt_optim.date")


class DateGuiderError(ValueError):
    pass


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


def _progress_text(text: str) -> None:
    """Show text under the executing node in the UI (ComfyUI's progress-text channel), if a server runs."""
    try:
        from comfy_execution.utils import get_executing_context
        from server import PromptServer

        context = get_executing_context()
        if context is not None and getattr(PromptServer, "instance", None) is not None:
            PromptServer.instance.send_progress_text(text, context.node_id)
    except Exception:  # the UI text is a courtesy; sampling must not fail for it
        pass


class DateGuider(comfy.samplers.CFGGuider):
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
    def sample(self, *args, **kwargs):
        self.last_run = DateRun()
        self._current = None
        self._sigmas_key = None
        self._done: set[int] = set()
        result = super().sample(*args, **kwargs)
        self.last_run.final = None if self._current is None else self._current.detach().cpu()
        return result

    def _plan(self, model_options) -> list[float]:
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        if sigmas is None:
            raise DateGuiderError("the sampler did not expose its sigma schedule (transformer_options.sample_sigmas).")
        values = [float(s) for s in sigmas]
        if values != self._sigmas_key:
            self._sigmas_key = values
            self.last_run.planned = self.schedule.steps(values)
        return values

    @staticmethod
    def _step_index(sigma: float, sigmas: list[float]) -> int | None:
        for i, s in enumerate(sigmas[:-1]):
            if abs(s - sigma) <= 1e-5 * max(abs(s), 1e-8):
                return i
        return None

    # -- conditioning ----------------------------------------------------------------------------
    def _positive_entry(self) -> dict:
        positive = self.conds.get("positive") or []
        if len(positive) != 1:
            raise DateGuiderError(
                f"DATE updates one positive conditioning; this one has {len(positive)} entries (from "
                "Conditioning Combine, area or timestep ranges). Use a single text encode as positive.")
        entry = positive[0]
        if "c_crossattn" not in entry.get("model_conds", {}):
            raise DateGuiderError("this model family does not take its text as cross-attention tokens; "
                                  "DATE supports SD1.x, SD2.x and SDXL.")
        return entry

    def _reference(self, batch: int) -> torch.Tensor:
        cond = self._positive_entry()["model_conds"]["c_crossattn"].cond
        if cond.shape[0] not in (1, batch):
            raise DateGuiderError(f"the positive conditioning has batch {cond.shape[0]}, the latent {batch}.")
        with torch.inference_mode(False):
            return cond.detach().clone().expand(batch, *cond.shape[1:]).clone()

    def _positive_with(self, c: torch.Tensor, clone_rest: bool = False) -> list[dict]:
        """The positive entry with `c` as its tokens; `clone_rest` re-creates its other inputs (e.g. SDXL's
        pooled/size vector) as ordinary tensors, which autograd may need to save."""
        entry = self._positive_entry()
        model_conds = dict(entry["model_conds"])
        if clone_rest:
            for key, value in model_conds.items():
                if isinstance(getattr(value, "cond", None), torch.Tensor):
                    model_conds[key] = value._copy_with(value.cond.clone())
        model_conds["c_crossattn"] = comfy.conds.CONDCrossAttn(c)
        return [dict(entry, model_conds=model_conds)]

    # -- prediction ------------------------------------------------------------------------------
    def predict_noise(self, x, timestep, model_options={}, seed=None):
        sigmas = self._plan(model_options)
        if self._current is None:
            self._ref = self._reference(x.shape[0])
            self._current = self._ref
            self.last_run.reference = self._ref.cpu()
        step = self._step_index(float(timestep.reshape(-1)[0]), sigmas)
        if step is not None and step in self.last_run.planned and step not in self._done:
            self._done.add(step)
            return self._update_then_predict(x, timestep, model_options, seed, step)
        positive = self._positive_with(self._current)
        return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get("negative"), positive,
                                                self.cfg, model_options=model_options, seed=seed)

    def _combine(self, x, timestep, cond_pred, uncond_pred, positive, uncond, model_options):
        """Guidance exactly as comfy.samplers.sampling_function applies it (pre-CFG hooks, cfg, post-CFG)."""
        out = [cond_pred, uncond_pred]
        for fn in model_options.get("sampler_pre_cfg_function", []):
            out = fn({"conds": [positive, uncond], "conds_out": out, "cond_scale": self.cfg, "timestep": timestep,
                      "input": x, "sigma": timestep, "model": self.inner_model, "model_options": model_options})
        return comfy.samplers.cfg_function(self.inner_model, out[0], out[1], self.cfg, x, timestep,
                                           model_options=model_options, cond=positive, uncond=uncond)

    def _decode(self, x0: torch.Tensor) -> torch.Tensor:
        latent = self.inner_model.process_latent_out(x0)
        if self.decode_scale != 1.0:
            latent = F.interpolate(latent, scale_factor=self.decode_scale, mode="bilinear", align_corners=False)
        vae_model = self.vae.first_stage_model
        device = next(vae_model.parameters()).device
        decoded = vae_model.decode(latent.to(device, self.vae.vae_dtype))
        if decoded.ndim != 4:
            raise DateGuiderError(f"the VAE decodes to {decoded.ndim}-D output; DATE needs images (B, C, H, W).")
        return pixels_from_decoder(decoded)

    def _update_then_predict(self, x, timestep, model_options, seed, step):
        cfg1 = math.isclose(self.cfg, 1.0) and not model_options.get("disable_cfg1_optimization", False)
        uncond = None if cfg1 else self.conds.get("negative")
        if uncond is None:  # what calc_cond_batch returns for a skipped branch
            uncond_pred = torch.zeros_like(x)
        else:  # once, without gradient, as in the paper
            uncond_pred = comfy.samplers.calc_cond_batch(self.inner_model, [uncond], x, timestep, model_options)[0]
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
                positive = self._positive_with(c, clone_rest=True)
                with torch.enable_grad():
                    cond_pred = comfy.samplers.calc_cond_batch(self.inner_model, [positive], x_, t_, model_options)[0]
                    guided = self._combine(x_, t_, cond_pred, uncond_, positive, uncond, model_options)
                    images = self._decode(guided)
                    self.last_run.reward_evaluations += 1
                    return reward_model(images.to(reward_device), prompts)

            new, records = date_update(self._ref, self._current, objective, self.settings)
        self._current = new
        sigma = float(timestep.reshape(-1)[0])
        self.last_run.updates.append((step, sigma, records))
        text = f"DATE step {step}: {self.reward.label} " + " -> ".join(f"{r.rewards.mean():.5g}" for r in records)
        log.info(text)
        _progress_text(text)

        positive = self._positive_with(self._current)  # the step itself is taken with the new embedding
        cond_pred = comfy.samplers.calc_cond_batch(self.inner_model, [positive], x, timestep, model_options)[0]
        return self._combine(x, timestep, cond_pred, uncond_pred, positive, uncond, model_options)
