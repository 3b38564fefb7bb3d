"""The sequences IPGO works on, from a ComfyUI CLIP: the prompt's unpadded states and a matching negative.

ComfyUI's text encoders pad every prompt to a 77-token window. CLIP's text transformer is causal, so
the first L states of that window (BOS, the prompt's tokens, EOS) are exactly the states of the
unpadded prompt, and the first n states of the padded negative are the negative "padded to length n".
The learned tokens go around the prompt's L states; the negative is cut to the same total length, as
the authors do. SDXL: both encoders' states are concatenated along width (768 + 1280 = 2048) and the
tokens live in that joint space; the pooled vector (which the tokens cannot reach, being injected after
the encoder) stays the prompt's own.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.ipgo.optimize import LearnedTokens, inject

WINDOW = 77


@dataclass
class PromptSequence:
    text: str
    states: torch.Tensor  # (1, L, width): BOS .. EOS, unpadded
    pooled: torch.Tensor | None
    negative: torch.Tensor  # (1, L + n_prefix + n_suffix, width)
    negative_pooled: torch.Tensor | None

    def positive_conditioning(self, tokens: LearnedTokens) -> list:
        cond = inject(self.states, tokens.prefix.to(self.states), tokens.suffix.to(self.states))
        return conditioning(cond, self.pooled)

    def negative_conditioning(self) -> list:
        return conditioning(self.negative, self.negative_pooled)


def conditioning(cross_attn: torch.Tensor, pooled: torch.Tensor | None) -> list:
    """A ComfyUI CONDITIONING list with one entry."""
    extra = {} if pooled is None else {"pooled_output": pooled}
    return [[cross_attn, extra]]


def prompt_length(clip, text: str) -> int:
    """Tokens from BOS to EOS of `text` in the first encoder's window (ComfyUI's tokenizer, weights and
    embedding:name included)."""
    tokens = clip.tokenize(text)
    key = sorted(tokens)[0]
    chunks = tokens[key]
    if len(chunks) > 1:
        raise ValueError(f"the prompt is longer than one {WINDOW}-token window; shorten it")
    end_token = getattr(clip.tokenizer, f"clip_{key}").end_token
    for i, entry in enumerate(chunks[0]):
        token = entry[0]
        if i > 0 and isinstance(token, int) and token == end_token:
            return i + 1
    return len(chunks[0])


def encode_window(clip, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    if cond.shape[1] != WINDOW:
        raise ValueError(f"the text encoder returned {cond.shape[1]} states for one window, expected {WINDOW}")
    return cond, pooled


def _ordinary(t: torch.Tensor | None) -> torch.Tensor | None:
    # ComfyUI encodes under inference mode; autograd needs ordinary tensors next to the learned tokens
    if t is None:
        return None
    with torch.inference_mode(False):
        return t.detach().float().cpu().clone()


def encode_sequence(clip, text: str, negative_text: str, added_tokens: int) -> PromptSequence:
    length = prompt_length(clip, text)
    if length + added_tokens > WINDOW:
        raise ValueError(f"the prompt has {length} tokens (with BOS and EOS); with {added_tokens} learned tokens "
                         f"that exceeds the {WINDOW}-token window. Shorten the prompt or use fewer tokens")
    cond, pooled = encode_window(clip, text)
    negative, negative_pooled = encode_window(clip, negative_text)
    return PromptSequence(text, _ordinary(cond[:, :length]), _ordinary(pooled),
                          _ordinary(negative[:, :length + added_tokens]), _ordinary(negative_pooled))
