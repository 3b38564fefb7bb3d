"""Cost of scoring images with full-size reward models, and of the gradient w.r.t. the images.

    python -m benchmarks.reward_cost [--batch 1 4] [--reps 3]

Architectures are the real ones at full size with random weights (timing does not depend on the
values): ImageReward v1.0 (ViT-L/16 + 12-layer BERT, built from the official key list in
tests/fixtures/image_reward), CLIP ViT-L/14 (openai/clip-vit-large-patch14's config) as the `clip`
reward, and the LAION aesthetic head on it. Input: 512 x 512 images (resized inside to 224).
Runs on CUDA when available, else on the CPU; prints a markdown table.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from core.rewards.aesthetic import LaionAesthetic
from core.rewards.clip_backbone import HFClipBackbone
from core.rewards.clip_rewards import ClipSimilarity
from core.rewards.image_reward import ImageReward, build_image_reward_model, load_image_reward_tokenizer
from core.rewards.linear_head import LinearHead
from core.rewards.preprocess import ImageTransform
from devtools.comfy_path import comfyui_root

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "image_reward"
PROMPT = "an astronaut riding a horse on the moon, highly detailed"


def image_reward(device, dtype) -> ImageReward:
    spec = importlib.util.spec_from_file_location("fill_rule", FIXTURE / "fill_rule.py")
    fill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fill)
    keys = json.loads((FIXTURE / "keys.json").read_text())
    med = json.loads((FIXTURE / "med_config.json").read_text())
    state = {e["key"]: fill.fill_value(e["key"], e["shape"]) for e in keys}
    model = build_image_reward_model(state, med, "official keys").to(device, dtype)
    return ImageReward(model, load_image_reward_tokenizer(FIXTURE, med["vocab_size"]))


def clip_l14(device, dtype) -> HFClipBackbone:
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    config = CLIPConfig(text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                         num_hidden_layers=12, projection_dim=768),
                        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                           num_hidden_layers=24, patch_size=14, image_size=224, projection_dim=768),
                        projection_dim=768)
    model = CLIPModel(config).to(device, dtype).eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(str(comfyui_root() / "comfy" / "sd1_tokenizer"), local_files_only=True)
    return HFClipBackbone(model, tokenizer, ImageTransform(224))


def peak_bytes(device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(reward, batch, reps, device):
    images = torch.rand(batch, 3, 512, 512, device=device)

    def run(grad: bool):
        x = images.clone().requires_grad_(grad)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.set_grad_enabled(grad):
            score = reward(x, PROMPT).sum()
            if grad:
                score.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    out = {}
    for grad in (False, True):
        run(grad)  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        out[grad] = statistics.median(run(grad) for _ in range(reps))
    out["peak"] = peak_bytes(device)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()}, " \
        f"{torch.get_num_threads()} threads)"
    print(f"device: {name}, torch {torch.__version__}, {dtype}, 512x512 inputs, median of {args.reps}")
    print("| reward | parameters | batch | score (s) | score + image gradient (s) | ratio | peak memory* |")
    print("|---|---|---|---|---|---|---|")
    clip = clip_l14(device, dtype)
    head = LinearHead({0: (1024, 768), 2: (128, 1024), 4: (64, 128), 6: (16, 64), 7: (1, 16)}).to(device, dtype)
    rewards = {"image_reward (ViT-L/16 + BERT)": lambda: image_reward(device, dtype),
               "clip (ViT-L/14)": lambda: ClipSimilarity(clip),
               "laion_aesthetic (ViT-L/14 vision + head)": lambda: LaionAesthetic(clip, head)}
    for label, make in rewards.items():
        reward = make()
        params = sum(p.numel() for p in reward.parameters()) / 1e6
        for batch in args.batch:
            r = measure(reward, batch, args.reps, device)
            print(f"| {label} | {params:.0f} M | {batch} | {r[False]:.2f} | {r[True]:.2f} | "
                  f"{r[True] / r[False]:.2f} | {r['peak'] / 2**30:.2f} GiB |")
        del reward
    print("*peak: CUDA max allocated since the last reset, or the process's peak RSS on the CPU (cumulative).")


if __name__ == "__main__":
    main()
