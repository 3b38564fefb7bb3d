"""Task rewards c(x, y) for rewrites, and the text diversity training logs.

TargetWords: a reward on text alone, for tests and quick experiments without images: c(x, y) = share of
the rewrite's words that belong to a target set. Many different rewrites reach c = 1, so a sampler of
p_ref * exp(c / beta) stays diverse where a reward maximizer may settle on one of them: the paper's
central claim in miniature.

ImageReward: the paper's task reward on images rendered from the rewrite, with the pack's reward models.

    c(x, y) = [aes(img(y)) - aes(img(x))] + min(clip_weight * (CLIP(img(y), x) - threshold), 0)

aes: an aesthetic reward (LAION aesthetic predictor in the paper); CLIP: a relevance reward scored
against the ORIGINAL prompt x, clipped at 0 below and not rewarded above the threshold (0.28, weight
20). Images: a diffusers text-to-image pipeline from local weights (paper: SD 1.4, 20 DPM-Solver
steps, CFG 7.5, one fixed seed), averaged over images_per_prompt. aes(img(x)) is cached per prompt.

As the authors' code (dbsxodud-11/PAG gfn_trainer.py get_logreward) by default: x is the text the policy
reads, the template applied ("a cat Rephrase:\n"), both for img(x) and for CLIP (`plain_text="template"`;
"prompt" = the paper's text, the bare prompt); and a step's rewrites are rendered in batches of 16 from
one generator seeded per batch, so each rewrite gets its own noise (`noise="per_batch"`; "per_prompt" =
the same noise for every rewrite). img(x) is one image from the seed.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch

from ..metrics.diversity import mean_pairwise_distance
from ..rewards.base import Reward

WORD = re.compile(r"[\w']+|[^\w\s]")


class TargetWords:
    def __init__(self, words: Sequence[str]):
        self.words = {w.lower() for w in words}
        if not self.words:
            raise ValueError("TargetWords needs at least one word")

    def __call__(self, prompts: Sequence[str], rewrites: Sequence[str]) -> torch.Tensor:
        scores = []
        for text in rewrites:
            tokens = WORD.findall(text.lower())
            scores.append(sum(t in self.words for t in tokens) / len(tokens) if tokens else 0.0)
        return torch.tensor(scores, dtype=torch.float32)


def text_diversity(texts: Sequence[str]) -> float:
    """Mean pairwise cosine distance of the rewrites' bag-of-words vectors (0: all use the same words in
    the same proportions; 1: no two share a word). The authors use a sentence encoder instead; this one
    needs no model."""
    counts = [Counter(WORD.findall(t.lower())) for t in texts]
    vocab = sorted(set().union(*counts))
    if len(texts) < 2 or not vocab:
        return 0.0
    index = {w: i for i, w in enumerate(vocab)}
    bags = torch.zeros(len(texts), len(vocab))
    for row, c in enumerate(counts):
        for w, k in c.items():
            bags[row, index[w]] = k
    return mean_pairwise_distance(bags)


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


NOISE_MODES = ("per_batch", "per_prompt")
PLAIN_TEXTS = ("template", "prompt")


class DiffusersRenderer:
    """prompts -> images (B*k, 3, H, W) in [0, 1]. noise "per_batch" (the authors' training): batches of
    `batch_size` prompts, one generator seeded with `seed` per batch, so prompt i of a batch gets the i-th
    slice of one draw; "per_prompt": one generator per prompt, every prompt the same noise."""

    def __init__(self, pipeline, steps: int = 20, cfg: float = 7.5, seed: int = 42, images_per_prompt: int = 1,
                 size: int | None = None, noise: str = "per_batch", batch_size: int = 16):
        if noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}; got {noise!r}")
        self.pipeline, self.steps, self.cfg, self.seed = pipeline, steps, cfg, seed
        self.images_per_prompt, self.size, self.noise, self.batch_size = images_per_prompt, size, noise, batch_size

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        step = 1 if self.noise == "per_prompt" else self.batch_size
        out = []
        for i in range(0, len(prompts), step):
            generator = torch.Generator(self.pipeline.device).manual_seed(self.seed)
            kw = {"height": self.size, "width": self.size} if self.size else {}
            images = self.pipeline(list(prompts[i:i + step]), num_inference_steps=self.steps, guidance_scale=self.cfg,
                                   num_images_per_prompt=self.images_per_prompt, generator=generator,
                                   output_type="pt", **kw).images
            out.append(images.float().clamp(0, 1))
        return torch.cat(out)


class ImageReward:
    """Task reward c(x, y) from rendered images (see the module docstring)."""

    def __init__(self, render, aesthetic: Reward, relevance: Reward, threshold: float = 0.28,
                 clip_weight: float = 20.0, plain_text: str = "template", template: str = "{prompt} Rephrase:\n"):
        if plain_text not in PLAIN_TEXTS:
            raise ValueError(f"plain_text must be one of {PLAIN_TEXTS}; got {plain_text!r}")
        self.render, self.aesthetic, self.relevance = render, aesthetic, relevance
        self.threshold, self.clip_weight = threshold, clip_weight
        self.plain_text, self.template = plain_text, template
        self._plain: dict[str, float] = {}

    def text_of(self, prompt: str) -> str:
        """What stands for x in img(x) and CLIP(img(y), x)."""
        return self.template.format(prompt=prompt.strip()) if self.plain_text == "template" else prompt

    def _per_prompt(self, scores: torch.Tensor, count: int) -> torch.Tensor:
        return scores.float().cpu().reshape(count, -1).mean(1)

    @torch.no_grad()
    def parts(self, prompts: Sequence[str], rewrites: Sequence[str]) -> dict[str, torch.Tensor]:
        missing = sorted({p for p in prompts if p not in self._plain})
        for p in missing:  # one at a time: img(x) comes from the seed's first draw, as the authors' batch of one
            plain = self.render([self.text_of(p)])
            self._plain[p] = float(self.aesthetic(plain, [self.text_of(p)] * plain.shape[0]).float().mean())
        images = self.render(rewrites)
        k = images.shape[0] // len(rewrites)
        aes = self._per_prompt(self.aesthetic(images, [r for r in rewrites for _ in range(k)]), len(rewrites))
        clip = self.relevance(images, [self.text_of(p) for p in prompts for _ in range(k)]).float().cpu().clamp_min(0)
        relevance = (self.clip_weight * (clip - self.threshold)).clamp_max(0)
        relevance = self._per_prompt(relevance, len(rewrites))
        aes_gain = aes - torch.tensor([self._plain[p] for p in prompts])
        return {"aesthetic_gain": aes_gain, "relevance": relevance, "task": aes_gain + relevance}

    def __call__(self, prompts: Sequence[str], rewrites: Sequence[str]) -> torch.Tensor:
        return self.parts(prompts, rewrites)["task"]
