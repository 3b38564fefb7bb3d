"""Cost of MinorityPrompt sampling against plain sampling: seconds per image and peak memory, in one invocation.

    python -m benchmarks.minority_cost [--model small|sd15] [--steps 50] [--reps N]

Configurations (same seed, steps, cfg, sampler and scheduler; batch 1), each in its own fresh
subprocess (`--one NAME`) so memory peaks do not accumulate:

    plain          core KSampler, positive from CLIPTextEncode
    minority       PromptOptim_MinoritySampler at the paper's defaults, positive from
                   PromptOptim_MinorityEncode (position "end", init "word", init_word "cool")
    minority_ckpt  the same with gradient_checkpointing on (the diffusion model's activations are
                   recomputed during backward)

Defaults follow the paper: 50 steps, cfg 7.5, DDIM (ComfyUI's `ddim` sampler with the `ddim_uniform`
scheduler; euler/normal if those names are missing), and for MinorityPrompt iterations 10, lr 0.01,
optimize_fraction 0.1 (the first 10% of the steps: 5 optimized steps at 50), every_n_steps 1,
sg_lambda 1, norm squared, anneal on, between_steps original, token_per_image on, diversity 0,
measure_gain off. One Adam iteration costs one text-encoder forward and backward, two diffusion-model
forwards (x0 under the prompt with the token, then x0 of the re-noised estimate under the plain prompt,
both at batch 1 without the unconditional half) and the backward through both. The number of optimized
steps is read from the sampler's report output ("MinorityPrompt: N optimized steps [...]").

Timing: one warm-up generation (it loads the models), then --reps timed generations (default 1 on the
CPU, 3 on a GPU); the median is reported. A generation is one run of the ComfyUI graph through the real
executor: the sampler node, a VAE decode of the result and a PreviewImage (the checkpoint loader and the
text encoders are cached after the warm-up). Each repeat uses seed + i (the executor would otherwise
answer from its cache), the same seeds for every configuration. The sampler node's own time is also
measured (from the executor's "executing" events), and the extra seconds per optimized step,
(s/image - plain s/image) / optimized steps.

Peak memory: on CUDA torch.cuda.max_memory_allocated over the timed generations (reset after the
warm-up; the resident models are included); on the CPU the child process's peak RSS (ru_maxrss), which
includes loading the checkpoint.

Models (random weights; the cost does not depend on their values), as in benchmarks.date_cost:
  --model small   devtools.checkpoints.checkpoint_path("sd1"): shrunk SD1 UNet (one level), full CLIP-L
                  text encoder, TAESD VAE; 256 x 256 by default. The default on the CPU.
  --model sd15    full-size SD1.5 (benchmarks.date_cost.sd15_checkpoint): UNet from ComfyUI's own SD15
                  UNet config (860 M parameters), the full SD1.x AutoencoderKL VAE and CLIP-L; random fp16
                  weights; 512 x 512 by default. Cached as
                  ~/.cache/prompt-optim/bench/prompt_optim_bench_sd15_full_v1_s0.safetensors (~2.1 GB).
                  The default on a GPU.
No reward model is involved.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.date_cost import PROMPT, _device_info, _gib, sd15_checkpoint
from devtools.comfy_path import configure_comfy_args

RESULT_TAG = "MINORITY_COST_RESULT "

CONFIGS = {
    "plain": dict(label="plain KSampler", minority=False, checkpointing=False),
    "minority": dict(label="MinorityPrompt, paper defaults", minority=True, checkpointing=False),
    "minority_ckpt": dict(label="MinorityPrompt, gradient_checkpointing", minority=True, checkpointing=True),
}

# the paper's defaults (nodes/minority/nodes.py; core/minority/optimize.py MinoritySettings)
PAPER_SETTINGS = dict(iterations=10, lr=0.01, optimize_fraction=0.1, every_n_steps=1, sg_lambda=1.0, norm="squared",
                      anneal=True, fixed_level=0.75, between_steps="original", token_per_image=True, diversity=0.0,
                      gradient_checkpointing=False, measure_gain=False)
ENCODE_SETTINGS = dict(position="end", init="word", init_word="cool", init_seed=0)


def checkpoint_file(args) -> Path:
    from devtools.checkpoints import checkpoint_path

    return checkpoint_path("sd1") if args.model == "small" else sd15_checkpoint()


# -- child: one configuration --------------------------------------------------------------------------
def _graph(args, config: dict, ckpt_name: str, sampler: str, scheduler: str, seed: int) -> dict:
    minority = config["minority"]
    pos_inputs = {"clip": ["ckpt", 1], "text": PROMPT}
    if minority:
        pos_inputs.update(ENCODE_SETTINGS)
    g = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "pos": {"class_type": "PromptOptim_MinorityEncode" if minority else "CLIPTextEncode", "inputs": pos_inputs},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": args.size, "height": args.size, "batch_size": 1}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
        "prev": {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}},
    }
    common = {"model": ["ckpt", 0], "seed": seed, "steps": args.steps, "cfg": args.cfg, "sampler_name": sampler,
              "scheduler": scheduler, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["lat", 0],
              "denoise": 1.0}
    if not minority:
        g["ks"] = {"class_type": "KSampler", "inputs": common}
        return g
    g["ks"] = {"class_type": "PromptOptim_MinoritySampler",
               "inputs": dict(common, **dict(PAPER_SETTINGS, gradient_checkpointing=config["checkpointing"]))}
    return g


def parse_report(report: str) -> tuple[int, list[int]]:
    """(number of optimized steps, their indices) from the first line of the sampler's report."""
    first = report.splitlines()[0] if report else ""
    match = re.match(r"MinorityPrompt: (\d+) optimized steps \[([\d, ]*)\]", first)
    if not match:
        return 0, []
    return int(match.group(1)), [int(s) for s in match.group(2).replace(",", " ").split()]


def _start_comfy(args):
    """A throw-away ComfyUI base dir with this pack and the checkpoint; the in-process executor."""
    ckpt = checkpoint_file(args)
    base = Path(tempfile.mkdtemp(prefix="minority_cost_"))
    from devtools.base_dir import make_base_dir
    from devtools.inprocess import InProcessComfy

    make_base_dir(base, checkpoints=[ckpt])
    runner = InProcessComfy(base)
    import comfy.samplers
    import comfy.utils

    comfy.utils.set_progress_bar_enabled(False)
    sampler, scheduler = args.sampler, args.scheduler
    if sampler not in comfy.samplers.SAMPLER_NAMES or scheduler not in comfy.samplers.SCHEDULER_NAMES:
        sampler, scheduler = "euler", "normal"
    return runner, base, ckpt, sampler, scheduler


def run_one(args, name: str) -> dict:
    import torch

    config = CONFIGS[name]
    runner, base, ckpt, sampler, scheduler = _start_comfy(args)
    cuda = torch.cuda.is_available()
    stamps: list[tuple[float, str]] = []
    send = runner.server.send_sync

    def record(event, data, sid=None):
        if event == "executing":
            stamps.append((time.perf_counter(), str(data.get("node") if isinstance(data, dict) else data)))
        return send(event, data, sid)

    runner.server.send_sync = record

    def generate(seed: int) -> tuple[float, float, float, str]:
        graph = _graph(args, config, ckpt.name, sampler, scheduler, seed)
        stamps.clear()
        if cuda:
            torch.cuda.synchronize()
        cpu_start = time.process_time()
        start = time.perf_counter()
        runner.run(graph)
        if cuda:
            torch.cuda.synchronize()
        total = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        names = [n for _, n in stamps]
        node = float("nan")
        if "ks" in names:
            i = names.index("ks")
            end = stamps[i + 1][0] if i + 1 < len(stamps) else start + total
            node = end - stamps[i][0]
        report = runner.node_outputs("ks")[2][0] if config["minority"] else ""
        return total, node, cpu, report

    load_before = os.getloadavg()[0]
    warm = generate(args.seed + 10_000)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = [generate(args.seed + i) for i in range(args.reps)]
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report = times[-1][3]
    optimized, steps = parse_report(report) if config["minority"] else (0, [])
    model, clip, vae = (out[0] for out in runner.node_outputs("ckpt"))
    dtypes = dict(unet=str(model.model.get_dtype()), unet_compute=str(model.model.manual_cast_dtype or
                                                                       model.model.get_dtype()),
                  vae=str(vae.vae_dtype), clip=str(next(clip.cond_stage_model.parameters()).dtype))
    shutil.rmtree(base, ignore_errors=True)
    return dict(name=name, label=config["label"], sampler=sampler, scheduler=scheduler, warmup_s=warm[0],
                times_s=[t[0] for t in times], node_s=[t[1] for t in times], cpu_s=[t[2] for t in times],
                load=[load_before, os.getloadavg()[0]], peak_bytes=peak, optimized=optimized, optimized_steps=steps,
                report=report, dtypes=dtypes, torch=torch.__version__, **_device_info())


# -- parent -------------------------------------------------------------------------------------------
def _child(args, what: str, passthrough: list[str]) -> tuple[dict | None, str, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.minority_cost", "--one", what, *passthrough],
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
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--scheduler", default="ddim_uniform")
    ap.add_argument("--size", type=int, default=None, help="image side in pixels (default 256 small, 512 sd15)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=None, help="timed generations (default 1 on CPU, 3 on GPU)")
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode: one configuration
    args = ap.parse_args()

    if args.one is not None:  # child
        configure_comfy_args()
        if args.one == "prepare":
            checkpoint_file(args)
            result = dict(name="prepare")
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
    passthrough = ["--model", args.model, "--device", args.device, "--steps", str(args.steps), "--cfg",
                   str(args.cfg), "--sampler", args.sampler, "--scheduler", args.scheduler, "--size", str(args.size),
                   "--seed", str(args.seed), "--reps", str(args.reps)]
    bench_start = time.perf_counter()

    def log(text: str):
        print(text, file=sys.stderr, flush=True)

    prep, err, wall = _child(args, "prepare", passthrough)
    if prep is None:
        log(f"preparing the model files failed:\n{err}")
        sys.exit(1)
    log(f"[minority_cost] model files ready ({wall:.0f} s)")
    results, failures = {}, {}
    for name in args.configs:
        res, err, wall = _child(args, name, passthrough)
        if res is None:
            failures[name] = err
            log(f"[minority_cost] {name} FAILED after {wall:.0f} s:\n{err}")
        else:
            results[name] = res
            log(f"[minority_cost] {name}: {statistics.median(res['times_s']):.2f} s/image "
                f"(child process {wall:.0f} s)")

    any_res = next(iter(results.values()), None)
    if any_res:
        dt = any_res["dtypes"]
        s = PAPER_SETTINGS
        print(f"device: {any_res['device']}, torch {any_res['torch']}, UNet {dt['unet']} (compute "
              f"{dt['unet_compute']}), VAE {dt['vae']}, CLIP {dt['clip']}")
        print(f"model {args.model}, {args.size}x{args.size}, batch 1, {args.steps} steps, cfg {args.cfg}, "
              f"{any_res['sampler']} / {any_res['scheduler']}, seed {args.seed}; MinorityPrompt iterations "
              f"{s['iterations']}, lr {s['lr']}, optimize_fraction {s['optimize_fraction']}, every_n_steps "
              f"{s['every_n_steps']}, sg_lambda {s['sg_lambda']}, norm {s['norm']}, anneal {s['anneal']}, "
              f"between_steps {s['between_steps']}, token_per_image {s['token_per_image']}, diversity "
              f"{s['diversity']}; median of {args.reps} after 1 warm-up")
        print()
        print("| config | optimized steps | s/image | ratio vs plain | sampler node s | extra s / optimized step | "
              "CPU s/image** | CPU-time ratio | peak memory* |")
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
            extra = f"{(t - plain) / r['optimized']:.2f}" if plain and r["optimized"] else "-"
            steps = f"{r['optimized']} {r['optimized_steps']}" if r["optimized"] else "0"
            print(f"| {r['label']} | {steps} | {t:.2f} | {ratio} | {statistics.median(r['node_s']):.2f} | {extra} | "
                  f"{c:.1f} | {cpu_ratio} | {_gib(r['peak_bytes'])} |")
        print("*peak: CUDA max allocated over the timed generations (resident models included), or the child "
              "process's peak RSS on the CPU (includes loading).")
        print("**CPU s: process CPU time (all threads) per generation; less sensitive than wall time to other "
              "load on the machine. 1-min load average at start/end of each child: " +
              ", ".join(f"{n} {results[n]['load'][0]:.1f}/{results[n]['load'][1]:.1f}" for n in results))
        for name, r in results.items():
            if r["report"]:
                print()
                print(f"{name} report (last timed generation):")
                print("```")
                print(r["report"])
                print("```")
    print()
    print(f"benchmark wall time: {time.perf_counter() - bench_start:.0f} s")
    if failures:
        print()
        for name, err in failures.items():
            print(f"FAILED {name}:\n```\n{err.strip()}\n```")
        sys.exit(1)


if __name__ == "__main__":
    main()
