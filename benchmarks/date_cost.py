"""Cost of DATE sampling against plain sampling: seconds per image and peak memory, in one invocation.

    python -m benchmarks.date_cost [--model small|sd15] [--reward tiny|clip-l] [--steps 50] [--reps N]

Configurations (same seed, steps, cfg, sampler and scheduler; batch 1), each in its own fresh
subprocess (`--one NAME`) so memory peaks do not accumulate:

    plain        core KSampler
    date10       PromptOptim_DATESampler, every_k_steps "10" (the paper's "10% update" at 50 steps)
    date1        DATE at every step
    date1_half   DATE at every step with decode_scale "0.5" (the reward sees a half-size decode)
    fidelity     not timed: reward and its gradient w.r.t. the latent for the same x0 estimates,
                 decoded at scale 1.0 vs 0.5 (what the cheaper decode changes)

Defaults follow the paper: 50 steps, cfg 7.5, DDIM (ComfyUI's `ddim` sampler with the `ddim_uniform`
scheduler; euler/normal if those names are missing), rho 0.5, one gradient step per update.

Timing: one warm-up generation (it loads the models), then --reps timed generations (default 1 on the
CPU, 3 on a GPU); the median is reported. A generation is one run of the ComfyUI graph through the real
executor: the sampler node, a VAE decode of the result and a PreviewImage (the checkpoint loader and the
text encoders are cached after the warm-up). Each repeat uses seed + i (the executor would otherwise
answer from its cache), the same seeds for every configuration. The sampler node's own time is also
measured (from the executor's "executing" events).

Peak memory: on CUDA torch.cuda.max_memory_allocated over the timed generations (reset after the
warm-up; the resident models are included); on the CPU the child process's peak RSS (ru_maxrss), which
includes loading the checkpoint.

Models (random weights; the cost does not depend on their values):
  --model small   devtools.checkpoints.checkpoint_path("sd1"): shrunk SD1 UNet (one level), full CLIP-L
                  text encoder, TAESD VAE; 256 x 256 by default. The default on the CPU.
  --model sd15    full-size SD1.5: UNet from ComfyUI's own SD15 UNet config (model_detection's SD15
                  dict, 860 M parameters), the full SD1.x AutoencoderKL VAE (the authors decode with
                  the SD1.5 VAE, not a TAESD) and CLIP-L; random fp16 weights by devtools.checkpoints'
                  per-key rule; 512 x 512 by default. Cached as
                  ~/.cache/prompt-optim/bench/prompt_optim_bench_sd15_full_v1_s0.safetensors (~2.1 GB).
                  The default on a GPU.
  --reward tiny   the tiny test CLIP folder of devtools.reward_models (64 px, width 32).
  --reward clip-l a Hugging Face CLIPModel folder with openai/clip-vit-large-patch14's configuration and
                  random weights (config.json, model.safetensors in fp32, tokenizer files from ComfyUI's
                  bundled sd1_tokenizer, preprocessor_config.json), cached under
                  ~/.cache/prompt-optim/bench/prompt_optim_bench_clip_vit_l14_v1 (~1.7 GB): the
                  authors' CLIP reward at full size.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devtools.asset_cache import build_inputs, cached
from devtools.comfy_path import CACHE, comfyui_root, configure_comfy_args

BENCH_DIR = CACHE / "bench"
PROMPT = "an astronaut riding a horse on the moon, highly detailed"
RESULT_TAG = "DATE_COST_RESULT "
CLIP_L_NAME = "prompt_optim_bench_clip_vit_l14"

CONFIGS = {
    "plain": dict(label="plain KSampler", every=None, scale="1.0"),
    "date10": dict(label='DATE, every_k_steps "10"', every="10", scale="1.0"),
    "date1": dict(label='DATE, every_k_steps "1"', every="1", scale="1.0"),
    "date1_half": dict(label='DATE, every_k_steps "1", decode_scale 0.5', every="1", scale="0.5"),
}


# -- model files --------------------------------------------------------------------------------------
def _sd15_unet_config() -> dict:
    """ComfyUI's own SD15 UNet config (comfy/model_detection.py, unet_config_from_diffusers_unet's SD15)."""
    return dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                adm_in_channels=None, in_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
                transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 2, 4, 4], transformer_depth_middle=1,
                use_linear_in_transformer=False, context_dim=768, num_heads=8,
                transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                use_temporal_attention=False, use_temporal_resblock=False)


def sd15_checkpoint(seed: int = 0) -> Path:
    """Full-size SD1.5 single-file checkpoint with random fp16 weights (cached under its build key)."""
    from devtools import checkpoints

    def write(path: Path) -> None:
        configure_comfy_args()
        import torch
        from safetensors.torch import save_file

        import comfy.ops
        from comfy.ldm.models.autoencoder import AutoencoderKL
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

        meta = torch.device("meta")
        shapes = {}
        unet = UNetModel(**_sd15_unet_config(), device=meta, operations=comfy.ops.disable_weight_init)
        shapes.update({"model.diffusion_model." + k: v.shape for k, v in unet.state_dict().items()})
        ddconfig = {'double_z': True, 'z_channels': 4, 'resolution': 256, 'in_channels': 3, 'out_ch': 3, 'ch': 128,
                    'ch_mult': [1, 2, 4, 4], 'num_res_blocks': 2, 'attn_resolutions': [], 'dropout': 0.0}
        with meta:  # ComfyUI's default SD1.x VAE (comfy/sd.py)
            vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
        shapes.update({"first_stage_model." + k: v.shape for k, v in vae.state_dict().items()})
        # the full CLIP-L text encoder, exactly as the test checkpoint lays it out
        shapes.update({k: s for k, s in checkpoints._shapes("sd1").items() if k.startswith("cond_stage_model.")})
        state = {k: checkpoints._tensor(seed, k, s).half() for k, s in shapes.items()}
        save_file(state, str(path), metadata={"generator": "prompt-optim benchmarks.date_cost"})

    sources = [__file__, checkpoints, *(comfyui_root() / f for f in checkpoints.COMFY_SOURCES),
               comfyui_root() / "comfy/ldm/models/autoencoder.py"]
    return cached(BENCH_DIR, f"prompt_optim_bench_sd15_full_s{seed}.safetensors", build_inputs(sources, seed=seed),
                  write)


def clip_l_folder() -> Path:
    """A Hugging Face CLIPModel folder: openai/clip-vit-large-patch14's config, random weights (cached)."""
    bundled = comfyui_root() / "comfy" / "sd1_tokenizer"

    def write(folder: Path) -> None:
        import torch
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

        torch.manual_seed(0)
        config = CLIPConfig(text_config=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                             num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=77,
                                             projection_dim=768, hidden_act="quick_gelu"),
                            vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                               num_hidden_layers=24, patch_size=14, image_size=224,
                                               projection_dim=768, hidden_act="quick_gelu"),
                            projection_dim=768)
        CLIPModel(config).eval().save_pretrained(str(folder), safe_serialization=True)
        CLIPImageProcessor(size={"shortest_edge": 224},
                           crop_size={"height": 224, "width": 224}).save_pretrained(str(folder))
        CLIPTokenizer.from_pretrained(str(bundled), local_files_only=True).save_pretrained(str(folder))
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(bundled / name, folder / name)

    sources = [__file__, bundled / "vocab.json", bundled / "merges.txt"]
    return cached(BENCH_DIR, CLIP_L_NAME, build_inputs(sources), write)


def model_files(args) -> tuple[Path, Path, str]:
    """(checkpoint, reward entry to link into models/rewards, its name in the weights combo)."""
    from devtools.checkpoints import checkpoint_path
    from devtools.reward_models import NAMES, reward_models_dir

    ckpt = checkpoint_path("sd1") if args.model == "small" else sd15_checkpoint()
    if args.reward == "tiny":
        entry = reward_models_dir() / NAMES["clip"]
    else:
        entry = clip_l_folder()
    return ckpt, entry, entry.name


# -- child: one configuration --------------------------------------------------------------------------
def _graph(args, config: dict, ckpt_name: str, reward_name: str, sampler: str, scheduler: str, seed: int) -> dict:
    date = config["every"] is not None
    g = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "pos": {"class_type": "PromptOptim_TextEncodeKeepText" if date else "CLIPTextEncode",
                "inputs": {"clip": ["ckpt", 1], "text": PROMPT}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": args.size, "height": args.size, "batch_size": 1}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
        "prev": {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}},
    }
    common = {"model": ["ckpt", 0], "seed": seed, "steps": args.steps, "cfg": args.cfg, "sampler_name": sampler,
              "scheduler": scheduler, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["lat", 0],
              "denoise": 1.0}
    if not date:
        g["ks"] = {"class_type": "KSampler", "inputs": common}
        return g
    g["rw"] = {"class_type": "PromptOptim_LoadRewardModel",
               "inputs": {"family": "clip", "weights": reward_name, "clip_backbone": "none",
                          "open_clip_architecture": "", "dtype": "auto"}}
    g["ks"] = {"class_type": "PromptOptim_DATESampler",
               "inputs": dict(common, vae=["ckpt", 2], reward=["rw", 0], rho=0.5, rule="paper",
                              schedule="every_k_steps", schedule_value=config["every"], iterations=1,
                              prior_weight=0.0, decode_scale=config["scale"])}
    return g


def _parse_report(report: str) -> tuple[int, int]:
    """(updates, reward evaluations) from the DATE sampler's report text."""
    import re

    first = report.splitlines()[0] if report else ""
    match = re.search(r"(\d+) updates", first)
    updates = int(match.group(1)) if match else 0
    evaluations = sum(len(line.split("mean reward", 1)[1].split(","))
                      for line in report.splitlines()[1:] if "mean reward" in line)
    return updates, evaluations


def _start_comfy(args):
    """A throw-away ComfyUI base dir with this pack, the checkpoint and the reward; the in-process executor."""
    ckpt, reward_entry, reward_name = model_files(args)
    base = Path(tempfile.mkdtemp(prefix="date_cost_"))
    from devtools.base_dir import make_base_dir
    from devtools.inprocess import InProcessComfy

    make_base_dir(base, checkpoints=[ckpt], rewards=[reward_entry])
    runner = InProcessComfy(base)
    import comfy.samplers
    import comfy.utils

    comfy.utils.set_progress_bar_enabled(False)
    sampler, scheduler = args.sampler, args.scheduler
    if sampler not in comfy.samplers.SAMPLER_NAMES or scheduler not in comfy.samplers.SCHEDULER_NAMES:
        sampler, scheduler = "euler", "normal"
    return runner, base, ckpt, reward_name, sampler, scheduler


def _device_info() -> dict:
    import torch

    if torch.cuda.is_available():
        return dict(device=torch.cuda.get_device_name(0), cuda=True)
    return dict(device=f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)", cuda=False)


def run_one(args, name: str) -> dict:
    import torch

    config = CONFIGS[name]
    runner, base, ckpt, reward_name, sampler, scheduler = _start_comfy(args)
    cuda = torch.cuda.is_available()
    stamps: list[tuple[float, str]] = []
    send = runner.server.send_sync

    def record(event, data, sid=None):
        if event == "executing":
            stamps.append((time.perf_counter(), str(data.get("node") if isinstance(data, dict) else data)))
        return send(event, data, sid)

    runner.server.send_sync = record

    def generate(seed: int) -> tuple[float, float, float]:
        graph = _graph(args, config, ckpt.name, reward_name, sampler, scheduler, seed)
        stamps.clear()
        if cuda:
            torch.cuda.synchronize()
        cpu_start = time.process_time()
        start = time.perf_counter()
        runner.run(graph)
        if cuda:
            torch.cuda.synchronize()
        total = time.perf_counter() - start
        names = [n for _, n in stamps]
        node = float("nan")
        if "ks" in names:
            i = names.index("ks")
            end = stamps[i + 1][0] if i + 1 < len(stamps) else start + total
            node = end - stamps[i][0]
        return total, node, time.process_time() - cpu_start

    load_before = os.getloadavg()[0]
    warm = generate(args.seed + 10_000)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = [generate(args.seed + i) for i in range(args.reps)]
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    updates = evaluations = 0
    if config["every"] is not None:
        report = runner.node_outputs("ks")[1][0]
        updates, evaluations = _parse_report(report)
    model, _, vae = (out[0] for out in runner.node_outputs("ckpt"))
    dtypes = dict(unet=str(model.model.get_dtype()), unet_compute=str(model.model.manual_cast_dtype or
                                                                       model.model.get_dtype()),
                  vae=str(vae.vae_dtype))
    if config["every"] is not None:
        reward = runner.node_outputs("rw")[0][0].reward
        dtypes["reward"] = str(next(reward.parameters()).dtype)
    shutil.rmtree(base, ignore_errors=True)
    return dict(name=name, label=config["label"], sampler=sampler, scheduler=scheduler, warmup_s=warm[0],
                times_s=[t for t, _, _ in times], node_s=[n for _, n, _ in times],
                cpu_s=[c for _, _, c in times], load=[load_before, os.getloadavg()[0]], peak_bytes=peak, updates=updates,
                reward_evaluations=evaluations, dtypes=dtypes, torch=torch.__version__, **_device_info())


# -- child: decode-scale fidelity ----------------------------------------------------------------------
def run_fidelity(args) -> dict:
    """Reward and d reward / d x0 for the same x0 estimates of a plain run, decoded at scale 1.0 and 0.5.

    Reproduces DateGuider._decode: process_latent_out, bilinear F.interpolate of the latent, the VAE's
    first_stage_model.decode, then /2 + 0.5 (no clamp)."""
    import torch
    import torch.nn.functional as F

    runner, base, ckpt, reward_name, sampler, scheduler = _start_comfy(args)  # before any comfy import
    import comfy.model_management as mm
    import comfy.sample
    import comfy.sd1_clip
    from core.shared.autograd_weights import autograd_ready
    from core.shared.pixels import pixels_from_decoder
    from core.rewards import load_reward

    model, clip, vae = runner.load_checkpoint(ckpt.name)
    device = mm.get_torch_device()
    with torch.inference_mode():
        pos = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
        neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        latent = torch.zeros(1, 4, args.size // 8, args.size // 8)
        noise = comfy.sample.prepare_noise(latent, args.seed)
        wanted = sorted({round(f * (args.steps - 1)) for f in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)})
        x0s: dict[int, torch.Tensor] = {}

        def callback(step, x0, x, total):
            if step in wanted:
                x0s[step] = x0.detach().float().cpu()

        comfy.sample.sample(model, noise, args.steps, args.cfg, sampler, scheduler, pos, neg, latent,
                            callback=callback, disable_pbar=True, seed=args.seed)
    tokenizer_dir = os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer")
    reward_dtype = torch.float32 if device.type == "cpu" else torch.float16
    _, entry, _ = model_files(args)
    reward = load_reward("clip", entry, device=device, dtype=reward_dtype, fallback_tokenizer_dir=tokenizer_dir)
    mm.load_models_gpu([vae.patcher])
    vae_model = vae.first_stage_model
    vae_device = next(vae_model.parameters()).device

    def score(x0: torch.Tensor, scale: float):
        with torch.inference_mode(False), autograd_ready(vae_model), autograd_ready(reward), torch.enable_grad():
            leaf = x0.clone().to(device).requires_grad_(True)
            lat = model.model.process_latent_out(leaf)
            if scale != 1.0:
                lat = F.interpolate(lat, scale_factor=scale, mode="bilinear", align_corners=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            images = pixels_from_decoder(vae_model.decode(lat.to(vae_device, vae.vae_dtype)))
            value = reward(images.to(device), [PROMPT]).sum()
            (grad,) = torch.autograd.grad(value, leaf)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return float(value), grad.detach().float().flatten().cpu(), time.perf_counter() - start, images.shape[-1]

    rows = []
    for step in wanted:
        full, half = score(x0s[step], 1.0), score(x0s[step], 0.5)
        cosine = float(torch.nn.functional.cosine_similarity(full[1], half[1], dim=0))
        rows.append(dict(step=step, reward_1=full[0], reward_05=half[0], cosine=cosine, seconds_1=full[2],
                         seconds_05=half[2], pixels_1=full[3], pixels_05=half[3]))
    # second runs of the timing (the first call of each path pays one-off costs)
    rows_t = [(score(x0s[wanted[-1]], 1.0)[2], score(x0s[wanted[-1]], 0.5)[2])]
    shutil.rmtree(base, ignore_errors=True)
    return dict(name="fidelity", rows=rows, timing=rows_t[0], **_device_info())


# -- parent -------------------------------------------------------------------------------------------
def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _child(args, what: str, passthrough: list[str]) -> tuple[dict | None, str, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.date_cost", "--one", what, *passthrough],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
                          env=dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {})))
    wall = time.perf_counter() - start
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):]), proc.stderr, wall
    return None, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}", wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["small", "sd15"], default=None, help="default: small on CPU, sd15 on GPU")
    ap.add_argument("--reward", choices=["tiny", "clip-l"], default="tiny")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--scheduler", default="ddim_uniform")
    ap.add_argument("--size", type=int, default=None, help="image side in pixels (default 256 small, 512 sd15)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=None, help="timed generations (default 1 on CPU, 3 on GPU)")
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--no-fidelity", action="store_true")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode: one configuration
    args = ap.parse_args()

    if args.one is not None:  # child
        configure_comfy_args()
        if args.one == "prepare":
            model_files(args)
            result = dict(name="prepare")
        elif args.one == "fidelity":
            result = run_fidelity(args)
        else:
            result = run_one(args, args.one)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return

    import torch  # only to pick defaults; the parent does not touch the device

    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device")
    args.device = "cuda" if cuda else "cpu"
    args.model = args.model or ("sd15" if cuda else "small")
    args.size = args.size or (512 if args.model == "sd15" else 256)
    args.reps = args.reps or (3 if cuda else 1)
    passthrough = ["--model", args.model, "--reward", args.reward, "--device", args.device, "--steps",
                   str(args.steps), "--cfg", str(args.cfg), "--sampler", args.sampler, "--scheduler",
                   args.scheduler, "--size", str(args.size), "--seed", str(args.seed), "--reps", str(args.reps)]
    bench_start = time.perf_counter()

    def log(text: str):
        print(text, file=sys.stderr, flush=True)

    prep, err, wall = _child(args, "prepare", passthrough)
    if prep is None:
        log(f"preparing the model files failed:\n{err}")
        sys.exit(1)
    log(f"[date_cost] model files ready ({wall:.0f} s)")
    results, failures = {}, {}
    for name in args.configs:
        res, err, wall = _child(args, name, passthrough)
        if res is None:
            failures[name] = err
            log(f"[date_cost] {name} FAILED after {wall:.0f} s:\n{err}")
        else:
            results[name] = res
            log(f"[date_cost] {name}: {statistics.median(res['times_s']):.2f} s/image "
                f"(child process {wall:.0f} s)")
    fidelity = None
    if not args.no_fidelity:
        fidelity, err, wall = _child(args, "fidelity", passthrough)
        if fidelity is None:
            failures["fidelity"] = err
            log(f"[date_cost] fidelity FAILED:\n{err}")
        else:
            log(f"[date_cost] fidelity done ({wall:.0f} s)")

    any_res = next(iter(results.values()), None)
    if any_res:
        dt = any_res["dtypes"]
        date_res = next((r for r in results.values() if "reward" in r["dtypes"]), None)
        reward_dtype = date_res["dtypes"]["reward"] if date_res else "?"
        print(f"device: {any_res['device']}, torch {any_res['torch']}, UNet {dt['unet']} (compute "
              f"{dt['unet_compute']}), VAE {dt['vae']}, reward {reward_dtype}")
        print(f"model {args.model}, reward {args.reward}, {args.size}x{args.size}, batch 1, {args.steps} steps, "
              f"cfg {args.cfg}, {any_res['sampler']} / {any_res['scheduler']}, seed {args.seed}; rho 0.5, paper "
              f"rule, 1 iteration; median of {args.reps} after 1 warm-up")
        print()
        print("| config | updates | s/image | ratio vs plain | sampler node s | CPU s/image** | CPU-time ratio | "
              "peak memory* | reward evaluations |")
        print("|---|---|---|---|---|---|---|---|---|")
        plain = statistics.median(results["plain"]["times_s"]) if "plain" in results else None
        plain_cpu = statistics.median(results["plain"]["cpu_s"]) if "plain" in results else None
        for name in args.configs:
            if name in failures:
                print(f"| {CONFIGS[name]['label']} | failed | | | | | | | |")
                continue
            r = results[name]
            t, c = statistics.median(r["times_s"]), statistics.median(r["cpu_s"])
            ratio = f"{t / plain:.2f}x" if plain else "-"
            cpu_ratio = f"{c / plain_cpu:.2f}x" if plain_cpu else "-"
            print(f"| {r['label']} | {r['updates']} | {t:.2f} | {ratio} | {statistics.median(r['node_s']):.2f} | "
                  f"{c:.1f} | {cpu_ratio} | {_gib(r['peak_bytes'])} | {r['reward_evaluations']} |")
        print("*peak: CUDA max allocated over the timed generations (resident models included), or the child "
              "process's peak RSS on the CPU (includes loading).")
        print("**CPU s: process CPU time (all threads) per generation; less sensitive than wall time to other "
              "load on the machine. 1-min load average at start/end of each child: " +
              ", ".join(f"{n} {results[n]['load'][0]:.1f}/{results[n]['load'][1]:.1f}" for n in results))
    if fidelity:
        print()
        print("Cheaper decode fidelity: same x0 estimates (plain run, seed "
              f"{args.seed}), decoded at scale 1.0 vs 0.5; gradient of the reward w.r.t. the x0 latent")
        print()
        print("| step | reward @1.0 | reward @0.5 | abs difference | gradient cosine |")
        print("|---|---|---|---|---|")
        rows = fidelity["rows"]
        for row in rows:
            print(f"| {row['step']} | {row['reward_1']:.5f} | {row['reward_05']:.5f} | "
                  f"{abs(row['reward_1'] - row['reward_05']):.5f} | {row['cosine']:.3f} |")
        spread = max(r["reward_1"] for r in rows) - min(r["reward_1"] for r in rows)
        print(f"| mean | | | {statistics.mean(abs(r['reward_1'] - r['reward_05']) for r in rows):.5f} | "
              f"{statistics.mean(r['cosine'] for r in rows):.3f} |")
        t1, t05 = fidelity["timing"]
        print(f"(reward spread over these steps at 1.0: {spread:.5f}; decode + reward + gradient: {t1:.3f} s at "
              f"1.0 ({rows[0]['pixels_1']} px) vs {t05:.3f} s at 0.5 ({rows[0]['pixels_05']} px))")
    print()
    print(f"benchmark wall time: {time.perf_counter() - bench_start:.0f} s")
    if failures:
        print()
        for name, err in failures.items():
            print(f"FAILED {name}:\n```\n{err.strip()}\n```")
        sys.exit(1)


if __name__ == "__main__":
    main()
