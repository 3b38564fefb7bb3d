"""The MinorityPrompt placeholder: what the encode node hands the guider, and what the guider learns.

`PlaceholderSpec` rides in the CONDITIONING (under SPEC_KEY) next to the plain prompt's tensors, so the
conditioning samples normally anywhere and the guider can still re-encode the prompt with a learnable
token. `LearnedToken` is the result, saved as a textual-inversion embedding that ComfyUI loads with
`embedding:name` (one row per text encoder under "clip_l" / "clip_g" / "clip_h", the keys its
tokenizers look up).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch

from ...core.minority.optimize import initial_tokens
from ..comfy.text_encoder import ComfyTextEncoder

SPEC_KEY = "prompt_optim_minority"


@dataclass(frozen=True)
class PlaceholderSpec:
    clip: object  # the ComfyUI CLIP the prompt was encoded with
    text: str
    position: str  # "end" | "start"
    init: str  # core.minority.optimize.INITS
    init_word: str = "cool"
    init_seed: int = 0
    encoded: torch.Tensor | None = field(default=None, compare=False, repr=False)  # the node's own output tokens

    def concatenated_tokens(self, cross_attn: torch.Tensor) -> torch.Tensor | None:
        """What Conditioning Concat appended to the encode node's tokens: (1, n, width), or None when nothing
        was appended. ValueError when the encode node's own tokens were changed (e.g. Conditioning Average):
        the guider re-encodes the prompt with its token and would silently drop such a change."""
        own = self.encoded
        if own is None:
            return None
        length = own.shape[1]
        if (cross_attn.shape[1] < length or cross_attn.shape[2] != own.shape[2]
                or not torch.equal(cross_attn[:, :length].to(own), own.expand(cross_attn.shape[0], -1, -1))):
            raise ValueError("its token states are not the ones the encode node produced (changed by e.g. "
                             "Conditioning Average or Conditioning Concat with the encode node as 'from'); the "
                             "guider re-encodes the prompt with its token and would drop that change. Connect the "
                             "encode node directly, or Conditioning Concat with it as 'conditioning_to'")
        return cross_attn[:1, length:] if cross_attn.shape[1] > length else None

    def start_tokens(self, encoder: ComfyTextEncoder, count: int) -> dict[str, torch.Tensor]:
        """(count, width) starting rows per encoder; random draws come from init_seed."""
        generator = torch.Generator().manual_seed(self.init_seed)
        rows = None
        if self.init == "random_vocabulary":  # the same word for every encoder of the model
            size = min(encoder.vocabulary(k).shape[0] for k in encoder.keys)
            rows = torch.randint(0, size, (count,), generator=generator)
        tokens = {}
        for key in encoder.keys:
            word = encoder.word_embeddings(key, self.init_word) if self.init == "word" else None
            tokens[key] = initial_tokens(encoder.vocabulary(key), self.init, count, generator, word=word, rows=rows)
        return tokens


def single_token_word(encoder: ComfyTextEncoder, word: str) -> None:
    """Raise ValueError unless `word` is one token for every encoder."""
    for key in encoder.keys:
        n = encoder.word_embeddings(key, word).shape[0]
        if n != 1:
            raise ValueError(f"'{word}' is {n} tokens for the {key} text encoder; use a word that is one token "
                             "(for example cool, old, handsome)")


@dataclass(frozen=True)
class LearnedToken:
    """The optimized placeholder row(s): vectors[encoder] is (images, width), one row per image."""

    vectors: dict[str, torch.Tensor]
    position: str
    text: str

    @property
    def images(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    def embedding_file(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.images:
            raise IndexError(f"image index {index} is out of range: this token has {self.images} row(s)")
        # the keys ComfyUI's tokenizers look up: clip_l / clip_g / clip_h, and t5xxl for SD3's and Flux's T5
        return {(k if k.startswith("t5") else f"clip_{k}"): v[index:index + 1].detach().float().cpu().contiguous()
                for k, v in self.vectors.items()}


def safe_embedding_name(name: str) -> str:
    name = name.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}", name) or name.endswith(".safetensors"):
        raise ValueError(f"{name!r} is not a usable embedding name: use letters, digits, '_', '-' and '.', "
                         "without a folder or extension")
    return name


def free_embedding_name(folder: str, name: str) -> str:
    """`name`, or `name_00001`, ... whichever has no .safetensors file in `folder` yet."""
    candidate, n = name, 0
    while os.path.exists(os.path.join(folder, candidate + ".safetensors")):
        n += 1
        candidate = f"{name}_{n:05d}"
    return candidate
