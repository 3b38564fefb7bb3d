"""The lab reward: a small CLIP (Hugging Face CLIPModel) trained to match lab images with their captions.

It is used like any `clip` reward (cosine of image and text embeddings), from a folder in
models/rewards. Training is contrastive with every consistent caption as a positive: a caption is a
match for an image when every attribute it names is the image's (so "a red circle" matches a small red
circle on the left), which teaches the score to check each named attribute instead of the exact words.

    python -m lab.reward --out lab/weights/lab_clip_v1.safetensors [--steps N]

Stored compactly (the embedding rows of the world's tokens only); `lab.checkpoint` writes the full folder.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from lab.world import Scene

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
VOCAB = 49408


def clip_config():
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(image_size=64, patch_size=8, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=64)


def named_attributes(caption: str) -> set[str]:
    return set(caption.replace(",", " ").split())


@functools.lru_cache(maxsize=None)
def consistent(scene: Scene, caption: str) -> bool:
    """Every attribute word of the caption is one of the scene's values."""
    from lab.world import ATTRIBUTES

    words = named_attributes(caption)
    values = set(scene.__dict__.values())
    return all(w in values for w in words if any(w in d for d in ATTRIBUTES.values()))


def train(steps: int, batch: int, seed: int, log) -> torch.nn.Module:
    from transformers import CLIPModel

    from lab.train import Tokenizer, make_dataset, random_caption

    torch.manual_seed(seed)
    model = CLIPModel(clip_config())
    images, scenes = make_dataset(6000, seed + 100)
    data = torch.from_numpy(images).permute(0, 3, 1, 2)
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    tokenizer = Tokenizer()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for step in range(steps):
        idx = torch.randint(len(data), (batch,), generator=gen).tolist()
        captions = [random_caption(scenes[i], rng, keep=0.6) for i in idx]
        positive = torch.tensor([[consistent(scenes[i], c) for c in captions] for i in idx])
        pixels = (data[idx].float() / 255 - mean) / std
        ids = tokenizer(captions)
        out = model(input_ids=ids, pixel_values=pixels)
        logits = out.logits_per_image  # images x captions, scaled cosines
        loss = 0.5 * (_multi_positive_nll(logits, positive) + _multi_positive_nll(logits.t(), positive.t()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = 1e-3 * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.step()
        log("reward", step, steps, loss.item())
    return model.eval()


def _multi_positive_nll(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """-log of the softmax mass on the consistent captions, per row."""
    return -(torch.logsumexp(logits.masked_fill(~positive, -1e4), 1) - torch.logsumexp(logits, 1)).mean()


def compact_state(model, token_ids: list[int]) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().float().contiguous() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    key = "text_model.embeddings.token_embedding.weight"
    ids = torch.tensor(token_ids)
    sd[key] = sd[key][ids].contiguous()
    sd["lab.token_ids"] = ids
    return {k: (v.half() if v.is_floating_point() and k != "logit_scale" else v) for k, v in sd.items()}


def write_folder(compact: dict[str, torch.Tensor], folder: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A Hugging Face CLIPModel folder (config, safetensors, tokenizer, preprocessor) from the compact file."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    sd = {k: v.float() for k, v in compact.items() if not k.startswith("lab.")}
    key = "text_model.embeddings.token_embedding.weight"
    trained = sd[key]
    table = torch.randn(VOCAB, trained.shape[1], generator=torch.Generator().manual_seed(seed)) * trained.std()
    table[compact["lab.token_ids"]] = trained
    sd[key] = table
    model = CLIPModel(clip_config())
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or [m for m in missing if not m.endswith("position_ids")]:
        raise ValueError(f"lab reward weights do not fit the config: missing {missing}, unexpected {unexpected}")
    folder.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(str(folder), safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                       image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD)).save_pretrained(str(folder))
    CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True).save_pretrained(str(folder))
    return folder


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from devtools.comfy_path import configure_comfy_args

    configure_comfy_args()
    from lab.train import Tokenizer, world_token_ids

    start = time.time()

    def log(stage, step, total, loss):
        if step % 50 == 0 or step == total - 1:
            print(f"{stage} {step + 1}/{total} loss {loss:.4f} ({time.time() - start:.0f} s)", flush=True)

    model = train(args.steps, args.batch, args.seed, log)
    from safetensors.torch import save_file

    meta = dict(steps=args.steps, batch=args.batch, seed=args.seed, seconds=round(time.time() - start))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(compact_state(model, world_token_ids(Tokenizer())), str(args.out), metadata={"lab": json.dumps(meta)})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) in {meta['seconds']} s")


if __name__ == "__main__":
    main()
