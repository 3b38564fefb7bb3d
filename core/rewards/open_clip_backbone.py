"""open_clip checkpoints as a ClipBackbone: HPSv2, laion CLIP folders, bare weight files.

open_clip_torch is an optional extra of the pack, imported only when one of these rewards is loaded.
Nothing here downloads: models are built from architecture configs with random weights
(`pretrained=None`, no pretrained towers), then the user's file is loaded with safetensors or
`torch.load(weights_only=True)` and its keys are checked against the model's. Configs whose text
tower or tokenizer comes from the Hugging Face hub are refused, because open_clip would fetch them.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .clip_backbone import ClipBackbone
from .clip_rewards import ClipSimilarity
from .local_files import (WEIGHT_SUFFIXES, RewardArchitectureError, RewardCheckpointError, RewardFileError, check_keys,
                          read_state_dict, require_path)
from .preprocess import ImageTransform

OPEN_CLIP_CONFIG = "open_clip_config.json"
# weight files of a hub-style open_clip folder, preferred first (open_clip's own order)
OPEN_CLIP_FOLDER_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                            "open_clip_pytorch_model.bin")
OPEN_CLIP_LAYOUT = (f"an open_clip folder ({OPEN_CLIP_CONFIG} + open_clip_model.safetensors or "
                    "open_clip_pytorch_model.bin, the layout of the laion/... repositories on the Hugging Face hub), "
                    "or one weights file (.safetensors, .bin, .pt, .pth) plus its open_clip architecture name, "
                    "e.g. ViT-H-14")
HPSV2_LAYOUT = ("HPS_v2_compressed.pt (or HPS_v2.1_compressed.pt) from the HPSv2 release, in "
                "ComfyUI/models/rewards/")


class RewardDependencyError(ImportError):
    """An optional package a reward needs is not installed; the message says how to install it."""


def import_open_clip(what: str):
    """open_clip, or an error telling a ComfyUI user which package to install."""
    try:
        import open_clip
    except ImportError as e:
        message = f"open_clip is needed for {what}; install it into ComfyUI's Python with: pip install open_clip_torch"
        if e.name not in (None, "open_clip"):  # installed, but one of its own imports failed
            message += f" (importing it failed: {e})"
        raise RewardDependencyError(message) from e
    return open_clip


@dataclass(frozen=True)
class SquashTransform(ImageTransform):
    """open_clip's 'squash' resize mode: stretch to size x size (aspect not kept, no crop), then normalize."""

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) == (self.size, self.size):
            return images
        return F.interpolate(images, size=(self.size, self.size), mode="bicubic", align_corners=False, antialias=True)


def transform_for(open_clip, model: nn.Module, source: str) -> ImageTransform:
    """The differentiable equivalent of the model's own (PIL) eval preprocessing."""
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise RewardCheckpointError(f"'{source}': the model takes {tuple(size)} images; only square inputs are "
                                        "supported.")
        size = size[0]
    interpolation = cfg.get("interpolation", "bicubic")
    resize_mode = cfg.get("resize_mode", "shortest")
    if interpolation != "bicubic" or resize_mode not in ("shortest", "squash"):
        raise RewardCheckpointError(f"'{source}': the model's preprocessing ({interpolation} interpolation, "
                                    f"'{resize_mode}' resize) is not supported; supported: bicubic with 'shortest' "
                                    "(resize + center crop) or 'squash'.")
    transform_class = SquashTransform if resize_mode == "squash" else ImageTransform
    mean = tuple(float(v) for v in cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", open_clip.OPENAI_DATASET_STD))
    return transform_class(int(size), mean, std)


class OpenClipBackbone(ClipBackbone):
    """An open_clip CLIP (or CustomTextCLIP) model + its tokenizer."""

    def __init__(self, model: nn.Module, tokenizer, transform: ImageTransform):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.transform = transform

    def _reference(self) -> torch.Tensor:
        """A parameter whose device and dtype the inputs must follow."""
        return self.model.logit_scale

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        ref = self._reference()
        pixels = self.transform(images.to(ref.device, ref.dtype))
        return self.model.encode_image(pixels)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(prompts)).to(self._reference().device)
        return self.model.encode_text(tokens)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    @property
    def embed_dim(self) -> int:
        output_dim = getattr(getattr(self.model, "visual", None), "output_dim", None)
        return int(output_dim) if output_dim is not None else super().embed_dim


class _DropRandomInitNotice(logging.Filter):
    """open_clip logs 'No pretrained weights loaded ... initialized randomly' for every build with
    pretrained=None; here the weights are loaded right after, so the notice would only mislead users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


def _refuse_hub_parts(model_cfg: dict, name: str, source: str) -> None:
    """Text towers / tokenizers named by a Hugging Face id would be fetched from the hub by open_clip."""
    text_cfg = model_cfg.get("text_cfg", {}) or {}
    hub_parts = [f"{key}={text_cfg[key]!r}" for key in ("hf_model_name", "hf_tokenizer_name") if text_cfg.get(key)]
    if hub_parts or "siglip" in name.lower():
        detail = ", ".join(hub_parts) or "a SigLIP tokenizer"
        raise RewardCheckpointError(f"'{source}': this open_clip model uses a Hugging Face text tower or tokenizer "
                                    f"({detail}) that open_clip would download; only models with open_clip's own "
                                    "CLIP text tower and tokenizer are supported (e.g. ViT-L-14, ViT-H-14).")


def _matching_scalar_shapes(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Older checkpoints store logit_scale / logit_bias as shape [1] instead of a scalar, or the reverse."""
    model_state = model.state_dict()
    fixed = dict(state_dict)
    for key in ("logit_scale", "logit_bias"):
        if key in fixed and key in model_state and fixed[key].numel() == model_state[key].numel() == 1:
            fixed[key] = fixed[key].reshape(model_state[key].shape)
    return fixed


def _folder_weights(folder: Path, what: str) -> Path:
    for name in OPEN_CLIP_FOLDER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise RewardFileError(f"{what}: folder '{folder}' has {OPEN_CLIP_CONFIG} but none of "
                          f"{', '.join(OPEN_CLIP_FOLDER_WEIGHTS)}; expected {OPEN_CLIP_LAYOUT}.")


def _build_model(open_clip, path: Path, architecture: str | None, what: str):
    """(random-weight model, tokenizer, weights file) for a folder or a weights file + architecture."""
    if path.is_dir():
        config_path = path / OPEN_CLIP_CONFIG
        if not config_path.is_file():
            raise RewardFileError(f"{what}: folder '{path}' has no {OPEN_CLIP_CONFIG}; expected {OPEN_CLIP_LAYOUT}.")
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
            raise RewardCheckpointError(f"{what}: '{config_path}' has no 'model_cfg' section; it is not an open_clip "
                                        "model config.")
        _refuse_hub_parts(config["model_cfg"], "", str(config_path))
        weights = _folder_weights(path, what)
        # 'local-dir:' reads the architecture and preprocessing from the folder's config;
        # load_weights=False: the weights are loaded below, with our key checks
        model_name = f"local-dir:{path}"
        build = dict(load_weights=False)
    else:
        if path.suffix.lower() not in WEIGHT_SUFFIXES:
            raise RewardFileError(f"{what}: '{path}' is not a weights file ({', '.join(WEIGHT_SUFFIXES)}); "
                                  f"expected {OPEN_CLIP_LAYOUT}.")
        if not architecture:
            raise RewardArchitectureError(f"{what}: '{path}' is a bare weights file; give its open_clip "
                                          "architecture name too (e.g. ViT-H-14, ViT-L-14).")
        if ":" in architecture:  # 'hf-hub:...' would download; 'local-dir:...' belongs in `path`
            raise RewardArchitectureError(f"{what}: architecture '{architecture}' must be an open_clip model "
                                          "name such as ViT-H-14, not a hub id or a folder.")
        model_cfg = open_clip.get_model_config(architecture)
        if model_cfg is None:
            raise RewardArchitectureError(f"{what}: '{architecture}' is not an open_clip architecture known to "
                                          f"open_clip {open_clip.__version__}; e.g. ViT-H-14, ViT-L-14, ViT-B-32 "
                                          "(open_clip.list_models() lists all).")
        _refuse_hub_parts(model_cfg, architecture, str(path))
        weights = path
        model_name = architecture
        build = dict(pretrained=None)
    notice_filter = _DropRandomInitNotice()
    logging.getLogger().addFilter(notice_filter)
    try:
        model = open_clip.create_model(model_name, device="cpu", precision="fp32", pretrained_image=False,
                                       pretrained_text=False, **build)
    finally:
        logging.getLogger().removeFilter(notice_filter)
    tokenizer = open_clip.get_tokenizer(model_name)
    return model, tokenizer, weights


def load_open_clip(path: str | Path, architecture: str | None = None, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, what: str = "open_clip model") -> OpenClipBackbone:
    """An open_clip model from local files only: a hub-style folder, or a weights file + architecture name.

    Raises RewardFileError (a FileNotFoundError) for missing files, RewardCheckpointError (a ValueError)
    naming the file when its keys do not fit the architecture, RewardDependencyError without open_clip."""
    path = require_path(path, what, OPEN_CLIP_LAYOUT)
    open_clip = import_open_clip(what)
    # ComfyUI runs nodes in inference mode; weights made there could never take part in autograd
    with torch.inference_mode(False):
        model, tokenizer, weights = _build_model(open_clip, path, architecture, what)
        state_dict = _matching_scalar_shapes(model, read_state_dict(weights))
        try:
            check_keys({k: v.shape for k, v in model.state_dict().items()}, state_dict, str(weights))
        except RewardCheckpointError as e:
            built_from = f"{path / OPEN_CLIP_CONFIG}" if path.is_dir() else f"open_clip architecture '{architecture}'"
            raise RewardCheckpointError(f"{e} (compared with {built_from}; is that the file's architecture?)") from None
        model.load_state_dict(state_dict, strict=True)
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    tokenizer_vocab = getattr(tokenizer, "vocab_size", None)
    model_vocab = getattr(model, "vocab_size", None)
    if tokenizer_vocab and model_vocab and tokenizer_vocab > model_vocab:
        raise RewardCheckpointError(f"'{weights}': open_clip's tokenizer has {tokenizer_vocab} tokens but the "
                                    f"model's vocabulary has {model_vocab}: the architecture does not fit.")
    return OpenClipBackbone(model, tokenizer, transform_for(open_clip, model, str(weights)))


def load_open_clip_similarity(path: str | Path, architecture: str | None = None, device: torch.device | str = "cpu",
                              dtype: torch.dtype = torch.float32) -> ClipSimilarity:
    """CLIP similarity (cosine) on an open_clip model."""
    return ClipSimilarity(load_open_clip(path, architecture, device, dtype, what="CLIP similarity"), family="clip")


def load_hpsv2(path: str | Path, architecture: str = "ViT-H-14", device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> ClipSimilarity:
    """HPSv2: cosine of image and prompt embeddings of open_clip ViT-H-14 with the HPS weights
    (the file stores {'state_dict': ...}, loaded strictly into a stock ViT-H-14)."""
    require_path(path, "HPSv2", HPSV2_LAYOUT)
    return ClipSimilarity(load_open_clip(path, architecture, device, dtype, what="HPSv2"), family="hpsv2")
