"""Cost of scoring images with full-size reward models, and of the gradient w.r.t. the images.

    python -m benchmarks.reward_cost [--batch 1 4] [--reps 3] [--out PATH]

Architectures are the real ones at full size with random weights (timing does not depend on the
values): ImageReward v1.0 (ViT-L/16 + 12-layer BERT, built from the official key list in
tests/fixtures/image_reward), CLIP ViT-L/14 (openai/clip-vit-large-patch14's config) as the `clip`
reward, and the LAION aesthetic head on it. Input: 512 x 512 images (resized inside to 224).
Runs on CUDA when available (float16), else on the CPU (float32); writes benchmarks/reward_cost.md (or --out).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time

import torch

from benchmarks import harness
from benchmarks.bench_models import clip_vit_l14_config
from core.rewards.aesthetic import LaionAesthetic
from core.rewards.clip_backbone import HFClipBackbone
from core.rewards.clip_rewards import ClipSimilarity
from core.rewards.image_reward import ImageReward, build_image_reward_model, load_image_reward_tokenizer
from core.rewards.linear_head import LinearHead
from core.rewards.preprocess import ImageTransform
from devtools.comfy_path import comfyui_root

MODULE = "benchmarks.reward_cost"
REPORT = harness.ROOT / "benchmarks" / "reward_cost.md"
FIXTURE = harness.ROOT / "tests" / "fixtures" / "image_reward"
PROMPT = "an astronaut riding a horse on the moon, highly detailed"
IMAGE_REWARD, CLIP = "image_reward (ViT-L/16 + BERT)", "clip (ViT-L/14)"


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
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel(clip_vit_l14_config()).to(device, dtype).eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(str(comfyui_root() / "comfy" / "sd1_tokenizer"), local_files_only=True)
    return HFClipBackbone(model, tokenizer, ImageTransform(224))


def measure(reward, batch, reps, device):
    images = torch.rand(batch, 3, 512, 512, device=device)
    cuda = device.type == "cuda"

    def run(grad: bool):
        x = images.clone().requires_grad_(grad)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.set_grad_enabled(grad):
            score = reward(x, PROMPT).sum()
            if grad:
                score.backward()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    out = {}
    for grad in (False, True):
        run(grad)  # warm-up
        harness.reset_peak_memory(cuda)
        out[grad] = statistics.median(run(grad) for _ in range(reps))
    out["peak"] = harness.peak_memory_bytes(cuda)
    return out


def introduction(cuda: bool, dtype, reps: int) -> list[str]:
    text = ("Random weights at full size (the cost does not depend on their values): ImageReward v1.0, built from "
            "the official key list in `tests/fixtures/image_reward`; CLIP ViT-L/14 with "
            "openai/clip-vit-large-patch14's configuration as the `clip` reward; the LAION aesthetic head on that "
            f"CLIP. 512 × 512 random images (resized inside to 224), {dtype}, median of {reps} after a warm-up.")
    if not cuda:
        text += " This run used the CPU; on a CUDA machine the same command measures the GPU in float16."
    return [text]


def reading(rows: list[dict], cuda: bool, dtype) -> list[str]:
    """What the numbers say, written from the numbers of this run."""
    ratios = [row["grad_s"] / row["score_s"] for row in rows]
    bullets = [f"Scoring with the image gradient (what DATE and IPGO need at every update) cost "
               f"{min(ratios):.2f}–{max(ratios):.2f}× a plain score across the rewards and batches here: the "
               "backward through the image encoder (and, for ImageReward, the BERT fusion) is the difference."]
    smallest = min(row["batch"] for row in rows)
    per_image = {row["label"]: row["grad_s"] / smallest for row in rows if row["batch"] == smallest}
    if IMAGE_REWARD in per_image and CLIP in per_image:
        bullets.append(f"At batch {smallest}, one evaluation with gradient took {per_image[IMAGE_REWARD]:.2f} s per "
                       f"image for ImageReward and {per_image[CLIP]:.2f} s for CLIP ViT-L/14 (ViT-L/14 has 257 "
                       "tokens at 224 px against ImageReward's ViT-L/16 197).")
    if cuda:
        bullets.append("The CUDA peak is reset before each row's timed runs, so it shows each reward and batch on "
                       "its own, the reward's weights included.")
    else:
        first = rows[0]
        bullets.append(f"On the CPU the peak column is the process's cumulative peak RSS, so every row shows at "
                       "least the peak reached while building the models: the shared CLIP ViT-L/14, then "
                       f"{first['label']} ({first['params']:.0f} M parameters in {dtype}), whose state dict and model "
                       "are in memory at once.")
    return harness.reading_section(bullets)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--reps", type=int, default=3)
    harness.add_out_option(ap, REPORT)
    args = ap.parse_args()
    start = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.float16 if cuda else torch.float32
    clip = clip_l14(device, dtype)
    head = LinearHead({0: (1024, 768), 2: (128, 1024), 4: (64, 128), 6: (16, 64), 7: (1, 16)}).to(device, dtype)
    rewards = {IMAGE_REWARD: lambda: image_reward(device, dtype),
               CLIP: lambda: ClipSimilarity(clip),
               "laion_aesthetic (ViT-L/14 vision + head)": lambda: LaionAesthetic(clip, head)}
    rows = []
    for label, make in rewards.items():
        reward = make()
        params = sum(p.numel() for p in reward.parameters()) / 1e6
        for batch in args.batch:
            measured = measure(reward, batch, args.reps, device)
            rows.append(dict(label=label, params=params, batch=batch, score_s=measured[False], grad_s=measured[True],
                             peak=measured["peak"]))
            harness.log(f"[reward_cost] {label}, batch {batch}: {measured[True]:.2f} s with gradient")
        del reward
    body = [*introduction(cuda, dtype, args.reps), "",
            "| reward | parameters | batch | score (s) | score + image gradient (s) | ratio | peak memory* |",
            "|---|---|---|---|---|---|---|"]
    body += [f"| {r['label']} | {r['params']:.0f} M | {r['batch']} | {r['score_s']:.2f} | {r['grad_s']:.2f} | "
             f"{r['grad_s'] / r['score_s']:.2f} | {harness.gib(r['peak'])} |" for r in rows]
    body += ["", "*peak: CUDA max allocated over the row's timed score + gradient runs." if cuda else
             "*peak: the process's peak RSS so far (cumulative over the rows; includes building the models)."]
    body += reading(rows, cuda, dtype)
    harness.write_report(args.out, "Cost of reward scoring and of the image gradient (full-size architectures)",
                         MODULE, body, cuda, time.perf_counter() - start)


if __name__ == "__main__":
    main()
