"""Named prompt templates: how each published rewriter reads a prompt and what of its output is the rewrite.

A rewriter is a causal language model continuing a text; the text it was trained to continue and whether the
rewrite is the continuation alone or the prompt with its continuation differ between the published ones:

- `gflownet (authors)`: the GFlowNet rewriter's template (Yun et al.'s code), "{prompt} Rephrase:\\n"; the
  rewrite is the continuation. The trainer's default.
- `promptist`: microsoft/Promptist, "{prompt} Rephrase:" (the authors' demo in microsoft/LMOps, promptist/README.md:
  `plain_text.strip() + " Rephrase:"`, the optimized prompt is the text generated after it).
- `magicprompt`: Gustavosta/MagicPrompt-Stable-Diffusion (and its MagicPrompt siblings), a plain continuation
  model: it reads the prompt as is and the rewrite is the prompt followed by what it writes.
- `custom`: the free-text template, the rewrite being the continuation.
"""
from __future__ import annotations

from dataclasses import dataclass

from .trajectories import DEFAULT_TEMPLATE


@dataclass(frozen=True)
class TemplatePreset:
    template: str | None  # None: the user's own template
    keep_prompt: bool  # the rewrite is the templated prompt followed by the continuation
    models: str  # what it is for, in words (node tooltip, docs)


CUSTOM = "custom"
TEMPLATE_PRESETS = {
    CUSTOM: TemplatePreset(None, False, "the template input as written, the rewrite being the continuation"),
    "gflownet (authors)": TemplatePreset(DEFAULT_TEMPLATE, False, "GFlowNet rewriters (Yun et al.) and policies "
                                                                  "this pack's trainer writes with its default"),
    "promptist": TemplatePreset("{prompt} Rephrase:", False, "microsoft/Promptist"),
    "magicprompt": TemplatePreset("{prompt}", True, "Gustavosta/MagicPrompt-Stable-Diffusion and other plain "
                                                    "prompt-continuation GPT-2s, the rewrite keeping the prompt in "
                                                    "front"),
}


def resolve(preset: str, template: str) -> tuple[str, bool]:
    """(template, keep_prompt) for a preset name; `custom` uses `template`."""
    if preset not in TEMPLATE_PRESETS:
        raise KeyError(f"unknown template preset {preset!r}; one of {list(TEMPLATE_PRESETS)}")
    chosen = TEMPLATE_PRESETS[preset]
    return (template if chosen.template is None else chosen.template), chosen.keep_prompt
