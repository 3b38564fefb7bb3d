"""IPGO's generation: one image whose last K steps are differentiable in the positive's tokens.

A plain CFGGuider samples with DifferentiableTail, a ComfyUI SAMPLER (as ComfyUI's own TrainSampler is
one): the user's sampler (any SAMPLER, any scheduler) runs all but the last K steps without gradient;
the last K steps are then taken by deterministic Euler steps (DDIM's update in the k-diffusion
convention) with CFG exactly as ComfyUI applies it, inside the same model loading, so the reward
gradient flows through them and the VAE decode to the tokens (the authors' truncated backpropagation:
K = 2 of 50 LMS steps). The VAE and the reward ride along as additional models of a cloned
ModelPatcher, so ComfyUI loads them with the diffusion model. The user's models are not modified: their
inference-mode weights are swapped for frozen views of the same memory (no copy) only while the
differentiable steps run.
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Callable

import torch

import comfy.model_management as mm
import comfy.samplers

from ..comfy.recast import differentiable
from ..comfy.reward import ComfyReward
from ..comfy.step_guider import combine, positive_with, skips_uncond
from ..comfy.vae_pixels import decode_pixels
from .sequences import conditioning

ADDITIONAL_MODELS_KEY = "prompt_optim_ipgo"


def _ordinary_entry(entry: dict) -> dict:
    """A processed conds entry whose tensors autograd may save (ComfyUI made them under inference mode)."""
    model_conds = {k: v._copy_with(v.cond.clone()) if isinstance(getattr(v, "cond", None), torch.Tensor) else v
                   for k, v in entry["model_conds"].items()}
    return dict(entry, model_conds=model_conds)


class DifferentiableTail(comfy.samplers.Sampler):
    """`head` for all but the last `last_steps` steps, then those steps with gradient to `live` (the positive's
    token states), the VAE decode and the reward; `backward(reward)` is called inside, `images` kept."""

    def __init__(self, head: comfy.samplers.Sampler, last_steps: int, live: torch.Tensor, vae, reward: ComfyReward,
                 prompt: str, backward: Callable[[torch.Tensor], None]):
        self.head, self.last_steps, self.live = head, last_steps, live
        self.vae, self.reward, self.prompt, self.backward = vae, reward, prompt, backward
        self.images: torch.Tensor | None = None
        self.model_calls_with_grad = 0

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        head = sigmas[:sigmas.shape[-1] - self.last_steps]
        x = self.head.sample(model_wrap, head, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        guider, inner_model, model_options = model_wrap, model_wrap.inner_model, extra_args["model_options"]
        tail = [float(s) for s in sigmas[-(self.last_steps + 1):]]
        reward_model = self.reward.reward
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            for module in (inner_model, self.vae.first_stage_model, reward_model):
                stack.enter_context(differentiable(module))
            with torch.enable_grad():
                x = x.clone()
                negative = guider.conds.get("negative")
                negative = None if negative is None else [_ordinary_entry(e) for e in negative]
                uncond = None if skips_uncond(guider, model_options) else negative
                for sigma, sigma_next in zip(tail[:-1], tail[1:]):
                    mm.throw_exception_if_processing_interrupted()
                    t = torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype)
                    positive = positive_with(guider, "IPGO", self.live.to(x.device), clone_rest=True)
                    cond_pred, uncond_pred = comfy.samplers.calc_cond_batch(inner_model, [positive, uncond], x, t,
                                                                            model_options)
                    self.model_calls_with_grad += 1
                    x0 = combine(guider, x, t, cond_pred, uncond_pred, positive, uncond, model_options)
                    x = x0 if sigma_next == 0 else x0 + (sigma_next / sigma) * (x - x0)
                images = decode_pixels(self.vae, inner_model, x, clamp=True)
                reward_device = next(reward_model.parameters()).device
                self.backward(reward_model(images.to(reward_device), [self.prompt] * images.shape[0]))
            self.images = images.detach().float().movedim(1, -1).cpu()
        return x.detach()


class IpgoRenderer:
    """Renders a prompt's live token states with the user's model, sampler and sigmas (one CFGGuider reused)."""

    def __init__(self, model_patcher, cfg: float, vae, reward: ComfyReward, last_steps: int):
        model_patcher = model_patcher.clone()
        model_patcher.set_additional_models(ADDITIONAL_MODELS_KEY, [vae.patcher, *reward.patchers])
        self.guider = comfy.samplers.CFGGuider(model_patcher)
        self.guider.set_cfg(cfg)
        self.vae, self.reward, self.last_steps = vae, reward, last_steps
        self.model_calls_with_grad = 0

    def render(self, cross_attn: torch.Tensor, pooled, negative: list, prompt: str, noise, latent, sampler,
               sigmas, seed: int, backward: Callable[[torch.Tensor], None], callback=None) -> torch.Tensor:
        """Generate with positive `cross_attn` (live, differentiable), call backward(reward), return IMAGE."""
        if sigmas.shape[-1] - 1 <= self.last_steps:
            raise ValueError(f"last_steps ({self.last_steps}) must be fewer than the sampling steps "
                             f"({sigmas.shape[-1] - 1})")
        tail = DifferentiableTail(sampler, self.last_steps, cross_attn, self.vae, self.reward, prompt, backward)
        self.guider.set_conds(conditioning(cross_attn.detach(), pooled), negative)
        with torch.inference_mode():  # sampling as ComfyUI runs it; only the tail leaves inference mode
            self.guider.sample(noise, latent, tail, sigmas, callback=callback, disable_pbar=True, seed=seed)
        self.model_calls_with_grad += tail.model_calls_with_grad
        return tail.images
