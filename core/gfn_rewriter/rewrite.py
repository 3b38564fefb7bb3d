"""Inference: N rewrites of each prompt, by diverse beam search (the default: the authors' evaluation, 16
beams in 16 groups, diversity penalty 1.0, length penalty -1.0) or by seeded sampling.

Sampling draws rewrite i with its own generator seeded with seed + i, so the same seed gives the
same rewrites and rewrite i does not depend on how many are asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..shared.settings_error import SettingsError
from . import trajectories
from .diverse_beam_search import diverse_beam_search

MODES = ("sampling", "diverse_beam_search")


@dataclass(frozen=True)
class RewriteSettings:
    count: int = 16
    mode: str = "diverse_beam_search"
    seed: int = 0
    temperature: float = 1.0
    top_p: float = 0.9
    min_new_tokens: int = 15
    max_new_tokens: int = 75
    diversity_penalty: float = 1.0
    length_penalty: float = -1.0  # diverse beam search: score = sum log p / length ** length_penalty
    template: str = trajectories.DEFAULT_TEMPLATE

    def __post_init__(self):
        if self.mode not in MODES:
            raise SettingsError(f"mode must be one of {MODES}; got {self.mode!r}", "mode")
        if "{prompt}" not in self.template:
            raise SettingsError("the template must contain {prompt}, where the prompt goes", "template")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise SettingsError("need 0 <= min_new_tokens <= max_new_tokens", "min_new_tokens")


def rewrite(model, tokenizer, prompt: str, settings: RewriteSettings,
            between: Callable[[], None] = lambda: None, interrupt: Callable[[], None] = lambda: None) -> list[str]:
    """settings.count rewrites of one prompt; `between()` runs after each generation (progress, cancel),
    `interrupt()` after each token step of diverse beam search (cancel)."""
    ids = trajectories.encode_prompt(tokenizer, prompt, settings.template)
    eos = tokenizer.eos_token_id
    device = model.get_input_embeddings().weight.device
    if settings.mode == "diverse_beam_search":
        tokens = diverse_beam_search(model, ids, eos, settings.count, settings.count, settings.diversity_penalty,
                                     settings.max_new_tokens, settings.min_new_tokens, settings.length_penalty,
                                     between_steps=interrupt)
        between()
        return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]
    out = []
    for i in range(settings.count):
        generator = torch.Generator(device).manual_seed(settings.seed + i)
        traj = trajectories.sample(model, ids, 1, eos, settings.max_new_tokens, settings.min_new_tokens,
                                   settings.temperature, settings.top_p, generator)
        out.append(traj.texts(tokenizer)[0])
        between()
    return out
