"""Can one appended token teach the lab model an attribute the prompt does not name? (textual inversion)

The acceptance test of a lab text encoder for MinorityPrompt-like methods: Adam on one token row only,
appended to "a circle" before the end token, trained on images of yellow circles (size, position and
background drawn from the world's distribution) with the model's own denoising loss; then "a circle" +
token and "a circle" alone are sampled from the same seeds (DDIM, cfg 5) and the extractor reads the
color. The token passes when at least half the samples are yellow (the world's prior: 0.05) and the
untrained token (its initial row, same seeds) is not: an appended row changes the context by itself
(its own state, the end token moved by one), so only the difference training makes counts.

    python -m lab.textual_inversion [--weights lab/weights/lab_ldm_v1.safetensors] [--steps 300] [--out PATH]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness

REPORT = harness.ROOT / "benchmarks" / "lab_textual_inversion.md"
PROMPT, TARGET = "a circle", "yellow"
MIN_TARGET_SHARE = 0.5


@dataclass
class InversionResult:
    target_share: float  # samples with the token drawn in the target color
    baseline_share: float  # the same seeds without the token
    untrained_share: float  # the same seeds with the token's initial row
    shape_kept: float  # samples with the token that are still circles
    first_loss: float  # mean denoising loss over the first tenth of the steps
    final_loss: float  # ... and over the last tenth
    token_norm: float


def invert(unet, text, vae, steps: int = 300, batch: int = 16, lr: float = 0.01, samples: int = 16,
           seed: int = 0) -> InversionResult:
    from lab.preview import ddim
    from lab.text_probes import with_token
    from lab.train import Tokenizer, encode_all, sd1_alphas_cumprod
    from lab.world import ATTRIBUTES, Scene, draw, extract

    tokenizer = Tokenizer()
    rng = np.random.default_rng(seed)
    def drawn(attribute: str) -> str:
        values = ATTRIBUTES[attribute]
        return str(rng.choice(list(values), p=list(values.values())))

    scenes = [Scene("circle", TARGET, drawn("size"), drawn("position"), drawn("background")) for _ in range(64)]
    jitter = np.random.default_rng(seed + 1)
    images = np.stack([np.asarray(draw(s, jitter)) for s in scenes])
    latent_std = vae.vae_scale.item() / 0.18215
    latents = encode_all(vae, images, "cpu") / latent_std
    ids = tokenizer([PROMPT])
    for p in [*unet.parameters(), *text.parameters(), *vae.parameters()]:
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    table = text.vocabulary_table(seed)
    token = table[int(tokenizer(["cool"])[0, 1])].clone().requires_grad_(True)  # the authors' init word
    initial = token.detach().clone()
    opt = torch.optim.Adam([token], lr=lr)
    alphas = sd1_alphas_cumprod()
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(latents), (batch,), generator=gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        noise = torch.randn(latents[idx].shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * latents[idx] + (1 - a).sqrt() * noise
        context = text.encode_embeddings(with_token(text, ids, token)[0]).expand(batch, -1, -1)
        loss = (unet(xt, t.float(), context=context) - noise).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    def colors(row: torch.Tensor | None) -> list[dict]:
        """What the extractor reads in `samples` seeds of PROMPT, with `row` appended (None: plain)."""
        with torch.no_grad():
            cond = None if row is None else text.encode_embeddings(with_token(text, ids, row)[0])
            images = [ddim(unet, text, vae, [PROMPT], seed=1000 + i, cond=cond, tok=tokenizer)[0]
                      for i in range(samples)]
        return [extract((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for im in images]

    def share(read: list[dict]) -> float:
        return sum(f["color"] == TARGET for f in read) / samples

    found = colors(token.detach())
    return InversionResult(target_share=share(found), baseline_share=share(colors(None)),
                           untrained_share=share(colors(initial)),
                           shape_kept=sum(f["shape"] == "circle" for f in found) / samples,
                           first_loss=float(np.mean(losses[:max(1, steps // 10)])) if losses else float("nan"),
                           final_loss=float(np.mean(losses[-max(1, steps // 10):])) if losses else float("nan"),
                           token_norm=float(token.detach().norm()))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=harness.ROOT / "lab" / "weights" / "lab_ldm_v1.safetensors")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    harness.add_out_option(ap, REPORT)
    args = ap.parse_args(argv)
    from devtools.comfy_path import configure_comfy_args
    from lab.preview import load_compact

    configure_comfy_args()  # the tokenizer is ComfyUI's
    torch.set_num_threads(2)
    start = time.time()
    unet, text, vae = load_compact(args.weights, "cpu")
    text = text.with_full_vocabulary()
    result = invert(unet, text, vae, steps=args.steps, lr=args.lr, samples=args.samples, seed=args.seed)
    weights = args.weights.resolve()
    shown = weights.relative_to(harness.ROOT) if weights.is_relative_to(harness.ROOT) else weights
    passed = "passes" if result.target_share >= MIN_TARGET_SHARE > result.untrained_share else "fails"
    body = [f"Model: `{shown}`. One token row (init: the vocabulary row of 'cool'), appended to '{PROMPT}', "
            f"Adam lr {args.lr}, {args.steps} steps of batch 16 on 64 images of {TARGET} circles; then "
            f"{args.samples} seeds sampled with and without the token (DDIM 20 steps, cfg 5). Method: "
            "`lab/textual_inversion.py`.", "",
            "| measure | value |", "|---|---|",
            f"| samples drawn {TARGET}, with the token | {result.target_share:.2f} "
            f"(≥ {MIN_TARGET_SHARE}: {passed}) |",
            f"| samples drawn {TARGET}, same seeds without it | {result.baseline_share:.2f} |",
            f"| samples drawn {TARGET}, same seeds with the untrained token | {result.untrained_share:.2f} |",
            f"| samples with the token still drawn as circles | {result.shape_kept:.2f} |",
            f"| denoising loss, first tenth of the steps → last tenth | {result.first_loss:.4f} → "
            f"{result.final_loss:.4f} |",
            f"| token norm after training | {result.token_norm:.2f} |"]
    harness.write_report(args.out, "Textual inversion of one appended token in the lab", "lab.textual_inversion",
                         body, cuda=False, wall_s=time.time() - start)


if __name__ == "__main__":
    main()
