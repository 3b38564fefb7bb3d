"""Train the lab's text-to-image model in the lab world: autoencoder, then denoiser + text encoder.

    python -m lab.train --out lab/weights/lab_ldm_v1.safetensors [--device cuda] [--ae-steps N] [--steps N]

Fixed seeds; the defaults are what produced the committed weights (see lab/README.md for times).
Writes one compact safetensors file (narrow UNet, low-rank text layer, TAESD); `python -m lab.checkpoint`
expands it into an SD1.x single-file checkpoint.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lab.unet import WIDTH
from lab.world import ATTRIBUTES, Scene, attribute_accuracy, draw, sample_scenes

NAMEABLE = ("size", "color", "position", "background")  # the shape is always named


def random_caption(scene: Scene, rng: np.random.Generator, keep: float = 0.5) -> str:
    return scene.caption(("shape",) + tuple(a for a in NAMEABLE if rng.random() < keep))


def make_dataset(count: int, seed: int) -> tuple[np.ndarray, list[Scene]]:
    """count jittered images (N x 64 x 64 x 3 uint8) and their scenes."""
    scenes = sample_scenes(count, seed)
    jitter = np.random.default_rng(seed + 1)
    return np.stack([np.asarray(draw(s, jitter)) for s in scenes]), scenes


def sd1_alphas_cumprod() -> torch.Tensor:
    """SD1.x's training schedule (scaled linear betas 0.00085 -> 0.012, 1000 steps), as ComfyUI samples it."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class Tokenizer:
    """ComfyUI's SD1 tokenizer: exactly the ids CLIP Text Encode feeds (77 per prompt, padded with EOS)."""

    def __init__(self):
        import comfy.sd1_clip

        self._tok = comfy.sd1_clip.SD1Tokenizer()
        self._cache: dict[str, list[int]] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for t in texts:
            if t not in self._cache:
                chunks = self._tok.tokenize_with_weights(t)["l"]
                self._cache[t] = [int(i) for i, *_ in chunks[0]]
            rows.append(self._cache[t])
        return torch.tensor(rows, dtype=torch.long)


def world_token_ids(tokenizer: Tokenizer) -> list[int]:
    """Every token id a caption of the world can produce (plus BOS/EOS)."""
    words = {w for dist in ATTRIBUTES.values() for w in dist} | {"a", "in", "the", "on", ",", "background"}
    texts = [""] + sorted(words) + [Scene("circle", "red", "large", "left", "white").caption()]
    return sorted({int(i) for row in tokenizer(texts) for i in row})


def train_autoencoder(images: np.ndarray, steps: int, batch: int, device: str, seed: int, log,
                      full_steps: int = 0) -> torch.nn.Module:
    """TAESD on random 32 px crops (the architecture is convolutional; 4x cheaper than full images), then
    `full_steps` on whole 64 px images at half the batch.

    Plain reconstruction loss alone learns brightness first and color very late (after 400 steps every
    shape still decoded in one hue), so two terms steer it: the error of 4x4-pooled colors, and an anchor
    pulling latent channels 0-2 towards the 8x8-pooled RGB (channel 3 stays free for edges).
    Crops alone left off-color pixels in the decoded image's corners (a crop's edge is not an image edge)
    and blurrier outlines; the whole-image phase reduces both (shape read back from reconstructions: 0.68
    -> 0.84, benchmarks/lab_training.md)."""
    import torch.nn.functional as F

    from lab.autoencoder import build_taesd, decode, encode

    torch.manual_seed(seed)
    vae = build_taesd(device)
    lr = 2e-3
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    data = torch.from_numpy(images).permute(0, 3, 1, 2)
    gen = torch.Generator().manual_seed(seed)
    total = steps + full_steps
    for step in range(total):
        if step < steps:
            idx = torch.randint(len(data), (batch,), generator=gen)
            y0, x0 = (int(v) for v in torch.randint(0, 33, (2,), generator=gen) // 8 * 8)
            x = data[idx, :, y0:y0 + 32, x0:x0 + 32].to(device).float() / 255
        else:
            x = data[torch.randint(len(data), (max(1, batch // 2),), generator=gen)].to(device).float() / 255
        z = encode(vae, x)
        # noise on the latents: the decoder must tolerate a diffusion model's imperfect latents
        recon = decode(vae, z + 0.1 * z.detach().std() * torch.randn_like(z))
        loss = ((recon - x).square().mean() + 10 * (F.avg_pool2d(recon, 4) - F.avg_pool2d(x, 4)).square().mean()
                + (z[:, :3] - (F.avg_pool2d(x, 8) * 2 - 1)).square().mean() + 1e-3 * z.square().mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / total))
        opt.step()
        log("autoencoder", step, total, loss.item())
    return vae.eval()


@torch.no_grad()
def encode_all(vae, images: np.ndarray, device: str) -> torch.Tensor:
    from lab.autoencoder import encode

    data = torch.from_numpy(images).permute(0, 3, 1, 2)
    return torch.cat([encode(vae, data[i:i + 256].to(device).float() / 255).cpu() for i in range(0, len(data), 256)])


def pyramid_noise(shape, gen: torch.Generator, discount: float) -> torch.Tensor:
    """Gaussian noise plus coarser Gaussian noise (latent side / 2, / 4, ... down to 1 cell, nearest
    upsampled, weighted discount, discount^2, ...), scaled back to unit variance.

    SD1's schedule leaves a little signal at its last step (sqrt(alpha_bar) = 0.07), enough, on 8 x 8
    latents, for the mean brightness and the left/right balance of the noise to show the background and
    the shape's place. Trained on plain noise, the model learned to read those from the noise and ignored
    'black background' and 'on the left'. Coarse noise makes them noise too, so the caption must decide.
    Tried at discount 0.8 (benchmarks/lab_training.md): the background then followed the caption, but the
    shapes came out worse and the position was still ignored, so the committed model uses plain noise."""
    noise = torch.randn(shape, generator=gen)
    variance, side, weight = 1.0, shape[-1] // 2, discount
    while discount > 0 and side >= 1:
        coarse = torch.randn(*shape[:-2], side, side, generator=gen)
        noise = noise + weight * torch.nn.functional.interpolate(coarse, size=shape[-2:], mode="nearest")
        variance += weight ** 2
        side, weight = side // 2, weight * discount
    return noise / math.sqrt(variance)


@dataclass(frozen=True)
class TextOptions:
    """The text encoder's shape and what its training adds (the defaults: v1, one attention-only block).

    extra_token_rate: share of captions that get one extra input row inserted at a random place up to the
    end token: half of them a row drawn like the expanded checkpoint's unused vocabulary rows (Gaussian at
    the trained rows' scale: noise the model must tolerate, as a fresh learned token), half the row of one
    of the image's own attribute words (true wherever it stands, so later states learn to read a word at
    any position, as an optimized token must be read). logit_penalty: weight of the mean squared attention
    logit (causal entries), which keeps attention from saturating on one key."""

    layers: int = 1
    mlp_width: int = 0
    extra_token_rate: float = 0.0
    logit_penalty: float = 0.0


def extra_rows(text, ids: torch.Tensor, rate: float, gen: torch.Generator,
               words: list[list[int]]) -> tuple[list[int | None], torch.Tensor]:
    """Where each caption gets its extra row (None: none) and the rows (B, width); `words`: per caption
    the token ids of its image's attribute words. See TextOptions."""
    from lab.text_encoder import end_position

    positions: list[int | None] = []
    rows = torch.randn(len(ids), text.token_embedding.shape[1], generator=gen).to(ids.device)
    rows = rows * text.token_embedding.detach().std()
    for b in range(len(ids)):
        inserted = float(torch.rand((), generator=gen)) < rate
        positions.append(int(torch.randint(1, end_position(ids[b]) + 1, (), generator=gen)) if inserted else None)
        if inserted and float(torch.rand((), generator=gen)) < 0.5:
            word = words[b][int(torch.randint(len(words[b]), (), generator=gen))]
            rows[b] = text.token_embedding[text.local_ids(torch.tensor([word], device=ids.device))[0]]
    return positions, rows


def attribute_word_ids(tokenizer, scene: Scene) -> list[int]:
    """The token ids of the words naming a scene's color, size and background (one token each)."""
    return [int(tokenizer([word])[0, 1]) for word in (scene.color, scene.size, scene.background)]


def scene_words(tokenizer, scenes: list[Scene], options: TextOptions) -> list[list[int]]:
    """attribute_word_ids of each scene, when extra rows are inserted (else none are needed)."""
    return [attribute_word_ids(tokenizer, s) for s in scenes] if options.extra_token_rate else []


def encode_for_training(text, ids: torch.Tensor, options: TextOptions, gen: torch.Generator,
                        words: list[list[int]]):
    """The context for `ids`, with TextOptions' extra rows, and the logit penalty (0 when off; then
    nothing is drawn from `gen`, so v1's training is unchanged)."""
    if not options.extra_token_rate and not options.logit_penalty:
        return text(ids), torch.zeros((), device=ids.device)
    positions, rows = extra_rows(text, ids, options.extra_token_rate, gen, words)
    logits: list | None = [] if options.logit_penalty else None
    context = text.encode_embeddings(text.embed_inserting(ids, positions, rows), None, logits)
    penalty = torch.stack([l.square().mean() for l in logits]).mean() if logits else torch.zeros((), device=ids.device)
    return context, penalty


def train_denoiser(latents: torch.Tensor, scenes: list[Scene], steps: int, batch: int, device: str, seed: int,
                   log, drop_caption: float = 0.1, unet_lr: float = 1e-3, ema_decay: float = 0.995,
                   pyramid: float = 0.0, text_options: TextOptions = TextOptions()):
    """Narrow SD1 UNet + lab text encoder, epsilon prediction on SD1's schedule, caption dropout for CFG.

    A first run (2000 steps, lr 3e-4, SD's zero-initialized attention outputs, EMA 0.999) learned to draw
    but barely listened to the text (cond - uncond was 2% of the prediction, CFG changed nothing): the
    attention outputs start random here, the learning rate is higher and the EMA shorter. `pyramid` > 0
    trains on `pyramid_noise` instead of plain noise (tried; not what the committed weights use).
    `text_options`: see TextOptions (defaults: what the committed v1 weights used)."""
    from lab.text_encoder import LabTextEncoder
    from lab.unet import build_unet

    torch.manual_seed(seed)
    tokenizer = Tokenizer()
    unet = build_unet(device=device)
    for name, module in unet.named_modules():
        if name.endswith(".proj_out"):
            module.reset_parameters()
    text = LabTextEncoder(world_token_ids(tokenizer), layers=text_options.layers,
                          mlp_width=text_options.mlp_width).to(device)
    ema = {k: v.detach().clone() for k, v in {**_prefixed(unet, "unet."), **_prefixed(text, "text.")}.items()}
    params = [{"params": unet.parameters(), "lr": unet_lr}, {"params": text.parameters(), "lr": 1e-3}]
    opt = torch.optim.AdamW(params, weight_decay=0.0)
    alphas = sd1_alphas_cumprod().to(device)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    all_words = scene_words(tokenizer, scenes, text_options)
    for step in range(steps):
        idx = torch.randint(len(latents), (batch,), generator=gen)
        captions = ["" if rng.random() < drop_caption else random_caption(scenes[i], rng) for i in idx.tolist()]
        x0 = latents[idx].to(device)
        t = torch.randint(0, 1000, (batch,), generator=gen).to(device)
        noise = pyramid_noise(x0.shape, gen, pyramid).to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        words = [all_words[i] for i in idx.tolist()] if all_words else []
        context, penalty = encode_for_training(text, tokenizer(captions).to(device), text_options, gen, words)
        loss = (unet(xt, t.float(), context=context) - noise).square().mean() + text_options.logit_penalty * penalty
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text.parameters()), 1.0)
        warm = min(1.0, (step + 1) / 200)
        for g, base in zip(opt.param_groups, (unet_lr, 1e-3)):
            g["lr"] = base * warm * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in {**_prefixed(unet, "unet."), **_prefixed(text, "text.")}.items():
                ema[k].lerp_(v.detach(), 1 - decay)
        log("denoiser", step, steps, loss.item())
        if step % 250 == 0 or step == steps - 1:
            log("text influence", step, steps, text_influence(unet, text, tokenizer, latents, scenes, alphas))
    return unet, text, ema


@torch.no_grad()
def text_influence(unet, text, tokenizer, latents, scenes, alphas, count: int = 32) -> float:
    """|eps(caption) - eps(empty)| / |eps(caption)| on noised training latents (0: the text is ignored)."""
    gen = torch.Generator().manual_seed(123)
    x0 = latents[:count].to(alphas.device)
    t = torch.randint(100, 900, (count,), generator=gen).to(alphas.device)
    a = alphas[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=gen).to(alphas.device)
    ids = tokenizer([s.caption() for s in scenes[:count]] + [""] * count).to(alphas.device)
    e_c, e_u = unet(torch.cat([xt, xt]), torch.cat([t, t]).float(), context=text(ids)).chunk(2)
    return ((e_c - e_u).abs().mean() / e_c.abs().mean()).item()


def _prefixed(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in module.state_dict().items() if v.is_floating_point()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--ae-steps", type=int, default=1000)
    ap.add_argument("--ae-full-steps", type=int, default=600, help="autoencoder steps on whole images after the crops")
    ap.add_argument("--ae-batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--unet-lr", type=float, default=1e-3)
    ap.add_argument("--ema-decay", type=float, default=0.995)
    ap.add_argument("--reuse-autoencoder", type=Path, default=None,
                    help="take the autoencoder from this compact file instead of training it (same seed and "
                         "settings give the same one; saves its training time)")
    ap.add_argument("--pyramid-noise", type=float, default=0.0,
                    help="weight discount of coarse noise levels, e.g. 0.8 (0: plain Gaussian noise; see "
                         "benchmarks/lab_training.md for what 0.8 did)")
    ap.add_argument("--text-layers", type=int, default=1, help="text encoder blocks (CLIP layers 1-12)")
    ap.add_argument("--text-mlp", type=int, default=0, help="width of each block's MLP (0: attention only)")
    ap.add_argument("--extra-token-rate", type=float, default=0.0,
                    help="share of captions trained with one extra inserted token row (see TextOptions)")
    ap.add_argument("--logit-penalty", type=float, default=0.0,
                    help="weight of the mean squared attention logit in the loss (see TextOptions)")
    ap.add_argument("--autoencoder-only", action="store_true",
                    help="train and write only the autoencoder (for --reuse-autoencoder in a later run)")
    args = ap.parse_args()

    from devtools.comfy_path import configure_comfy_args

    configure_comfy_args()
    start = time.time()

    def log(stage, step, total, loss):
        if step % 100 == 0 or step == total - 1:
            print(f"{stage} {step + 1}/{total}: {loss:.5f} ({time.time() - start:.0f} s)", flush=True)

    text_options = TextOptions(layers=args.text_layers, mlp_width=args.text_mlp,
                               extra_token_rate=args.extra_token_rate, logit_penalty=args.logit_penalty)
    images, scenes = make_dataset(args.images, args.seed)
    if args.reuse_autoencoder:
        from lab.preview import load_autoencoder

        vae = load_autoencoder(args.reuse_autoencoder, args.device)
    else:
        vae = train_autoencoder(images, args.ae_steps, args.ae_batch, args.device, args.seed, log, args.ae_full_steps)
    latents = encode_all(vae, images, args.device)
    std = latents.std().item()
    vae.vae_scale.data.fill_(std * 0.18215)  # the UNet then sees latents / std (unit variance)
    with torch.no_grad():
        recon = vae.taesd_decoder(latents[:256].to(args.device)).clamp(0, 1).cpu()
    truth = torch.from_numpy(images[:256]).permute(0, 3, 1, 2).float() / 255
    print(f"autoencoder: latent std {std:.3f}, reconstruction MSE {(recon - truth).square().mean():.5f}, "
          f"extractor accuracy on reconstructions (the denoiser's ceiling) "
          f"{attribute_accuracy((recon.permute(0, 2, 3, 1).numpy() * 255).round(), scenes[:256])}")
    weights = {}
    if not args.autoencoder_only:
        unet, text, ema = train_denoiser(latents / std, scenes, args.steps, args.batch, args.device, args.seed, log,
                                         unet_lr=args.unet_lr, ema_decay=args.ema_decay, pyramid=args.pyramid_noise,
                                         text_options=text_options)
        weights = {k: v.detach().float().cpu().half().contiguous() for k, v in ema.items()}
        weights["text.token_ids"] = text.token_ids.cpu().contiguous()
    weights.update({"vae." + k: v.detach().float().cpu().half().contiguous() for k, v in vae.state_dict().items()})
    weights["vae.vae_scale"] = vae.vae_scale.detach().float().cpu()  # keep full precision
    meta = dict(images=args.images, ae_steps=args.ae_steps, ae_full_steps=args.ae_full_steps, width=WIDTH,
                unet_lr=args.unet_lr, ema_decay=args.ema_decay, autoencoder_only=args.autoencoder_only,
                pyramid_noise=args.pyramid_noise, text=asdict(text_options),
                reuse_autoencoder=str(args.reuse_autoencoder or ""), ae_batch=args.ae_batch, steps=args.steps,
                batch=args.batch, seed=args.seed, device=args.device, seconds=round(time.time() - start),
                torch=torch.__version__)
    from safetensors.torch import save_file

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(args.out), metadata={"lab": json.dumps(meta)})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) in {meta['seconds']} s")


if __name__ == "__main__":
    main()
