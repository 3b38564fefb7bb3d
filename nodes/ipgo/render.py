"""IpgoRenderer: one generation whose last K steps are differentiable in the positive's tokens.

The first steps run ComfyUI's own sampler (any SAMPLER, any scheduler) without gradient. The last K
steps are then taken by deterministic Euler steps (DDIM's update in the k-diffusion convention) with
CFG exactly as ComfyUI applies it, inside the same model loading, so the reward gradient flows through
them and the VAE decode to the tokens (the authors' truncated backpropagation: K = 2 of 50 LMS steps).
The VAE and the reward ride along as additional models of a cloned ModelPatcher, so ComfyUI loads them
with the diffusion model. The user's models are not modified: their inference-mode weights are swapped
for frozen copies only while the differentiable steps run.
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Callable

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.samplers

from ...core.shared.autograd_weights import autograd_ready
from ..comfy.reward import ComfyReward
from ..comfy.step_guider import SteppedGuider
from ..comfy.vae_pixels import decode_pixels
from .sequences import conditioning

ADDITIONAL_MODELS_KEY = "prompt_optim_ipgo"


def _ordinary_entry(entry: dict) -> dict:
    """A processed conds entry whose tensors autograd may save (ComfyUI made them under inference mode)."""
    model_conds = {k: v._copy_with(v.cond.clone()) if isinstance(getattr(v, "cond", None), torch.Tensor) else v
                   for k, v in entry["model_conds"].items()}
    return dict(entry, model_conds=model_conds)


class IpgoRenderer(SteppedGuider):
    method = "IPGO"

    def __init__(self, model_patcher, cfg: float, vae, reward: ComfyReward, last_steps: int):
        model_patcher = model_patcher.clone()
        model_patcher.set_additional_models(ADDITIONAL_MODELS_KEY, [vae.patcher, *reward.patchers])
        super().__init__(model_patcher)
        self.set_cfg(cfg)
        self.vae, self.reward, self.last_steps = vae, reward, last_steps
        self.model_calls_with_grad = 0

    def planned_steps(self, sigmas):
        return []  # the head samples exactly like CFGGuider

    def render(self, cross_attn: torch.Tensor, pooled, negative: list, prompt: str, noise, latent, sampler,
               sigmas, seed: int, backward: Callable[[torch.Tensor], None], callback=None) -> torch.Tensor:
        """Generate with positive `cross_attn` (live, differentiable), call backward(reward), return IMAGE."""
        if sigmas.shape[-1] - 1 <= self.last_steps:
            raise ValueError(f"last_steps ({self.last_steps}) must be fewer than the sampling steps "
                             f"({sigmas.shape[-1] - 1})")
        self._live, self._prompt, self._backward = cross_attn, prompt, backward
        self._images = None
        self.set_conds(conditioning(cross_attn.detach(), pooled), negative)
        with torch.inference_mode():  # sampling as ComfyUI runs it; only the tail leaves inference mode
            self.sample(noise, latent, sampler, sigmas, callback=callback, disable_pbar=True, seed=seed)
        return self._images

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                     latent_shapes=None):
        head = sigmas[:sigmas.shape[-1] - self.last_steps]
        x = super().inner_sample(noise, latent_image, device, sampler, head, denoise_mask, callback, disable_pbar,
                                 seed, latent_shapes=latent_shapes)
        model_options = comfy.model_patcher.create_model_options_clone(self.model_options)
        model_options.setdefault("transformer_options", {})["sample_sigmas"] = sigmas
        tail = [float(s) for s in sigmas[-(self.last_steps + 1):]]
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            reward_model = self.reward.reward  # loaded with the model (additional model), as DATE does
            for module in (self.inner_model, self.vae.first_stage_model, reward_model):
                stack.enter_context(autograd_ready(module))
            with torch.enable_grad():
                x = self.inner_model.process_latent_in(x.to(device)).clone()
                negative = self.conds.get("negative")
                negative = None if negative is None else [_ordinary_entry(e) for e in negative]
                cfg1 = abs(self.cfg - 1.0) < 1e-9 and not model_options.get("disable_cfg1_optimization", False)
                for sigma, sigma_next in zip(tail[:-1], tail[1:]):
                    mm.throw_exception_if_processing_interrupted()
                    t = torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype)
                    positive = self.positive_with(self._live.to(device), clone_rest=True)
                    uncond = None if cfg1 else negative
                    cond_pred, uncond_pred = comfy.samplers.calc_cond_batch(self.inner_model, [positive, uncond],
                                                                            x, t, model_options)
                    self.model_calls_with_grad += 1
                    x0 = self.combine(x, t, cond_pred, uncond_pred, positive, uncond, model_options)
                    x = x0 if sigma_next == 0 else x0 + (sigma_next / sigma) * (x - x0)
                images = decode_pixels(self.vae, self.inner_model, x, clamp=True)
                reward_device = next(reward_model.parameters()).device
                reward = reward_model(images.to(reward_device), [self._prompt] * images.shape[0])
                self._backward(reward)
            self._images = images.detach().float().movedim(1, -1).cpu()
        return self.inner_model.process_latent_out(x.detach().to(torch.float32))
