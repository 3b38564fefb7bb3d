"""Cost of IPGO per epoch against one plain generation: seconds and peak memory, in one invocation.

    python -m benchmarks.ipgo_cost [--model small|sd15] [--steps N] [--epochs E] [--size PX] [--out PATH]

Writes benchmarks/ipgo_cost.md (or --out). Configurations (same seed, steps, cfg, sampler, scheduler and size;
batch 1), each in its own fresh subprocess so memory peaks do not accumulate:

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
default on a GPU; see benchmarks.bench_models.sd15_checkpoint).
"""
from __future__ import annotations

import statistics
import time

from benchmarks import harness
from benchmarks.bench_models import checkpoint_file
from benchmarks.comfy_run import (MODEL_DESCRIPTIONS, PROMPT, SAMPLER_NODE, ComfyBench, parse_arguments,
                                  run_configurations, sampling_graph, settings_block)

MODULE = "benchmarks.ipgo_cost"
REPORT = harness.ROOT / "benchmarks" / "ipgo_cost.md"
CONFIGS = {"plain": dict(label="plain KSampler (one generation)", last_steps=0),
           "ipgo": dict(label="IPGO, paper settings (K = 2)", last_steps=2),
           "ipgo_k4": dict(label="IPGO, K = 4", last_steps=4)}
PAPER = dict(learning_rate=0.001, lr_step=10, lr_gamma=0.9, accumulation=4, prefix_tokens=10, suffix_tokens=10,
             rank=300, rotation=True, conformity_weight=0.001, clip_norm=1.0, init_seed=0)
IPGO_NODE = "ipgo"
REPORT_OUTPUT = 5  # the optimize node's output slot holding its report text
PAPER_STEPS = 50
AUTHORS_SETTING = ("The authors' setting is full-size SD1.5 on a GPU: "
                   "`python -m benchmarks.ipgo_cost --model sd15 --size 512 --steps 50 --epochs 5` (the GPU defaults).")


def ipgo_graph(args, config, ckpt: str, reward: str, sampler: str, scheduler: str, seed: int, epochs: int) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "rw": {"class_type": "PromptOptim_LoadRewardModel",
               "inputs": {"family": "clip", "weights": reward, "clip_backbone": "none", "open_clip_architecture": "",
                          "dtype": "auto"}},
        IPGO_NODE: {"class_type": "PromptOptim_IPGOOptimize",
                    "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2], "reward": ["rw", 0],
                               "prompts": PROMPT, "negative": "", "sampling_seed": seed, "steps": args.steps,
                               "cfg": args.cfg, "sampler_name": sampler, "scheduler": scheduler,
                               "width": args.size, "height": args.size, "epochs": epochs,
                               "last_steps": config["last_steps"], **PAPER}},
        "prev": {"class_type": "PreviewImage", "inputs": {"images": [IPGO_NODE, 3]}}}


def run_one(args, name: str) -> dict:
    from devtools.reward_models import NAMES, reward_models_dir

    config = CONFIGS[name]
    ckpt = checkpoint_file(args.model)
    rewards = sorted(p for p in reward_models_dir().iterdir() if not p.name.startswith("."))
    bench = ComfyBench("ipgo_cost_", [ckpt], rewards, args.sampler, args.scheduler)
    ipgo = bool(config["last_steps"])

    def run(seed: int, epochs: int):
        if ipgo:
            graph = ipgo_graph(args, config, ckpt.name, NAMES["clip"], bench.sampler, bench.scheduler, seed, epochs)
            return bench.run(graph, IPGO_NODE)
        return bench.run(sampling_graph(args, ckpt.name, bench.sampler, bench.scheduler, seed), SAMPLER_NODE)

    run(args.seed + 10_000, 1)  # warm-up: loads the models (one epoch for IPGO)
    harness.reset_peak_memory(bench.cuda)
    if ipgo:
        timed = run(args.seed, args.epochs)
        per_unit, cpu_unit = [timed.node_s / args.epochs], [timed.cpu_s / args.epochs]
        report = bench.outputs(IPGO_NODE)[REPORT_OUTPUT][0]
    else:
        runs = [run(args.seed + i, 1) for i in range(args.reps)]
        per_unit, cpu_unit, report = [r.node_s for r in runs], [r.cpu_s for r in runs], ""
    peak = harness.peak_memory_bytes(bench.cuda)
    unet = str(bench.outputs("ckpt")[0][0].model.get_dtype())
    bench.close()
    return dict(name=name, label=config["label"], seconds=per_unit, cpu=cpu_unit, peak_bytes=peak, report=report,
                unet=unet, sampler=bench.sampler, scheduler=bench.scheduler)


# -- parent: the report --------------------------------------------------------------------------------
def introduction(args) -> list[str]:
    p = PAPER
    lines = [f"IPGO (PromptOptim_IPGOOptimize) at the paper's token settings: prefix {p['prefix_tokens']}, suffix "
             f"{p['suffix_tokens']}, rank {p['rank']}, rotation {'on' if p['rotation'] else 'off'}, conformity "
             f"{p['conformity_weight']}, clip_norm {p['clip_norm']:g}, lr {p['learning_rate']}; one prompt. Each "
             "configuration runs in its own fresh process through the real ComfyUI executor. IPGO first runs a "
             f"1-epoch warm-up (it loads the models), then one timed run of {harness.counted(args.epochs, 'epoch')}; "
             "s/epoch = the optimize node's time / epochs. Plain: one warm-up generation, then "
             f"{'one timed generation' if args.reps == 1 else f'the median of {args.reps}'}. Model "
             f"`{args.model}` ({MODEL_DESCRIPTIONS[args.model]}), {args.size} × {args.size}, {args.steps} steps, "
             f"cfg {args.cfg}, `{args.sampler}` / `{args.scheduler}`. Reward: the tiny random CLIP of "
             "`devtools/reward_models.py` (a real CLIP ViT-L/14 or ImageReward adds its own forward and backward "
             "per epoch). All weights are random: the cost does not depend on their values."]
    if args.steps != PAPER_STEPS:
        lines += ["", f"{args.steps} steps instead of the paper's {PAPER_STEPS}: the ratio per epoch is what "
                      "matters, and both sides use the same steps."]
    return lines + (["", AUTHORS_SETTING] if args.model != "sd15" else [])


def run_settings(args, results: dict) -> list[str]:
    """The UNet's dtype and the sampling and IPGO settings, for the settings block."""
    first = next(iter(results.values()))
    return [f"UNet {first['unet']}",
            f"model {args.model}, {args.size}x{args.size}, batch 1, {args.steps} steps, cfg {args.cfg}, "
            f"{first['sampler']} / {first['scheduler']}, seed {args.seed}; IPGO: 1 prompt, {args.epochs} timed "
            f"epochs after a 1-epoch warm-up; reward: tiny CLIP; plain: median of {args.reps} after 1 warm-up"]


def cost_table(args, cuda: bool, results: dict) -> list[str]:
    plain = results.get("plain")

    def per_unit(r: dict, key: str) -> tuple[float, float | None]:
        """(this configuration's median, plain sampling's)"""
        return statistics.median(r[key]), statistics.median(plain[key]) if plain else None

    def cells(r: dict) -> dict[str, str]:
        (seconds, plain_s), (cpu, plain_cpu) = per_unit(r, "seconds"), per_unit(r, "cpu")
        return {"s per epoch (plain: per generation)": f"{seconds:.2f}",
                "ratio vs plain": harness.ratio(seconds, plain_s), "CPU s": f"{cpu:.1f}",
                "CPU ratio": harness.ratio(cpu, plain_cpu), "peak memory*": harness.gib(r["peak_bytes"])}

    columns = ["config", "s per epoch (plain: per generation)", "ratio vs plain", "CPU s", "CPU ratio", "peak memory*"]
    labels = {name: config["label"] for name, config in CONFIGS.items()}
    lines = ["", *settings_block(args, results, lambda r: run_settings(args, r)),
             *harness.config_table(columns, args.configs, results, labels, cells), "",
             f"{harness.peak_memory_note(cuda, 'the timed part')} {harness.load_note(results)}"]
    for name, r in results.items():
        if r["report"]:
            lines += ["", f"{name} report ({r['label']}):", "", "```", r["report"], "```"]
    return lines


def reading(args, cuda: bool, results: dict) -> list[str]:
    """What the numbers say, written from the numbers of this run."""
    plain = results.get("plain")
    if not plain:
        return []
    plain_s = statistics.median(plain["seconds"])
    epochs = {CONFIGS[name]["last_steps"]: statistics.median(results[name]["seconds"])
              for name in ("ipgo", "ipgo_k4") if name in results}
    bullets = []
    if epochs:
        measured = " and ".join(f"{seconds / plain_s:.2f}×{' a plain generation' if i == 0 else ''} at K = {k}"
                                for i, (k, seconds) in enumerate(epochs.items()))
        smallest_k = min(epochs)
        text = (f"**Cost.** One IPGO epoch cost {measured}, so N prompt-wise epochs cost about N times that in "
                f"generations. An epoch is one generation ({args.steps - smallest_k} sampler steps "
                f"without gradient, {smallest_k} Euler steps with gradient at K = {smallest_k}), a differentiable VAE "
                "decode, the reward and a backward through the K UNet steps (CFG batch of 2) and the decoder.")
        if 2 in epochs and 4 in epochs:
            per_step = (epochs[4] - epochs[2]) / 2
            plain_step = plain_s / args.steps
            text += (f" Going from K = 2 to K = 4 added {epochs[4] - epochs[2]:.2f} s per epoch, about "
                     f"{per_step:.2f} s per extra step with gradient, against {plain_step:.2f} s for a plain "
                     f"sampling step: a step with gradient cost about {per_step / plain_step:.1f} plain steps.")
        bullets.append(text)
        if min(epochs.values()) < plain_s:
            text = ("An epoch that comes out cheaper than a plain generation cannot be explained from the work done "
                    "(it should be a little dearer); read it as about equal, not as a saving")
            text += " (each figure is one timed run)." if args.reps == 1 else "."
            if args.model == "small":
                text += (" On the small model the backward is cheap (one-level UNet, TAESD decoder); on SD1.5 at "
                         "512² the full VAE decoder's backward is large, so the ratio there is expected to be "
                         "higher.")
            bullets.append(text)
        kind = "CUDA max allocated" if cuda else "the child process's peak RSS"
        grown = " and ".join(f"{(results[name]['peak_bytes'] - plain['peak_bytes']) / 2**30:+.2f} GiB at "
                             f"K = {CONFIGS[name]['last_steps']}" for name in ("ipgo", "ipgo_k4") if name in results)
        bullets.append(f"**Memory.** Peak memory ({kind}) against plain sampling: {grown}. The activations of the "
                       "K steps and of the decoder are held for the backward (the UNet and VAE weights are shared, "
                       "not copied: `adapter_memory.md`); the activations grow with K and "
                       "with the image size.")
        bullets.append("The reports above list the reward of every timed epoch and whether the constraints held "
                       "after every epoch (‖WᵀW − I‖, coefficients and angles in range). The weights are random, so "
                       "nothing here bears on image quality.")
    return harness.reading_section(bullets)


def main():
    def epochs_option(parser):
        parser.add_argument("--epochs", type=int, default=None, help="timed epochs (default 2 on CPU, 5 on GPU)")

    args, cuda = parse_arguments(__doc__, CONFIGS, REPORT, epochs_option, steps=None,
                                 steps_help="default 20 on CPU, 50 (paper) on GPU", sampler="lms", scheduler="normal",
                                 reps_help="timed plain generations (default 1 CPU, 3 GPU)")
    args.steps = args.steps or (PAPER_STEPS if cuda else 20)
    args.epochs = args.epochs or (5 if cuda else 2)
    started = time.perf_counter()
    results, failed = run_configurations(MODULE, args, cuda, lambda name: run_one(args, name),
                                         summary=lambda r: f"{statistics.median(r['seconds']):.2f} s per unit")
    body = [*introduction(args), *cost_table(args, cuda, results), *reading(args, cuda, results)]
    harness.finish(args.out, "Cost of IPGO per epoch against one plain generation", MODULE, body, cuda, started,
                   failed)


if __name__ == "__main__":
    main()
