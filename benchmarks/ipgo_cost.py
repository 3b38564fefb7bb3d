"""Cost of IPGO per epoch against one plain generation: seconds and peak memory, in one invocation.

    python -m benchmarks.ipgo_cost [--model small|sd15] [--steps N] [--epochs E] [--size PX]

Configurations (same seed, steps, cfg, sampler, scheduler and size; batch 1), each in its own fresh
subprocess so memory peaks do not accumulate:

    plain     core KSampler + VAE decode + PreviewImage: one generation
    ipgo      PromptOptim_IPGOOptimize at the paper's token settings (prefix 10, suffix 10, rank 300,
              rotation on, conformity 0.001, last_steps K = 2, clip_norm 1), one prompt
    ipgo_k4   the same with last_steps 4 (how the cost grows with K)

An IPGO epoch is one generation of the prompt (steps - K sampler steps without gradient, K Euler steps
with gradient through the UNet and CFG), a differentiable VAE decode, the reward, and the backward
through all of it. Reward: the tiny random CLIP of devtools/reward_models.py (a real CLIP ViT-L or
ImageReward adds its own forward and backward). Timing: a warm-up run of one epoch (loads the models),
then one timed run of --epochs epochs; s/epoch = the optimize node's time / epochs. Plain: one warm-up
generation, then the median of --reps. Peak memory: CUDA max allocated over the timed part (resident
models included), or the child process's peak RSS on the CPU (includes loading).

Models: --model small (the test SD1 checkpoint, default on the CPU) or sd15 (random full-size SD1.5,
default on a GPU; see benchmarks.date_cost.sd15_checkpoint).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.date_cost import PROMPT, _device_info, _gib
from benchmarks.minority_cost import checkpoint_file
from devtools.comfy_path import configure_comfy_args

RESULT_TAG = "IPGO_COST_RESULT "
CONFIGS = {"plain": dict(label="plain KSampler (one generation)", last_steps=0),
           "ipgo": dict(label="IPGO, paper settings (K = 2)", last_steps=2),
           "ipgo_k4": dict(label="IPGO, K = 4", last_steps=4)}
PAPER = dict(learning_rate=0.001, lr_step=10, lr_gamma=0.9, accumulation=4, prefix_tokens=10, suffix_tokens=10,
             rank=300, rotation=True, conformity_weight=0.001, clip_norm=1.0, init_seed=0)


def _graph(args, config, ckpt: str, reward: str, seed: int, epochs: int) -> dict:
    g = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    if not config["last_steps"]:
        g.update({
            "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": PROMPT}},
            "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
            "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": args.size, "height": args.size,
                                                                  "batch_size": 1}},
            "work": {"class_type": "KSampler",
                     "inputs": {"model": ["ckpt", 0], "seed": seed, "steps": args.steps, "cfg": args.cfg,
                                "sampler_name": args.sampler, "scheduler": args.scheduler, "positive": ["pos", 0],
                                "negative": ["neg", 0], "latent_image": ["lat", 0], "denoise": 1.0}},
            "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["work", 0], "vae": ["ckpt", 2]}},
            "prev": {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}}})
        return g
    g.update({
        "rw": {"class_type": "PromptOptim_LoadRewardModel",
               "inputs": {"family": "clip", "weights": reward, "clip_backbone": "none", "open_clip_architecture": "",
                          "dtype": "auto"}},
        "work": {"class_type": "PromptOptim_IPGOOptimize",
                 "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2], "reward": ["rw", 0],
                            "prompts": PROMPT, "negative": "", "sampling_seed": seed, "steps": args.steps,
                            "cfg": args.cfg, "sampler_name": args.sampler, "scheduler": args.scheduler,
                            "width": args.size, "height": args.size, "epochs": epochs,
                            "last_steps": config["last_steps"], **PAPER}},
        "prev": {"class_type": "PreviewImage", "inputs": {"images": ["work", 3]}}})
    return g


def run_one(args, name: str) -> dict:
    import torch

    from devtools.base_dir import make_base_dir
    from devtools.inprocess import InProcessComfy
    from devtools.reward_models import NAMES, reward_models_dir

    config = CONFIGS[name]
    ckpt = checkpoint_file(args)
    rewards = reward_models_dir()
    base = Path(tempfile.mkdtemp(prefix="ipgo_cost_"))
    make_base_dir(base, checkpoints=[ckpt], rewards=sorted(p for p in rewards.iterdir() if not p.name.startswith(".")))
    runner = InProcessComfy(base)
    import comfy.utils

    comfy.utils.set_progress_bar_enabled(False)
    cuda = torch.cuda.is_available()
    stamps: list[tuple[float, str]] = []
    send = runner.server.send_sync

    def record(event, data, sid=None):
        if event == "executing":
            stamps.append((time.perf_counter(), str(data.get("node") if isinstance(data, dict) else data)))
        return send(event, data, sid)

    runner.server.send_sync = record

    def run(seed: int, epochs: int) -> tuple[float, float, str]:
        stamps.clear()
        if cuda:
            torch.cuda.synchronize()
        cpu_start, start = time.process_time(), time.perf_counter()
        runner.run(_graph(args, config, ckpt.name, NAMES["clip"], seed, epochs))
        if cuda:
            torch.cuda.synchronize()
        total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        names = [n for _, n in stamps]
        i = names.index("work")
        node = (stamps[i + 1][0] if i + 1 < len(stamps) else start + total) - stamps[i][0]
        report = runner.node_outputs("work")[5][0] if config["last_steps"] else ""
        return node, cpu, report

    load_before = os.getloadavg()[0]
    run(args.seed + 10_000, 1)  # warm-up: loads the models (one epoch for IPGO)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if config["last_steps"]:
        node, cpu, report = run(args.seed, args.epochs)
        per_unit, cpu_unit = [node / args.epochs], [cpu / args.epochs]
    else:
        runs = [run(args.seed + i, 1) for i in range(args.reps)]
        per_unit, cpu_unit, report = [r[0] for r in runs], [r[1] for r in runs], ""
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model = runner.node_outputs("ckpt")[0][0]
    shutil.rmtree(base, ignore_errors=True)
    return dict(name=name, label=config["label"], seconds=per_unit, cpu=cpu_unit, peak_bytes=peak, report=report,
                load=[load_before, os.getloadavg()[0]], unet=str(model.model.get_dtype()), torch=torch.__version__,
                **_device_info())


def _child(args, what: str, passthrough: list[str]) -> tuple[dict | None, str]:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.ipgo_cost", "--one", what, *passthrough],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
                          env=dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {})))
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):]), proc.stderr
    return None, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["small", "sd15"], default=None, help="default: small on CPU, sd15 on GPU")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--steps", type=int, default=None, help="default 20 on CPU, 50 (paper) on GPU")
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--sampler", default="lms")
    ap.add_argument("--scheduler", default="normal")
    ap.add_argument("--size", type=int, default=None, help="default 256 small, 512 sd15")
    ap.add_argument("--epochs", type=int, default=None, help="timed epochs (default 2 on CPU, 5 on GPU)")
    ap.add_argument("--reps", type=int, default=None, help="timed plain generations (default 1 CPU, 3 GPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    args.device = "cuda" if cuda else "cpu"
    args.model = args.model or ("sd15" if cuda else "small")
    args.size = args.size or (512 if args.model == "sd15" else 256)
    args.steps = args.steps or (50 if cuda else 20)
    args.epochs = args.epochs or (5 if cuda else 2)
    args.reps = args.reps or (3 if cuda else 1)
    if args.one is not None:
        configure_comfy_args()
        print(RESULT_TAG + json.dumps(run_one(args, args.one)), flush=True)
        return
    passthrough = ["--model", args.model, "--device", args.device, "--steps", str(args.steps), "--cfg", str(args.cfg),
                   "--sampler", args.sampler, "--scheduler", args.scheduler, "--size", str(args.size),
                   "--epochs", str(args.epochs), "--reps", str(args.reps), "--seed", str(args.seed)]
    start = time.perf_counter()
    results, failures = {}, {}
    for name in args.configs:
        res, err = _child(args, name, passthrough)
        (results.__setitem__(name, res) if res else failures.__setitem__(name, err))
        print(f"[ipgo_cost] {name}: {'ok' if res else 'FAILED'}", file=sys.stderr, flush=True)
    any_res = next(iter(results.values()), None)
    if any_res:
        print(f"device: {any_res['device']}, torch {any_res['torch']}, UNet {any_res['unet']}")
        print(f"model {args.model}, {args.size}x{args.size}, batch 1, {args.steps} steps, cfg {args.cfg}, "
              f"{args.sampler} / {args.scheduler}, seed {args.seed}; IPGO: 1 prompt, {args.epochs} timed epochs after "
              f"a 1-epoch warm-up; reward: tiny CLIP; plain: median of {args.reps} after 1 warm-up")
        print()
        print("| config | s per epoch (plain: per generation) | ratio vs plain | CPU s | CPU ratio | peak memory* |")
        print("|---|---|---|---|---|---|")
        plain = results.get("plain")
        p_s = statistics.median(plain["seconds"]) if plain else None
        p_c = statistics.median(plain["cpu"]) if plain else None
        for name in args.configs:
            if name not in results:
                print(f"| {CONFIGS[name]['label']} | failed | | | | |")
                continue
            r = results[name]
            s, c = statistics.median(r["seconds"]), statistics.median(r["cpu"])
            print(f"| {r['label']} | {s:.2f} | {f'{s / p_s:.2f}x' if p_s else '-'} | {c:.1f} | "
                  f"{f'{c / p_c:.2f}x' if p_c else '-'} | {_gib(r['peak_bytes'])} |")
        print("*peak: CUDA max allocated over the timed part (resident models included), or the child process's "
              "peak RSS on the CPU (includes loading). 1-min load average at start/end of each child: " +
              ", ".join(f"{n} {r['load'][0]:.1f}/{r['load'][1]:.1f}" for n, r in results.items()))
        for name, r in results.items():
            if r["report"]:
                print(f"\n{name} report:\n```\n{r['report']}\n```")
    print(f"\nbenchmark wall time: {time.perf_counter() - start:.0f} s")
    for name, err in failures.items():
        print(f"\nFAILED {name}:\n```\n{err.strip()}\n```")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
