"""Tiny random reward models written in exactly the users' file layouts (for tests and the demo).

    python -m devtools.reward_models [--out DIR]     # prints the folder

Each entry is what a user would put in ComfyUI/models/rewards/, shrunk:
  prompt_optim_test_clip/          Hugging Face CLIPModel folder (config, safetensors, tokenizer, preprocessor)
  prompt_optim_test_pickscore/     CLIPModel folder without tokenizer files, like yuvalkirstain/PickScore_v1
  prompt_optim_test_aesthetic.pth  LAION aesthetic head state dict (layers.0/2/4/6/7), on the CLIP above
  prompt_optim_test_image_reward/  ImageReward.pt + med_config.json + vocab.txt (official key names)
Weights are seeded, so files are reproducible; the folder is cached under its build key (devtools/asset_cache.py).
"""
from __future__ import annotations

import argparse
import json
import shutil
from collections import OrderedDict
from pathlib import Path

import torch

from devtools.asset_cache import build_inputs, cached
from devtools.comfy_path import CACHE, PACK_ROOT, comfyui_root

DEFAULT_DIR = CACHE / "rewards"
TINY_CLIP_SIZE = 64
FIXTURE_VOCAB = PACK_ROOT / "tests" / "fixtures" / "image_reward" / "vocab.txt"

NAMES = {
    "clip": "prompt_optim_test_clip",
    "pickscore": "prompt_optim_test_pickscore",
    "laion_aesthetic": "prompt_optim_test_aesthetic.pth",
    "image_reward": "prompt_optim_test_image_reward",
}


def _tiny_clip(seed: int):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(image_size=TINY_CLIP_SIZE, patch_size=16, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=64)
    return CLIPModel(config).eval()


def _write_clip_folder(folder: Path, seed: int, with_tokenizer: bool) -> None:
    from transformers import CLIPImageProcessor, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    _tiny_clip(seed).save_pretrained(str(folder), safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": TINY_CLIP_SIZE},
                       crop_size={"height": TINY_CLIP_SIZE, "width": TINY_CLIP_SIZE}).save_pretrained(str(folder))
    if with_tokenizer:
        bundled = comfyui_root() / "comfy" / "sd1_tokenizer"
        CLIPTokenizer.from_pretrained(str(bundled), local_files_only=True).save_pretrained(str(folder))
        for name in ("vocab.json", "merges.txt"):  # hub CLIP folders carry these beside tokenizer.json
            shutil.copy(bundled / name, folder / name)


def _write_aesthetic_head(path: Path, in_features: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    dims = [in_features, 1024, 128, 64, 16, 1]
    state = OrderedDict()
    for index, (a, b) in zip([0, 2, 4, 6, 7], zip(dims, dims[1:])):
        state[f"layers.{index}.weight"] = torch.randn(b, a, generator=gen) / a ** 0.5
        state[f"layers.{index}.bias"] = torch.randn(b, generator=gen) * 0.1
    torch.save(state, path)


def tiny_med_config(vocab_size: int) -> dict:
    return {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 128,
            "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "model_type": "bert",
            "num_attention_heads": 2, "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2,
            "vocab_size": vocab_size, "encoder_width": 64, "add_cross_attention": True}


def _write_image_reward_folder(folder: Path, seed: int) -> None:
    """Official key names and file names; a ViT of width 128 / depth 2 and a 2-layer BERT of width 64."""
    from core.rewards.image_reward import ImageRewardModel, TextConfig, VisionConfig

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURE_VOCAB, folder / "vocab.txt")
    vocab = len(FIXTURE_VOCAB.read_text().split()) + 2  # + [DEC], [ENC]
    med = tiny_med_config(vocab)
    (folder / "med_config.json").write_text(json.dumps(med, indent=2))
    torch.manual_seed(seed)
    vision = VisionConfig(width=128, depth=2, heads=2, patch=16, image_size=224, mlp_hidden=256)
    model = ImageRewardModel(vision, TextConfig.from_med_config(med, vision.width),
                             {0: (1024, 64), 2: (128, 1024), 4: (64, 128), 6: (16, 64), 7: (1, 16)})
    with torch.no_grad():  # nn.Linear's default init is too small to give varied scores through the head
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, p[0].numel() ** -0.5)
        model.blip.visual_encoder.pos_embed.normal_(0, 0.5)
        model.blip.visual_encoder.cls_token.normal_(0, 0.5)
    state = OrderedDict(model.state_dict())
    # the official file also carries BLIP's unused projection heads
    state["blip.vision_proj.weight"] = torch.randn(256, vision.width) * 0.02
    state["blip.vision_proj.bias"] = torch.zeros(256)
    state["blip.text_proj.weight"] = torch.randn(256, 64) * 0.02
    state["blip.text_proj.bias"] = torch.zeros(256)
    torch.save(state, folder / "ImageReward.pt")


def reward_models_dir(out_dir: Path | None = None) -> Path:
    """The folder holding every tiny reward (generated on first use)."""
    def write(folder: Path) -> None:
        _write_clip_folder(folder / NAMES["clip"], seed=1, with_tokenizer=True)
        _write_clip_folder(folder / NAMES["pickscore"], seed=2, with_tokenizer=False)
        _write_aesthetic_head(folder / NAMES["laion_aesthetic"], in_features=64, seed=3)
        _write_image_reward_folder(folder / NAMES["image_reward"], seed=4)

    from core.rewards import image_reward

    tokenizer = comfyui_root() / "comfy" / "sd1_tokenizer"
    sources = [__file__, image_reward, FIXTURE_VOCAB, tokenizer / "vocab.json", tokenizer / "merges.txt"]
    return cached(Path(out_dir or DEFAULT_DIR), "rewards", build_inputs(sources), write)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None)
    print(reward_models_dir(ap.parse_args().out))


if __name__ == "__main__":
    main()
