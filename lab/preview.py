"""Quick look at compact lab weights without ComfyUI's sampler: DDIM + CFG, extractor accuracy, a grid.

    python -m lab.preview lab/weights/lab_ldm_v1.safetensors --grid grid.png

For a fast check while training; the measurements that count run in ComfyUI (lab/measure.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lab.world import ATTRIBUTES, Scene, attribute_accuracy


def load_compact(path: Path, device: str):
    from safetensors.torch import load_file

    from lab.text_encoder import LabTextEncoder
    from lab.unet import build_unet

    sd = load_file(str(path))
    text = LabTextEncoder.from_compact(sd)
    unet = build_unet()
    unet.load_state_dict({k[5:]: v.float() for k, v in sd.items() if k.startswith("unet.")})
    return unet.to(device).eval(), text.to(device).eval(), load_autoencoder(path, device, sd)


def load_autoencoder(path: Path, device: str, state: dict | None = None):
    """The TAESD of a compact file (a full one or one written with `lab.train --autoencoder-only`)."""
    from safetensors.torch import load_file

    from lab.autoencoder import build_taesd

    state = state if state is not None else load_file(str(path))
    vae = build_taesd()
    vae.load_state_dict({k[4:]: v.float() for k, v in state.items() if k.startswith("vae.")})
    return vae.to(device).eval()


@torch.no_grad()
def ddim(unet, text, vae, prompts: list[str], seed: int, steps: int = 20, cfg: float = 5.0, device="cpu",
         same_noise: bool = False, tok=None, cond: torch.Tensor | None = None):
    """[0, 1] images (B, 3, 64, 64). same_noise: every prompt starts from the seed's one draw (an image
    then does not depend on its batch neighbours), else one draw per prompt. cond: the prompts' context
    when already encoded (e.g. with a learned token)."""
    from lab.train import Tokenizer, sd1_alphas_cumprod

    tok = tok or Tokenizer()
    cond = text(tok(prompts).to(device)) if cond is None else cond
    uncond = text(tok([""] * len(prompts)).to(device))
    alphas = sd1_alphas_cumprod().to(device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1 if same_noise else len(prompts), 4, 8, 8, generator=gen).to(device)
    x = x.expand(len(prompts), -1, -1, -1)
    ts = torch.linspace(999, 0, steps).round().long().to(device)
    for i, t in enumerate(ts):
        a = alphas[t]
        tt = t.float().expand(len(prompts))
        e_c, e_u = unet(torch.cat([x, x]), torch.cat([tt, tt]), context=torch.cat([cond, uncond])).chunk(2)
        eps = e_u + cfg * (e_c - e_u)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        a_next = alphas[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, device=device)
        x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    scale = vae.vae_scale.item() / 0.18215  # latent std the UNet was trained on
    return vae.taesd_decoder(x * scale).clamp(0, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights", type=Path)
    ap.add_argument("--grid", type=Path)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--count", type=int, default=64)
    args = ap.parse_args()
    from devtools.comfy_path import configure_comfy_args

    configure_comfy_args()
    unet, text, vae = load_compact(args.weights, args.device)
    rng = np.random.default_rng(1)
    scenes = [Scene(*(rng.choice(list(d)) for d in ATTRIBUTES.values())) for _ in range(args.count)]
    prompts = [s.caption() for s in scenes]
    images = ddim(unet, text, vae, prompts, seed=0, device=args.device).cpu()
    pixels = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    print("extractor accuracy on full captions:", attribute_accuracy(pixels, scenes))
    if args.grid:
        side = int(np.ceil(np.sqrt(len(pixels))))
        grid = Image.new("RGB", (side * 64, side * 64))
        for i, p in enumerate(pixels):
            grid.paste(Image.fromarray(p), ((i % side) * 64, (i // side) * 64))
        grid.save(args.grid)


if __name__ == "__main__":
    main()
