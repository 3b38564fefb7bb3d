"""The paper's task reward on images rendered from the rewrite, with the pack's reward models.

    c(x, y) = [aes(img(y)) - aes(img(x))] + min(clip_weight * (CLIP(img(y), x) - threshold), 0)

aes: an aesthetic reward (LAION aesthetic predictor in the paper); CLIP: a relevance reward scored
against the ORIGINAL prompt x, clipped at 0 below and not rewarded above the threshold (0.28, weight
20). Images: a diffusers text-to-image pipeline from local weights (paper: SD 1.4, 20 DPM-Solver
steps, CFG 7.5, one fixed seed), averaged over images_per_prompt. aes(img(x)) is cached per prompt.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..rewards.base import Reward


def load_pipeline(folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """A diffusers pipeline folder (model_index.json, safetensors weights) with a DPM-Solver scheduler."""
    try:
        import diffusers
    except ImportError as e:
        raise ImportError("the image reward renders with diffusers: `pip install diffusers` (optional extra of the "
                          "pack; the toy reward and the ComfyUI node do not need it)") from e
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"'{folder}' is not a diffusers pipeline folder (no model_index.json)")
    pipe = diffusers.DiffusionPipeline.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                                       torch_dtype=dtype, safety_checker=None,
                                                       requires_safety_checker=False)
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class DiffusersRenderer:
    """prompts -> images (B*k, 3, H, W) in [0, 1]; the same seed for every prompt, as the authors do."""

    def __init__(self, pipeline, steps: int = 20, cfg: float = 7.5, seed: int = 42, images_per_prompt: int = 1,
                 size: int | None = None):
        self.pipeline, self.steps, self.cfg, self.seed = pipeline, steps, cfg, seed
        self.images_per_prompt, self.size = images_per_prompt, size

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        out = []
        for prompt in prompts:  # one generator per prompt: a prompt's images do not depend on its batch
            generator = torch.Generator(self.pipeline.device).manual_seed(self.seed)
            kw = {"height": self.size, "width": self.size} if self.size else {}
            images = self.pipeline(prompt, num_inference_steps=self.steps, guidance_scale=self.cfg,
                                   num_images_per_prompt=self.images_per_prompt, generator=generator,
                                   output_type="pt", **kw).images
            out.append(images.float().clamp(0, 1))
        return torch.cat(out)


class ImageReward:
    """Task reward c(x, y) from rendered images (see the module docstring)."""

    def __init__(self, render, aesthetic: Reward, relevance: Reward, threshold: float = 0.28,
                 clip_weight: float = 20.0):
        self.render, self.aesthetic, self.relevance = render, aesthetic, relevance
        self.threshold, self.clip_weight = threshold, clip_weight
        self._plain: dict[str, float] = {}

    def _per_prompt(self, scores: torch.Tensor, count: int) -> torch.Tensor:
        return scores.float().cpu().reshape(count, -1).mean(1)

    @torch.no_grad()
    def parts(self, prompts: Sequence[str], rewrites: Sequence[str]) -> dict[str, torch.Tensor]:
        missing = sorted({p for p in prompts if p not in self._plain})
        if missing:
            plain = self.render(missing)
            k = plain.shape[0] // len(missing)
            aes = self._per_prompt(self.aesthetic(plain, [p for p in missing for _ in range(k)]), len(missing))
            self._plain.update({p: float(a) for p, a in zip(missing, aes)})
        images = self.render(rewrites)
        k = images.shape[0] // len(rewrites)
        aes = self._per_prompt(self.aesthetic(images, [r for r in rewrites for _ in range(k)]), len(rewrites))
        clip = self.relevance(images, [p for p in prompts for _ in range(k)]).float().cpu().clamp_min(0)
        relevance = (self.clip_weight * (clip - self.threshold)).clamp_max(0)
        relevance = self._per_prompt(relevance, len(rewrites))
        aes_gain = aes - torch.tensor([self._plain[p] for p in prompts])
        return {"aesthetic_gain": aes_gain, "relevance": relevance, "task": aes_gain + relevance}

    def __call__(self, prompts: Sequence[str], rewrites: Sequence[str]) -> torch.Tensor:
        return self.parts(prompts, rewrites)["task"]
