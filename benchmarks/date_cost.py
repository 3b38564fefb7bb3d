"""Cost of DATE sampling against plain sampling: seconds per image and peak memory, in one invocation.

    python -m benchmarks.date_cost [--model small|sd15] [--reward tiny|clip-l] [--steps 50] [--reps N] [--out PATH]

Writes benchmarks/date_cost.md (or --out). Configurations (same seed, steps, cfg, sampler and scheduler;
batch 1), each in its own fresh subprocess (`--one NAME`) so memory peaks do not accumulate:

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

Models (random weights; the cost does not depend on their values; benchmarks/bench_models.py):
  --model small   devtools.checkpoints.checkpoint_path("sd1"): shrunk SD1 UNet (one level), full CLIP-L
                  text encoder, TAESD VAE; 256 x 256 by default. The default on the CPU.
  --model sd15    full-size SD1.5 (bench_models.sd15_checkpoint): UNet from ComfyUI's own SD15 UNet config
                  (860 M parameters), the full SD1.x AutoencoderKL VAE (the authors decode with the SD1.5
                  VAE, not a TAESD) and CLIP-L, random fp16 weights; 512 x 512 by default. Built once into
                  ~/.cache/prompt-optim/bench (~2.1 GB). The default on a GPU.
  --reward tiny   the tiny test CLIP folder of devtools.reward_models (64 px, width 32).
  --reward clip-l a Hugging Face CLIPModel folder with openai/clip-vit-large-patch14's configuration and
                  random weights (bench_models.clip_l_folder), built once into ~/.cache/prompt-optim/bench
                  (~1.7 GB): the authors' CLIP reward at full size.
"""
from __future__ import annotations

import os
import re
import statistics
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.bench_models import checkpoint_file, clip_l_folder
from benchmarks.comfy_run import (PROMPT, SAMPLER_NODE, ComfyBench, generation_cells, generation_notes,
                                  generation_protocol, model_dtypes, parse_arguments, run_configurations,
                                  sampling_graph, settings_block)

MODULE = "benchmarks.date_cost"
REPORT = harness.ROOT / "benchmarks" / "date_cost.md"

CONFIGS = {
    "plain": dict(label="plain KSampler", every=None, scale="1.0"),
    "date10": dict(label='DATE, every_k_steps "10"', every="10", scale="1.0"),
    "date1": dict(label='DATE, every_k_steps "1"', every="1", scale="1.0"),
    "date1_half": dict(label='DATE, every_k_steps "1", decode_scale 0.5', every="1", scale="0.5"),
}
REWARD_DESCRIPTIONS = {
    "tiny": "the tiny test CLIP of devtools/reward_models.py: 64 px, width 32",
    "clip-l": "a full-size CLIP ViT-L/14 with openai/clip-vit-large-patch14's configuration",
}
AUTHORS_SETTING = ("The authors' setting, full-size SD1.5 at 512² with a full-size CLIP ViT-L/14 reward, is "
                   "`python -m benchmarks.date_cost --model sd15 --reward clip-l` (on a GPU `--model sd15` and 512² "
                   "are the defaults); the script builds both models with random weights into "
                   "`~/.cache/prompt-optim/bench`.")
# the authors' figures (SD1.5 on a GPU, CLIP ViT-L/14 reward, full VAE), for comparison in the reading
AUTHORS_RATIO_EVERY_STEP, AUTHORS_RATIO_10_PERCENT = 4.29, 1.39


def model_files(args) -> tuple[Path, Path, str]:
    """(checkpoint, reward entry to link into models/rewards, its name in the weights combo)."""
    from devtools.reward_models import NAMES, reward_models_dir

    entry = reward_models_dir() / NAMES["clip"] if args.reward == "tiny" else clip_l_folder()
    return checkpoint_file(args.model), entry, entry.name


# -- child: one configuration --------------------------------------------------------------------------
def date_graph(args, config: dict, ckpt_name: str, reward_name: str, sampler: str, scheduler: str, seed: int) -> dict:
    if config["every"] is None:
        return sampling_graph(args, ckpt_name, sampler, scheduler, seed)
    date_inputs = dict(vae=["ckpt", 2], reward=["rw", 0], rho=0.5, rule="paper", schedule="every_k_steps",
                       schedule_value=config["every"], iterations=1, prior_weight=0.0, decode_scale=config["scale"])
    graph = sampling_graph(args, ckpt_name, sampler, scheduler, seed,
                           positive=("PromptOptim_TextEncodeKeepText", {}),
                           sampler_node=("PromptOptim_DATESampler", date_inputs))
    graph["rw"] = {"class_type": "PromptOptim_LoadRewardModel",
                   "inputs": {"family": "clip", "weights": reward_name, "clip_backbone": "none",
                              "open_clip_architecture": "", "dtype": "auto"}}
    return graph


def parse_report(report: str) -> tuple[int, int]:
    """(updates, reward evaluations) from the DATE sampler's report text."""
    first = report.splitlines()[0] if report else ""
    match = re.search(r"(\d+) updates", first)
    updates = int(match.group(1)) if match else 0
    evaluations = sum(len(line.split("mean reward", 1)[1].split(","))
                      for line in report.splitlines()[1:] if "mean reward" in line)
    return updates, evaluations


def run_one(args, name: str) -> dict:
    config = CONFIGS[name]
    ckpt, reward_entry, reward_name = model_files(args)
    bench = ComfyBench("date_cost_", [ckpt], [reward_entry], args.sampler, args.scheduler)

    def generate(seed: int):
        graph = date_graph(args, config, ckpt.name, reward_name, bench.sampler, bench.scheduler, seed)
        return bench.run(graph, SAMPLER_NODE)

    warm = generate(args.seed + 10_000)
    harness.reset_peak_memory(bench.cuda)
    times = [generate(args.seed + i) for i in range(args.reps)]
    peak = harness.peak_memory_bytes(bench.cuda)
    updates = evaluations = 0
    dtypes = model_dtypes(bench)
    if config["every"] is not None:
        updates, evaluations = parse_report(bench.outputs(SAMPLER_NODE)[1][0])
        dtypes["reward"] = str(next(bench.outputs("rw")[0][0].reward.parameters()).dtype)
    bench.close()
    return dict(name=name, label=config["label"], sampler=bench.sampler, scheduler=bench.scheduler,
                warmup_s=warm.total_s, times_s=[t.total_s for t in times], node_s=[t.node_s for t in times],
                cpu_s=[t.cpu_s for t in times], peak_bytes=peak, updates=updates, reward_evaluations=evaluations,
                dtypes=dtypes)


# -- child: decode-scale fidelity ----------------------------------------------------------------------
def run_fidelity(args) -> dict:
    """Reward and d reward / d x0 for the same x0 estimates of a plain run, decoded at scale 1.0 and 0.5.

    Reproduces DateGuider._decode: process_latent_out, bilinear F.interpolate of the latent, the VAE's
    first_stage_model.decode, then /2 + 0.5 (no clamp)."""
    import torch
    import torch.nn.functional as F

    ckpt, reward_entry, _ = model_files(args)
    bench = ComfyBench("date_cost_", [ckpt], [reward_entry], args.sampler, args.scheduler)  # before comfy imports
    import comfy.model_management as mm
    import comfy.sample
    import comfy.sd1_clip

    from core.rewards import load_reward
    from core.shared.autograd_weights import autograd_ready
    from core.shared.pixels import pixels_from_decoder

    model, clip, vae = bench.runner.load_checkpoint(ckpt.name)
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

        comfy.sample.sample(model, noise, args.steps, args.cfg, bench.sampler, bench.scheduler, pos, neg, latent,
                            callback=callback, disable_pbar=True, seed=args.seed)
    tokenizer_dir = os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer")
    reward_dtype = torch.float32 if device.type == "cpu" else torch.float16
    reward = load_reward("clip", reward_entry, device=device, dtype=reward_dtype,
                         fallback_tokenizer_dir=tokenizer_dir)
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
        cosine = float(F.cosine_similarity(full[1], half[1], dim=0))
        rows.append(dict(step=step, reward_1=full[0], reward_05=half[0], cosine=cosine, seconds_1=full[2],
                         seconds_05=half[2], pixels_1=full[3], pixels_05=half[3]))
    # second runs of the timing (the first call of each path pays one-off costs)
    timing = (score(x0s[wanted[-1]], 1.0)[2], score(x0s[wanted[-1]], 0.5)[2])
    bench.close()
    return dict(name="fidelity", rows=rows, timing=timing)


# -- parent: the report --------------------------------------------------------------------------------
def _median(result: dict, key: str) -> float:
    return statistics.median(result[key])


def introduction(args) -> list[str]:
    lines = ["DATE (PromptOptim_DATESampler: rho 0.5, the paper rule, one gradient step per update) against the "
             f"core KSampler. {generation_protocol(args)}; reward `{args.reward}` "
             f"({REWARD_DESCRIPTIONS[args.reward]}). All weights are random: the cost does not depend on their values."]
    return lines + (["", AUTHORS_SETTING] if (args.model, args.reward) != ("sd15", "clip-l") else [])


def run_settings(args, results: dict) -> list[str]:
    """The dtypes the children used and the sampling settings, for the settings block."""
    first = next(iter(results.values()))
    dtypes = first["dtypes"]
    reward_dtype = next((r["dtypes"]["reward"] for r in results.values() if "reward" in r["dtypes"]), "?")
    return [f"dtypes: UNet {dtypes['unet']} (compute {dtypes['unet_compute']}), VAE {dtypes['vae']}, "
            f"reward {reward_dtype}",
            f"model {args.model}, reward {args.reward}, {args.size}x{args.size}, batch 1, {args.steps} steps, "
            f"cfg {args.cfg}, {first['sampler']} / {first['scheduler']}, seed {args.seed}; rho 0.5, paper rule, "
            f"1 iteration; median of {args.reps} after 1 warm-up"]


def cost_table(args, cuda: bool, results: dict) -> list[str]:
    def cells(r: dict) -> dict[str, str]:
        return {**generation_cells(r, results.get("plain")), "updates": str(r["updates"]),
                "reward evaluations": str(r["reward_evaluations"])}

    columns = ["config", "updates", "s/image", "ratio vs plain", "sampler node s", "CPU s/image**", "CPU-time ratio",
               "peak memory*", "reward evaluations"]
    labels = {name: config["label"] for name, config in CONFIGS.items()}
    return ["", *settings_block(args, results, lambda r: run_settings(args, r)),
            *harness.config_table(columns, args.configs, results, labels, cells), *generation_notes(cuda, results)]


def fidelity_table(args, fidelity: dict) -> list[str]:
    rows = fidelity["rows"]
    lines = ["", f"Cheaper decode fidelity: same x0 estimates (plain run, seed {args.seed}), decoded at scale 1.0 vs "
                 "0.5; gradient of the reward w.r.t. the x0 latent", "",
             "| step | reward @1.0 | reward @0.5 | abs difference | gradient cosine |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['step']} | {row['reward_1']:.5f} | {row['reward_05']:.5f} | "
                     f"{abs(row['reward_1'] - row['reward_05']):.5f} | {row['cosine']:.3f} |")
    mean_difference, mean_cosine, spread = _fidelity_summary(fidelity)
    full_s, half_s = fidelity["timing"]
    lines += [f"| mean | | | {mean_difference:.5f} | {mean_cosine:.3f} |", "",
              f"(reward spread over these steps at 1.0: {spread:.5f}; decode + reward + gradient: {full_s:.3f} s at "
              f"1.0 ({rows[0]['pixels_1']} px) vs {half_s:.3f} s at 0.5 ({rows[0]['pixels_05']} px))"]
    return lines


def _fidelity_summary(fidelity: dict) -> tuple[float, float, float]:
    """(mean |reward change|, mean gradient cosine, spread of the full-scale reward across the steps)."""
    rows = fidelity["rows"]
    mean_difference = statistics.mean(abs(r["reward_1"] - r["reward_05"]) for r in rows)
    spread = max(r["reward_1"] for r in rows) - min(r["reward_1"] for r in rows)
    return mean_difference, statistics.mean(r["cosine"] for r in rows), spread


def reading(args, cuda: bool, results: dict, fidelity: dict | None) -> list[str]:
    """What the numbers say, written from the numbers of this run."""
    plain = results.get("plain")
    every, tenth, half = results.get("date1"), results.get("date10"), results.get("date1_half")
    bullets = []

    def ratios(r: dict) -> tuple[float, float]:
        return _median(r, "times_s") / _median(plain, "times_s"), _median(r, "cpu_s") / _median(plain, "cpu_s")

    if plain and (every or tenth):
        measured = []
        if every:
            measured.append("DATE at every step cost {:.2f}× plain sampling ({:.2f}× in CPU time)"
                            .format(*ratios(every)))
        if tenth:
            measured.append("an update every 10 steps ({}) {:.2f}× ({:.2f}× in CPU time)"
                            .format(harness.counted(tenth["updates"], "update"), *ratios(tenth)))
        text = (f"**Cost.** {'; '.join(measured)}. The authors report {AUTHORS_RATIO_EVERY_STEP}× and "
                f"{AUTHORS_RATIO_10_PERCENT}× (SD1.5, GPU, CLIP ViT-L/14 reward, full VAE). An update step costs "
                "one unconditional and two conditional UNet passes, one of them with backward, plus a VAE decode "
                "and a reward pass, both with backward, so the ratio grows with the VAE and the reward next to "
                "the UNet.")
        cheap = (["the VAE is a TAESD"] if args.model == "small" else []) + \
                (["the reward is a 64-px CLIP"] if args.reward == "tiny" else [])
        if cheap:
            text += f" Here {' and '.join(cheap)}, so a lower ratio than theirs is expected."
        if every and tenth and every["updates"]:
            predicted = 1 + (ratios(every)[0] - 1) * tenth["updates"] / every["updates"]
            text += (f" If an update costs the same wherever it falls, the prediction for "
                     f"{harness.counted(tenth['updates'], 'update')} is {predicted:.2f}×; measured "
                     f"{ratios(tenth)[0]:.2f}×")
            text += " (one timed generation each)." if args.reps == 1 else f" (median of {args.reps})."
        bullets.append(text)
        kind = "CUDA max allocated" if cuda else "the child process's peak RSS"
        grown = [f"{(r['peak_bytes'] - plain['peak_bytes']) / 2**30:+.2f} GiB {label}"
                 for r, label in ((every, "with DATE at every step"), (tenth, "with an update every 10 steps")) if r]
        bullets.append(f"**Memory.** Against plain sampling, peak memory ({kind}) changed by {' and '.join(grown)}. "
                       "An update holds the backward graph of one update; the UNet, VAE and reward weights are "
                       "shared with the models, not copied, to make autograd possible under ComfyUI's inference "
                       "mode (`adapter_memory.md`). The graph exists only during an update, so the number of updates "
                       "should not change the peak. The authors report 24 → 61.5 GB on a GPU at batch 16.")
    if fidelity:
        mean_difference, mean_cosine, spread = _fidelity_summary(fidelity)
        full_s, half_s = fidelity["timing"]
        text = "**Cheaper decode.** "
        if plain and every and half:
            text += f"`decode_scale 0.5` changed the every-step cost from {ratios(every)[0]:.2f}× to " \
                    f"{ratios(half)[0]:.2f}×, and the "
        else:
            text += "`decode_scale 0.5` changed the "
        text += f"decode + reward + gradient time from {full_s:.3f} s to {half_s:.3f} s. On the same x0 estimates " \
                f"the reward moved by {mean_difference:.5f} on average"
        if spread * 1000 > mean_difference:
            text += f", {mean_difference / spread:.1f} times the spread of the full-scale reward across the steps " \
                    f"({spread:.5f})"
        else:  # a ratio to a spread this small says nothing
            text += f", while the full-scale reward varied by only {spread:.1e} across the steps"
        text += f", and the half-scale gradient w.r.t. the latent had a mean cosine of {mean_cosine:.3f} with the " \
                "full-scale one. "
        # kept: the gradient points nearly the same way, and the reward moved less than it does across the steps
        kept_direction, kept_value = mean_cosine >= 0.9, mean_difference <= spread
        if kept_direction and kept_value:
            text += "In this run the cheaper decode kept both the reward and its direction."
        else:
            lost = [what for what, kept in (("the reward's value", kept_value), ("its direction", kept_direction))
                    if not kept]
            text += f"In this run the cheaper decode did not keep {' or '.join(lost)}."
        text += (" The models have random weights, so these numbers are only indicative; treat `decode_scale < 1` "
                 "as experimental until it is measured on real weights. A TAESD connected as the `vae` input is "
                 "the other cheap option")
        text += "; the small test checkpoint's VAE already is one." if args.model == "small" else "."
        bullets.append(text)
    return harness.reading_section(bullets)


def main():
    def date_options(parser):
        parser.add_argument("--reward", choices=["tiny", "clip-l"], default="tiny")
        parser.add_argument("--no-fidelity", action="store_true")

    args, cuda = parse_arguments(__doc__, CONFIGS, REPORT, date_options)
    started = time.perf_counter()
    results, failed = run_configurations(
        MODULE, args, cuda, lambda name: run_fidelity(args) if name == "fidelity" else run_one(args, name),
        summary=lambda r: f"{_median(r, 'times_s'):.2f} s/image", prepare=lambda: model_files(args))
    fidelity = None
    if not args.no_fidelity:
        fidelity_results, fidelity_failed = harness.run_children(MODULE, ["fidelity"], cpu_only=not cuda)
        failed.update(fidelity_failed)
        fidelity = fidelity_results.get("fidelity")
    body = [*introduction(args), *cost_table(args, cuda, results),
            *(fidelity_table(args, fidelity) if fidelity else []), *reading(args, cuda, results, fidelity)]
    harness.finish(args.out, "Cost of DATE against plain sampling", MODULE, body, cuda, started, failed)


if __name__ == "__main__":
    main()
