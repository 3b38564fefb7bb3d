"""The sequences IPGO works on, from a ComfyUI CLIP: the prompt's unpadded states and a matching negative.

ComfyUI's text encoders pad every prompt to a 77-token window. CLIP's text transformer is causal, so
the first L states of that window (BOS, the prompt's tokens, EOS) are exactly the states of the
unpadded prompt, and the first n states of the padded negative are the negative "padded to length n".
The learned tokens go around the prompt's L states; the negative is cut to the same total length, as
the authors do. SDXL: both encoders' states are concatenated along width (768 + 1280 = 2048) and the
tokens live in that joint space; the pooled vector (which the tokens cannot reach, being injected after
the encoder) stays the prompt's own.

Longer prompts (and prompts whose tokens plus the learned ones exceed one window) are encoded the way
CLIP Text Encode encodes them: ComfyUI's windows of 77, concatenated; the prompt's sequence is all of
them with the last window's padding cut. The learned tokens still go before and after the whole
sequence (they live in the encoder's output space, which has no window). A negative cannot be padded
past one window, so there it is ComfyUI's own encoding of the negative, uncut; ComfyUI's sampler then
runs it apart from the positive, as it does for any two conditionings of different lengths.

SD3 and Flux.1 (`whole=True`): the model reads one sequence that mixes encoders (SD3: CLIP-L/G's windows
zero-padded to 4096 wide, then T5's tokens; Flux: T5's, padded to at least 256), and T5 is bidirectional,
so padding states are not the unpadded prompt's. The prompt's sequence is ComfyUI's whole encoding, as
CLIP Text Encode gives it; the learned tokens (4096 wide) go before and after it; the negative is ComfyUI's
encoding, uncut; the pooled vectors stay as encoded.
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


def prompt_length(clip, tokens: dict) -> int:
    """States from the first BOS to the last EOS of a prompt's ComfyUI tokens (every window but the last is full;
    the first encoder's tokenizer, weights and embedding:name included)."""
    key = sorted(tokens)[0]
    chunks = tokens[key]
    end_token = getattr(clip.tokenizer, f"clip_{key}").end_token
    last = chunks[-1]
    for i, entry in enumerate(last):
        token = entry[0]
        if i > 0 and isinstance(token, int) and token == end_token:
            return WINDOW * (len(chunks) - 1) + i + 1
    return WINDOW * len(chunks)


def encode_windows(clip, tokens: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ComfyUI's encoding of a prompt's tokens: its 77-token windows concatenated, and the first window's pooled
    vector."""
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    if cond.shape[1] % WINDOW:
        raise ValueError(f"the text encoder returned {cond.shape[1]} states, not whole {WINDOW}-token windows")
    return cond, pooled


def _ordinary(t: torch.Tensor | None) -> torch.Tensor | None:
    # ComfyUI encodes under inference mode; autograd needs ordinary tensors next to the learned tokens
    if t is None:
        return None
    with torch.inference_mode(False):
        return t.detach().float().cpu().clone()


def encode_sequence(clip, text: str, negative_text: str, added_tokens: int, whole: bool = False) -> PromptSequence:
    if whole:
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        negative, negative_pooled = clip.encode_from_tokens(clip.tokenize(negative_text), return_pooled=True)
        return PromptSequence(text, _ordinary(cond), _ordinary(pooled), _ordinary(negative),
                              _ordinary(negative_pooled))
    tokens = clip.tokenize(text)
    length = prompt_length(clip, tokens)
    cond, pooled = encode_windows(clip, tokens)
    negative, negative_pooled = encode_windows(clip, clip.tokenize(negative_text))
    if negative.shape[1] == WINDOW and length + added_tokens <= WINDOW:
        negative = negative[:, :length + added_tokens]  # the authors' negative: padded to the same length
    return PromptSequence(text, _ordinary(cond[:, :length]), _ordinary(pooled), _ordinary(negative),
                          _ordinary(negative_pooled))
