"""core.TextEncoder over a ComfyUI CLIP object, differentiable w.r.t. spliced token embeddings.

Learnable vectors travel the same way `embedding:name` textual inversions do: as tensor entries in
ComfyUI's token lists, which comfy/sd1_clip.py splices into the input embeddings. What makes the
encoder differentiable for the duration of a `with` block is undone afterwards: ordinary views of the
inference-mode weights and casts redone in backward (nodes/comfy/recast.py: no weight copy kept), and an
out-of-place forward for CLIP layers, whose stock forward adds residuals in place (which autograd cannot
differentiate).
"""
from __future__ import annotations

import types
from contextlib import ExitStack, contextmanager

import torch
import comfy.clip_model

from ...core.shared.conditioning import TextConditioning
from ...core.shared.text_encoder import LearnableTokens, TextEncoder
from .recast import differentiable


def _clip_layer_forward_out_of_place(self, x, mask=None, optimized_attention=None):
    x = x + self.self_attn(self.layer_norm1(x), mask, optimized_attention)
    return x + self.mlp(self.layer_norm2(x))


@contextmanager
def out_of_place_clip_layers(module: torch.nn.Module):
    """Give each CLIP layer of `module` an out-of-place forward (instance attribute), removed on exit."""
    layers = [m for m in module.modules() if isinstance(m, comfy.clip_model.CLIPLayer)]
    for layer in layers:
        layer.forward = types.MethodType(_clip_layer_forward_out_of_place, layer)
    try:
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)


def splice(chunks: list, vectors: torch.Tensor, position: str, start_token: int | None, end_token: int,
           pad_token: int, windowed: bool = True) -> list:
    """Insert `vectors` (n, width) into ComfyUI token chunks, keeping each chunk's length.

    "end": before the end-of-text token of the last chunk; "start": right after start-of-text of the
    first (T5 has none: at the very start). n padding entries are dropped from that chunk's tail so its
    length stays the model's. When the last chunk has no padding left, "end" puts the vectors in a new chunk
    of their own (any prompt length works, as in CLIP Text Encode); "start" needs room in the first chunk
    (the pooled vector comes from it). A tokenizer without windows (`windowed=False`: T5, one chunk of any
    length) just grows by n where no padding is left.
    """
    chunks = [list(c) for c in chunks]
    index = 0 if position == "start" else len(chunks) - 1
    chunk = chunks[index]
    ids = [entry[0] if isinstance(entry[0], int) else None for entry in chunk]
    end_at = ids.index(end_token, 1) if end_token in ids[1:] else len(chunk)
    at = (1 if ids and start_token is not None and ids[0] == start_token else 0) if position == "start" else end_at
    # room = padding after the end-of-text token (SD1 pads with the end token itself, which is not room)
    tail_pads = 0
    for token in reversed(ids[end_at + 1:]):
        if token != pad_token:
            break
        tail_pads += 1
    n = vectors.shape[0]
    if tail_pads < n and not windowed:  # what padding there is makes room; the sequence grows by the rest
        chunk[at:at] = [(vectors, 1.0)]
        del chunk[len(chunk) - tail_pads:len(chunk)]
        chunks[index] = chunk
        return chunks
    if tail_pads < n and position == "start":
        raise ValueError(f"the prompt fills its first {len(chunk)}-token window, which leaves no room for {n} "
                         "token(s) at its start; use position end, or shorten the prompt")
    if tail_pads < n:  # as ComfyUI does when a prompt outgrows a window: the tokens open one of their own
        chunks.append([(start_token, 1.0), (vectors, 1.0), (end_token, 1.0)]
                      + [(pad_token, 1.0)] * (len(chunk) - 2 - n))
        return chunks
    chunk[at:at] = [(vectors, 1.0)]
    del chunk[len(chunk) - n:]
    chunks[index] = chunk
    return chunks


class ComfyTextEncoder(TextEncoder):
    """Use as a context manager around a block of differentiable encodes (weights made autograd-ready once
    per block)."""

    def __init__(self, clip):
        self.clip = clip
        # the encoders this CLIP has (an SD3 checkpoint without T5 still tokenizes for it)
        self.keys = [k for k in sorted(clip.tokenize("").keys()) if self._part(k) is not None]
        self._stack: ExitStack | None = None
        self.extra_bytes = 0

    def _part(self, key: str):
        """The encoder for a token key: clip_l / clip_g / clip_h, or SD3's and Flux's t5xxl."""
        model = self.clip.cond_stage_model
        part = getattr(model, f"clip_{key}", None)
        return part if part is not None else getattr(model, key, None)

    def _tokenizer(self, key: str):
        tokenizer = self.clip.tokenizer
        part = getattr(tokenizer, f"clip_{key}", None)
        return part if part is not None else getattr(tokenizer, key)

    @property
    def token_widths(self) -> dict[str, int]:
        return {k: self._part(k).transformer.get_input_embeddings().weight.shape[1] for k in self.keys}

    def vocabulary_size(self, encoder: str) -> int:
        return self._part(encoder).transformer.get_input_embeddings().weight.shape[0]

    def rows(self, encoder: str, ids: torch.Tensor) -> torch.Tensor:
        """Input-embedding rows `ids` of one encoder, as an ordinary float copy (not the whole table)."""
        with torch.inference_mode(False):
            table = self._part(encoder).transformer.get_input_embeddings().weight
            return table[ids.to(table.device)].detach().float().cpu().clone()

    def vocabulary(self, encoder: str) -> torch.Tensor:
        with torch.inference_mode(False):
            return self._part(encoder).transformer.get_input_embeddings().weight.detach().float().clone()

    def word_embeddings(self, encoder: str, text: str) -> torch.Tensor:
        tok = self._tokenizer(encoder)
        ids = [e[0] for e in tok.tokenize_with_weights(text)[0]]
        first = 0 if tok.start_token is None else 1  # T5 has no start-of-text token
        body = ids[first:ids.index(tok.end_token, first)] if tok.end_token in ids[first:] else ids[first:]
        if not body:
            raise ValueError(f"{text!r} has no tokens")
        with torch.inference_mode(False):
            table = self._part(encoder).transformer.get_input_embeddings().weight
            return table[torch.tensor(body, device=table.device)].detach().float().clone()

    def __enter__(self):
        self.clip.load_model()
        self._stack = ExitStack()
        model = self.clip.cond_stage_model
        self.extra_bytes = self._stack.enter_context(differentiable(model)).extra_bytes
        self._stack.enter_context(out_of_place_clip_layers(model))
        return self

    def __exit__(self, *exc):
        stack, self._stack = self._stack, None
        return stack.__exit__(*exc)

    def tokens(self, prompt: str, learnable: LearnableTokens | None = None) -> dict:
        tokens = self.clip.tokenize(prompt)
        if learnable is not None:
            self.check_learnable(learnable)
            for key in self.keys:
                tok = self._tokenizer(key)
                pad = getattr(tok, "pad_token", tok.end_token)
                tokens[key] = splice(tokens[key], learnable.vectors[key], learnable.position,
                                     tok.start_token, tok.end_token, pad, windowed=tok.pad_to_max_length)
        return tokens

    def encode(self, prompt: str, learnable: LearnableTokens | None = None) -> TextConditioning:
        if self._stack is None:
            with self:
                return self.encode(prompt, learnable)
        tokens = self.tokens(prompt, learnable)
        with torch.inference_mode(False), torch.enable_grad():
            cond, pooled = self.clip.encode_from_tokens(tokens, return_pooled=True)
        return TextConditioning(cond, pooled)
