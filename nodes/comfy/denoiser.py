"""core.Denoiser over a ComfyUI model, through the same code path the samplers use.

Predictions go through comfy.samplers.calc_cond_batch with conditioning prepared by ComfyUI itself
(process_conds / extra_conds), so model patches, wrappers, LoRA and family-specific inputs (SDXL's
pooled/size vector) apply exactly as in sampling. Only the text part is swapped for the tensors a
method differentiates.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
import comfy.model_patcher
import comfy.model_sampling
import comfy.sampler_helpers
import comfy.samplers

from ...core.shared.autograd_weights import AutogradScope
from ...core.shared.conditioning import TextConditioning
from ...core.shared.denoiser import Denoiser
from ...core.shared.prediction import PredictionType
from .recast import differentiable as differentiable_weights


def prediction_type(model_sampling) -> PredictionType:
    # Order matters: V_PREDICTION and X0 subclass EPS; EDM (a different formula) subclasses V_PREDICTION.
    ms = comfy.model_sampling
    if isinstance(model_sampling, ms.CONST):
        return PredictionType.FLOW
    if isinstance(model_sampling, ms.EDM):
        raise ValueError("EDM-parameterized models are not supported yet")
    if isinstance(model_sampling, ms.V_PREDICTION):
        return PredictionType.V
    if isinstance(model_sampling, ms.X0):
        return PredictionType.X0
    if isinstance(model_sampling, ms.EPS):
        return PredictionType.EPS
    raise ValueError(f"unsupported prediction type {type(model_sampling).__name__}")


class ComfyDenoiser(Denoiser):
    """Wraps an inner BaseModel plus its processed positive conds (as a guider holds them)."""

    def __init__(self, base_model, positive_conds: list[dict], model_options: dict):
        self.model = base_model
        self.conds = positive_conds
        self.model_options = model_options
        self.model_sampling = base_model.model_sampling
        self.prediction = prediction_type(self.model_sampling)

    def conds_with_text(self, cond: TextConditioning, x: torch.Tensor) -> list[dict]:
        entries = []
        for entry in self.conds:
            entry = dict(entry, cross_attn=cond.cross_attn)
            if cond.pooled is not None:
                entry["pooled_output"] = cond.pooled
            entries.append(entry)
        return comfy.samplers.encode_model_conds(self.model.extra_conds, entries, x, x.device, "positive")

    def predict_x0(self, x: torch.Tensor, sigma, cond: TextConditioning) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        return comfy.samplers.calc_cond_batch(self.model, [self.conds_with_text(cond, x)], x, sigma,
                                              self.model_options)[0]

    def sigma_at(self, fraction: float) -> float:
        if fraction >= 1.0:
            return float(self.model_sampling.sigma_max)
        if fraction <= 0.0:
            return float(self.model_sampling.sigma_min)
        return float(self.model_sampling.percent_to_sigma(1.0 - fraction))

    def fraction_of(self, sigma: float) -> float:
        ts = self.model_sampling.timestep
        top = float(ts(torch.tensor([float(self.model_sampling.sigma_max)])))
        return float(ts(torch.tensor([float(sigma)]))) / top


@contextmanager
def prepared_denoiser(model_patcher, positive, latent: torch.Tensor, differentiable: bool = True):
    """Load the model as a sampler would and yield (ComfyDenoiser, AutogradScope) outside of sampling.

    With `differentiable`, the model's inference-mode weights are replaced by ordinary views of the same
    memory for the block and restored afterwards; the scope reports what was shared and what (tensor
    subclasses only) had to be copied.
    """
    model_options = comfy.model_patcher.create_model_options_clone(model_patcher.model_options)
    conds = {"positive": comfy.sampler_helpers.convert_cond(positive)}
    comfy.sampler_helpers.prepare_model_patcher(model_patcher, conds, model_options)
    inner, conds, loaded = comfy.sampler_helpers.prepare_sampling(model_patcher, latent.shape, conds, model_options)
    device = model_patcher.load_device
    try:
        conds = comfy.samplers.process_conds(inner, latent.to(device), conds, device)
        model_patcher.pre_run()
        try:
            with (differentiable_weights(inner) if differentiable else nullcontext(AutogradScope())) as scope:
                yield ComfyDenoiser(inner, conds["positive"], model_options), scope
        finally:
            model_patcher.cleanup()
    finally:
        comfy.sampler_helpers.cleanup_models(conds, loaded)
        model_patcher.restore_hook_patches()
