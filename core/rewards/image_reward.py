"""ImageReward v1.0 (Xu et al., NeurIPS 2023) in plain torch, loading the official `ImageReward.pt`.

The model is BLIP's ViT (patch 16, 224 px; ViT-L in v1.0) feeding a 12-layer BERT whose layers
cross-attend to the image tokens; the [CLS] output goes through an affine head and is normalized
with the authors' mean and std. Module and parameter names follow the official checkpoint
(`blip.visual_encoder.*`, `blip.text_encoder.*`, `mlp.layers.*`), so its state dict loads as is.
We do not use the `image-reward` package: it pins timm 0.6.13 / fairscale, does not import on
current transformers, and would break a shared ComfyUI environment. `tests/fixtures/image_reward`
holds the proof that the two agree.

Folder layout (ComfyUI/models/rewards/<name>/): ImageReward.pt, med_config.json, and the
bert-base-uncased tokenizer (vocab.txt, here or in a `bert-base-uncased/` or `tokenizer/` subfolder;
a local Hugging Face cache of bert-base-uncased also works).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import Reward
from .linear_head import LinearHead
from .local_files import (RewardCheckpointError, RewardFileError, check_keys, check_tokenizer, first_existing,
                          read_json, read_state_dict, require_files, require_path)
from .preprocess import ImageTransform

IMAGE_REWARD_LAYOUT = ("a folder in ComfyUI/models/rewards/ with ImageReward.pt and med_config.json from "
                       "THUDM/ImageReward, plus bert-base-uncased's vocab.txt (beside them or in a "
                       "'bert-base-uncased' subfolder)")
SCORE_MEAN = 0.16717362830052426  # the authors' normalization of the head output
SCORE_STD = 1.0333394966054072
MAX_TEXT_TOKENS = 35
# present in the official checkpoint (BLIP pre-training projections), unused for scoring
UNUSED_PREFIXES = ("blip.vision_proj.", "blip.text_proj.")


# ---------------------------------------------------------------- vision: BLIP's timm-style ViT
class PatchEmbed(nn.Module):
    def __init__(self, patch: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VitAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class VitMlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VitBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = VitAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = VitMlp(width, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@dataclass(frozen=True)
class VisionConfig:
    width: int
    depth: int
    heads: int
    patch: int
    image_size: int
    mlp_hidden: int

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], prefix: str) -> "VisionConfig":
        width = state[prefix + "pos_embed"].shape[-1]
        depth = len({k[len(prefix):].split(".")[1] for k in state if k.startswith(prefix + "blocks.")})
        patch = state[prefix + "patch_embed.proj.weight"].shape[-1]
        grid = math.isqrt(state[prefix + "pos_embed"].shape[1] - 1)
        # BLIP's ViTs use 64-wide heads (base: 768/12, large: 1024/16)
        return cls(width, depth, width // 64, patch, grid * patch, state[prefix + "blocks.0.mlp.fc1.weight"].shape[0])


class BlipVisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch, cfg.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, (cfg.image_size // cfg.patch) ** 2 + 1, cfg.width))
        self.blocks = nn.ModuleList([VitBlock(cfg.width, cfg.heads, cfg.mlp_hidden) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed[:, :x.shape[1] + 1]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# ---------------------------------------------------------------- text: BLIP's BERT with cross-attention
@dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int
    eps: float
    encoder_width: int
    pad_token_id: int = 0

    @classmethod
    def from_med_config(cls, med: dict, encoder_width: int) -> "TextConfig":
        act = med.get("hidden_act", "gelu")
        if act != "gelu":
            raise RewardCheckpointError(f"med_config.json: hidden_act '{act}' is not supported (ImageReward uses 'gelu').")
        if med.get("position_embedding_type", "absolute") != "absolute":
            raise RewardCheckpointError("med_config.json: only absolute position embeddings are supported.")
        try:
            return cls(int(med["vocab_size"]), int(med["hidden_size"]), int(med["num_hidden_layers"]),
                       int(med["num_attention_heads"]), int(med["intermediate_size"]),
                       int(med["max_position_embeddings"]), float(med.get("layer_norm_eps", 1e-12)),
                       encoder_width, int(med.get("pad_token_id", 0)))
        except KeyError as e:
            raise RewardCheckpointError(f"med_config.json lacks {e}.") from e


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: TextConfig, kv_width: int):
        super().__init__()
        self.heads = cfg.heads
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(kv_width, cfg.hidden)
        self.value = nn.Linear(kv_width, cfg.hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, additive_mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(context)), self._split(self.value(context))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask)
        return out.transpose(1, 2).reshape(x.shape)


class BertResidualOutput(nn.Module):
    def __init__(self, width_in: int, cfg: TextConfig):
        super().__init__()
        self.dense = nn.Linear(width_in, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=cfg.eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: TextConfig, kv_width: int):
        super().__init__()
        self.self = BertSelfAttention(cfg, kv_width)
        self.output = BertResidualOutput(cfg.hidden, cfg)

    def forward(self, x, context, additive_mask):
        return self.output(self.self(x, context, additive_mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.intermediate)

    def forward(self, x):
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.attention = BertAttention(cfg, cfg.hidden)
        self.crossattention = BertAttention(cfg, cfg.encoder_width)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertResidualOutput(cfg.intermediate, cfg)

    def forward(self, x, text_mask, image_tokens):
        x = self.attention(x, x, text_mask)
        x = self.crossattention(x, image_tokens, None)  # every image token is attended to
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(cfg) for _ in range(cfg.layers)])


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        # saved in the official checkpoint, so kept as a (persistent) buffer
        self.register_buffer("position_ids", torch.arange(cfg.max_positions).expand((1, -1)).clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_ids[:, :ids.shape[1]]
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(positions))


class BlipTextEncoder(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(ids)
        # BLIP's additive mask: -10000 on padding (not -inf), kept for score parity
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.encoder.layer:
            x = layer(x, mask, image_tokens)
        return x


class Blip(nn.Module):
    def __init__(self, vision: VisionConfig, text: TextConfig):
        super().__init__()
        self.visual_encoder = BlipVisionTransformer(vision)
        self.text_encoder = BlipTextEncoder(text)


class ImageRewardModel(nn.Module):
    """The network with the official parameter names; `forward` returns normalized scores (B,)."""

    def __init__(self, vision: VisionConfig, text: TextConfig, head_shapes: dict[int, tuple[int, int]]):
        super().__init__()
        self.blip = Blip(vision, text)
        self.mlp = LinearHead(head_shapes)

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        image_tokens = self.blip.visual_encoder(pixels)
        text = self.blip.text_encoder(ids, attention_mask, image_tokens)
        head = self.mlp(text[:, 0, :].to(self.mlp.layers[0].weight.dtype))
        head = head.to(torch.promote_types(head.dtype, torch.float32))
        return (head - SCORE_MEAN) / SCORE_STD


class ImageReward(Reward):
    """Human-preference reward (ImageReward v1.0); roughly standard-normal over typical generations."""

    family = "image_reward"

    def __init__(self, model: ImageRewardModel, tokenizer):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.transform = ImageTransform(model.blip.visual_encoder.cfg.image_size)
        self.freeze()

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_TEXT_TOKENS,
                                return_tensors="pt")
        return tokens["input_ids"], tokens["attention_mask"]

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        ids, mask = self.tokenize(prompts)
        dtype = self.model.blip.visual_encoder.pos_embed.dtype
        pixels = self.transform(images.to(dtype))
        return self.model(pixels, ids.to(images.device), mask.to(images.device))


def _tokenizer_folder(folder: Path) -> Path | None:
    return first_existing([folder, folder / "bert-base-uncased", folder / "tokenizer"], ["vocab.txt"])


def load_image_reward_tokenizer(folder: Path, vocab_size: int):
    from transformers import BertTokenizer

    source = _tokenizer_folder(folder)
    if source is not None:
        tokenizer = BertTokenizer.from_pretrained(str(source), local_files_only=True)
    else:
        source = Path("bert-base-uncased (local Hugging Face cache)")
        try:  # a local Hugging Face cache of bert-base-uncased, never a download
            tokenizer = BertTokenizer.from_pretrained("bert-base-uncased", local_files_only=True)
            check_tokenizer(tokenizer, vocab_size, str(source))  # a cache miss may return a stub, not raise
        except Exception as e:  # noqa: BLE001 - replaced by a message naming the expected file
            raise RewardFileError(f"ImageReward: no bert-base-uncased vocab.txt in '{folder}' (or its "
                                  "'bert-base-uncased' subfolder) and none in the local Hugging Face cache; "
                                  f"expected {IMAGE_REWARD_LAYOUT}.") from e
    # BLIP's tokenizer: bert-base-uncased plus a [DEC] bos token and an [ENC] token (vocab 30522 + 2)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    check_tokenizer(tokenizer, vocab_size, str(source))
    return tokenizer


def build_image_reward_model(state: dict[str, torch.Tensor], med_config: dict, source: str) -> ImageRewardModel:
    for key in ("blip.visual_encoder.pos_embed", "blip.visual_encoder.patch_embed.proj.weight",
                "blip.visual_encoder.blocks.0.mlp.fc1.weight"):
        if key not in state:
            raise RewardCheckpointError(f"'{source}' lacks '{key}': not an ImageReward checkpoint.")
    vision = VisionConfig.from_state_dict(state, "blip.visual_encoder.")
    text = TextConfig.from_med_config(med_config, vision.width)
    head_shapes = LinearHead.shapes_in(state, "mlp.", source)
    if head_shapes[min(head_shapes)][1] != text.hidden:
        raise RewardCheckpointError(f"'{source}': the score head takes {head_shapes[min(head_shapes)][1]} features "
                                    f"but med_config.json says the text width is {text.hidden}.")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ImageRewardModel(vision, text, head_shapes).state_dict().items()}
    check_keys(shapes, state, source, ignore_unexpected=UNUSED_PREFIXES)
    model = ImageRewardModel(vision, text, head_shapes)
    model.load_state_dict({k: v for k, v in state.items() if k in shapes})
    return model


def load_image_reward(folder: str | Path, device="cpu", dtype=torch.float32) -> ImageReward:
    folder = require_path(folder, "ImageReward", IMAGE_REWARD_LAYOUT)
    if not folder.is_dir():
        raise RewardFileError(f"ImageReward: '{folder}' is a file; expected {IMAGE_REWARD_LAYOUT}.")
    require_files(folder, ["ImageReward.pt", "med_config.json"], "ImageReward", IMAGE_REWARD_LAYOUT)
    med_config = read_json(folder / "med_config.json")
    tokenizer = load_image_reward_tokenizer(folder, int(med_config.get("vocab_size", 0)))
    state = read_state_dict(folder / "ImageReward.pt")
    with torch.inference_mode(False):  # ordinary tensors: the reward must support autograd in a node
        model = build_image_reward_model(state, med_config, str(folder / "ImageReward.pt"))
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return ImageReward(model, tokenizer)
