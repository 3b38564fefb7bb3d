"""Hugging Face CLIPModel folders (openai/clip-vit-large-patch14, PickScore_v1, ...) as a ClipBackbone."""
from __future__ import annotations

from pathlib import Path

import torch

from .clip_backbone import HFClipBackbone
from .local_files import (RewardCheckpointError, RewardFileError, check_tokenizer, first_existing, read_json,
                          require_files, require_path)
from .preprocess import ImageTransform

HF_CLIP_LAYOUT = ("a Hugging Face CLIPModel folder (config.json + model.safetensors or pytorch_model.bin, "
                  "optionally vocab.json, merges.txt, preprocessor_config.json), e.g. openai/clip-vit-large-patch14")


def _weights_present(folder: Path) -> bool:
    return any((folder / n).exists() for n in ("model.safetensors", "pytorch_model.bin",
                                               "model.safetensors.index.json", "pytorch_model.bin.index.json"))


def is_hf_clip_folder(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "config.json").exists() and read_json(path / "config.json").get("model_type") == "clip"


def load_clip_tokenizer(folder: Path, fallback_dir: Path | None, vocab_size: int):
    from transformers import CLIPTokenizer

    # a Hugging Face hub snapshot keeps the tokenizer beside the weights; PickScore_v1 ships none,
    # and every CLIP shares one BPE vocabulary, so ComfyUI's bundled copy is a sound fallback
    candidates = [folder, folder / "tokenizer", fallback_dir]
    source = (first_existing(candidates, ["vocab.json", "merges.txt"])
              or first_existing(candidates, ["tokenizer.json"]))
    if source is None:
        raise RewardFileError(f"no CLIP tokenizer (vocab.json + merges.txt, or tokenizer.json) in '{folder}' or its "
                              "'tokenizer' subfolder, and no fallback folder was given.")
    tokenizer = CLIPTokenizer.from_pretrained(str(source), local_files_only=True)
    check_tokenizer(tokenizer, vocab_size, str(source))
    return tokenizer


def load_hf_clip(folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 fallback_tokenizer_dir: str | Path | None = None, what: str = "CLIP model") -> HFClipBackbone:
    from transformers import CLIPModel

    folder = require_path(folder, what, HF_CLIP_LAYOUT)
    if not folder.is_dir():
        raise RewardFileError(f"{what}: '{folder}' is a file; expected {HF_CLIP_LAYOUT}.")
    require_files(folder, ["config.json"], what, HF_CLIP_LAYOUT)
    if not _weights_present(folder):
        raise RewardFileError(f"{what}: folder '{folder}' has no model.safetensors or pytorch_model.bin; "
                              f"expected {HF_CLIP_LAYOUT}.")
    config = read_json(folder / "config.json")
    if config.get("model_type") != "clip":
        raise RewardCheckpointError(f"{what}: '{folder}/config.json' describes a '{config.get('model_type')}' "
                                    "model, not a CLIPModel (model_type 'clip').")
    # weights must be ordinary tensors: ComfyUI runs nodes in inference mode, rewards need autograd
    with torch.inference_mode(False):
        model, info = CLIPModel.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
        # old exports carry position_ids buffers that newer transformers no longer stores: harmless
        info["unexpected_keys"] = [k for k in info.get("unexpected_keys", []) if not k.endswith("position_ids")]
        problems = {k: sorted(v)[:8] for k, v in info.items()
                    if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if problems:
            raise RewardCheckpointError(f"{what}: the weights in '{folder}' do not match its config.json: {problems}")
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    tokenizer = load_clip_tokenizer(folder, Path(fallback_tokenizer_dir) if fallback_tokenizer_dir else None,
                                    int(model.config.text_config.vocab_size))
    size = int(model.config.vision_config.image_size)
    transform = (ImageTransform.from_hf_preprocessor(read_json(folder / "preprocessor_config.json"))
                 if (folder / "preprocessor_config.json").exists() else ImageTransform(size))
    return HFClipBackbone(model, tokenizer, transform)
