"""Cost of MinorityPrompt sampling against plain sampling: seconds per image and peak memory, in one invocation.

    python -m benchmarks.minority_cost [--model small|sd15] [--steps 50] [--reps N] [--out PATH]

Writes benchmarks/minority_cost.md (or --out). Configurations (same seed, steps, cfg, sampler and scheduler;
batch 1), each in its own fresh subprocess (`--one NAME`) so memory peaks do not accumulate:

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
  --model sd15    full-size SD1.5 (benchmarks.bench_models.sd15_checkpoint): UNet from ComfyUI's own SD15
                  UNet config (860 M parameters), the full SD1.x AutoencoderKL VAE and CLIP-L; random fp16
                  weights; 512 x 512 by default. Built once into ~/.cache/prompt-optim/bench (~2.1 GB).
                  The default on a GPU.
No reward model is involved.
"""
from __future__ import annotations

import re
import statistics
import time

from benchmarks import harness
from benchmarks.bench_models import checkpoint_file
from benchmarks.comfy_run import (SAMPLER_NODE, ComfyBench, generation_cells, generation_notes, generation_protocol,
                                  model_dtypes, parse_arguments, run_configurations, sampling_graph, settings_block)

MODULE = "benchmarks.minority_cost"
REPORT = harness.ROOT / "benchmarks" / "minority_cost.md"

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
AUTHORS_SETTING = ("The authors' setting is full-size SD1.5 at 512², 50 steps, cfg 7.5, on a GPU: "
                   "`python -m benchmarks.minority_cost --model sd15 --steps 50 --cfg 7.5 --size 512` (on a GPU "
                   "`--model sd15`, `--size 512` and `--reps 3` are the defaults); the first run builds the "
                   "random-weight SD1.5 checkpoint into `~/.cache/prompt-optim/bench` (~2.1 GB).")
REPORT_OUTPUT = 2  # the sampler node's output slot holding its report text


# -- child: one configuration --------------------------------------------------------------------------
def minority_graph(args, config: dict, ckpt_name: str, sampler: str, scheduler: str, seed: int) -> dict:
    if not config["minority"]:
        return sampling_graph(args, ckpt_name, sampler, scheduler, seed)
    settings = dict(PAPER_SETTINGS, gradient_checkpointing=config["checkpointing"])
    return sampling_graph(args, ckpt_name, sampler, scheduler, seed,
                          positive=("PromptOptim_MinorityEncode", ENCODE_SETTINGS),
                          sampler_node=("PromptOptim_MinoritySampler", settings))


def parse_report(report: str) -> tuple[int, list[int]]:
    """(number of optimized steps, their indices) from the first line of the sampler's report."""
    first = report.splitlines()[0] if report else ""
    match = re.match(r"MinorityPrompt: (\d+) optimized steps \[([\d, ]*)\]", first)
    if not match:
        return 0, []
    return int(match.group(1)), [int(s) for s in match.group(2).replace(",", " ").split()]


def run_one(args, name: str) -> dict:
    config = CONFIGS[name]
    ckpt = checkpoint_file(args.model)
    bench = ComfyBench("minority_cost_", [ckpt], sampler=args.sampler, scheduler=args.scheduler)

    def generate(seed: int):
        return bench.run(minority_graph(args, config, ckpt.name, bench.sampler, bench.scheduler, seed), SAMPLER_NODE)

    warm = generate(args.seed + 10_000)
    harness.reset_peak_memory(bench.cuda)
    times = [generate(args.seed + i) for i in range(args.reps)]
    peak = harness.peak_memory_bytes(bench.cuda)
    report = bench.outputs(SAMPLER_NODE)[REPORT_OUTPUT][0] if config["minority"] else ""  # last timed generation
    optimized, steps = parse_report(report) if config["minority"] else (0, [])
    dtypes = model_dtypes(bench)
    bench.close()
    return dict(name=name, label=config["label"], sampler=bench.sampler, scheduler=bench.scheduler,
                warmup_s=warm.total_s, times_s=[t.total_s for t in times], node_s=[t.node_s for t in times],
                cpu_s=[t.cpu_s for t in times], peak_bytes=peak, optimized=optimized, optimized_steps=steps,
                report=report, dtypes=dtypes)


# -- parent: the report --------------------------------------------------------------------------------
def _median(result: dict, key: str) -> float:
    return statistics.median(result[key])


def _extra_per_optimized_step(result: dict, plain: dict | None) -> float | None:
    if not plain or not result["optimized"]:
        return None
    return (_median(result, "times_s") - _median(plain, "times_s")) / result["optimized"]


def introduction(args) -> list[str]:
    lines = ["MinorityPrompt (PromptOptim_MinoritySampler, its positive from PromptOptim_MinorityEncode with the "
             f"placeholder at the `{ENCODE_SETTINGS['position']}` initialized from the word "
             f"\"{ENCODE_SETTINGS['init_word']}\") at the paper's defaults, against the core KSampler. "
             f"{generation_protocol(args)}; random weights (the cost does not depend on their values). No reward "
             "model is involved."]
    return lines + (["", AUTHORS_SETTING] if args.model != "sd15" else [])


def run_settings(args, results: dict) -> list[str]:
    """The dtypes the children used and the sampling and MinorityPrompt settings, for the settings block."""
    first = next(iter(results.values()))
    dtypes, s = first["dtypes"], PAPER_SETTINGS
    return [f"dtypes: UNet {dtypes['unet']} (compute {dtypes['unet_compute']}), VAE {dtypes['vae']}, "
            f"CLIP {dtypes['clip']}",
            f"model {args.model}, {args.size}x{args.size}, batch 1, {args.steps} steps, cfg {args.cfg}, "
            f"{first['sampler']} / {first['scheduler']}, seed {args.seed}; MinorityPrompt iterations "
            f"{s['iterations']}, lr {s['lr']}, optimize_fraction {s['optimize_fraction']}, every_n_steps "
            f"{s['every_n_steps']}, sg_lambda {s['sg_lambda']}, norm {s['norm']}, anneal {s['anneal']}, "
            f"between_steps {s['between_steps']}, token_per_image {s['token_per_image']}, diversity "
            f"{s['diversity']}; median of {args.reps} after 1 warm-up"]


def cost_table(args, cuda: bool, results: dict) -> list[str]:
    def cells(r: dict) -> dict[str, str]:
        extra = _extra_per_optimized_step(r, results.get("plain"))
        return {**generation_cells(r, results.get("plain")),
                "optimized steps": f"{r['optimized']} {r['optimized_steps']}" if r["optimized"] else "0",
                "extra s / optimized step": "-" if extra is None else f"{extra:.2f}"}

    columns = ["config", "optimized steps", "s/image", "ratio vs plain", "sampler node s", "extra s / optimized step",
               "CPU s/image**", "CPU-time ratio", "peak memory*"]
    labels = {name: config["label"] for name, config in CONFIGS.items()}
    lines = ["", *settings_block(args, results, lambda r: run_settings(args, r)),
             *harness.config_table(columns, args.configs, results, labels, cells), *generation_notes(cuda, results)]
    reports = {name: r["report"] for name, r in results.items() if r["report"]}
    if len(reports) > 1 and len(set(reports.values())) == 1:
        lines += ["", "Sampler report of the last timed generation (identical for "
                      f"{' and '.join(reports)}):", "", "```", next(iter(reports.values())), "```"]
    else:
        for name, report in reports.items():
            lines += ["", f"{name} report (last timed generation):", "", "```", report, "```"]
    return lines


def reading(args, cuda: bool, results: dict) -> list[str]:
    """What the numbers say, written from the numbers of this run."""
    plain, minority, checkpointed = results.get("plain"), results.get("minority"), results.get("minority_ckpt")
    iterations = PAPER_SETTINGS["iterations"]
    bullets = []
    extra = _extra_per_optimized_step(minority, plain) if minority else None
    if extra is not None:
        cost = _median(minority, "times_s") / _median(plain, "times_s")
        per_iteration = extra / iterations
        plain_step = _median(plain, "times_s") / args.steps
        text = (f"**Cost.** The paper's defaults cost {cost:.2f}× plain sampling here, with {minority['optimized']} "
                f"of the {args.steps} steps optimized. Each optimized step added {extra:.2f} s, so each of its "
                f"{iterations} Adam iterations about {per_iteration:.2f} s; a plain sampling step (a batch-2 CFG UNet "
                f"forward, with its share of the decode) took {plain_step:.2f} s, so one iteration cost about "
                f"{per_iteration / plain_step:.1f} plain steps. An iteration is a CLIP-L text-encoder forward and "
                "backward plus two batch-1 UNet forwards and the backward through both.")
        if args.model == "small":
            text += (" On the small model the full-size CLIP-L text encoder is a large part of that, so the ratio on "
                     "SD1.5 will differ.")
        text += " `date_cost.md` has DATE's cost for comparison."
        bullets.append(text)
    checkpointed_extra = _extra_per_optimized_step(checkpointed, plain) if checkpointed else None
    if extra is not None and checkpointed_extra is not None:
        saved = minority["peak_bytes"] - checkpointed["peak_bytes"]
        added = minority["peak_bytes"] - plain["peak_bytes"]
        text = (f"**Gradient checkpointing** changed the peak by {-saved / 2**30:+.2f} GiB and the extra time per "
                f"optimized step from {extra:.1f} s to {checkpointed_extra:.1f} s "
                f"({checkpointed_extra / extra - 1:+.0%}). core/minority/optimize.py's optimize_step checkpoints "
                "both UNet predictions of an iteration (x0_t and x0_s), so backward recomputes two forwards; "
                "counting a backward as two forwards, that predicts at most 8/6 ≈ 1.33× per optimized step, less "
                "once the un-checkpointed text encoder is counted. ")
        text += ("The peak is CUDA max allocated with the models resident. " if cuda else
                 "On the CPU the peak is the process's RSS, including the loaded models. ")
        removed = f"{saved / 2**30:.2f} GiB" if saved > 0 else "nothing"
        text += f"Of MinorityPrompt's {added / 2**30:+.2f} GiB over plain sampling, checkpointing removed {removed}"
        if saved < added / 4:
            text += (", so most of it is not the UNet's activations: the weights are not copied (`adapter_memory.md`), "
                     "which leaves the CLIP-L text encoder's activations, the optimizer's state and the allocator's "
                     "retained memory.")
        else:
            text += f": activations are a large part of it at {args.size}²."
        bullets.append(text)
    reports = [r["report"] for r in (minority, checkpointed) if r and r["report"]]
    if reports:
        text = "**The optimization itself.** "
        if len(reports) == 2 and reports[0] == reports[1]:
            text += ("Both MinorityPrompt configurations report identical objectives, so checkpointing does not "
                     "change the computation. ")
        text += ("The \"objective a -> b\" values are J at the first and the last iteration. Each iteration re-noises "
                 "with a fresh draw, so the two values come from different noise, and with `measure_gain` off they "
                 "do not show whether J rose. Comparing J across steps mixes in the annealed re-noise level "
                 "s = T − t, which rises from step to step. The weights are random, so nothing here bears on image "
                 "quality.")
        bullets.append(text)
    return harness.reading_section(bullets)


def main():
    args, cuda = parse_arguments(__doc__, CONFIGS, REPORT)
    started = time.perf_counter()
    results, failed = run_configurations(MODULE, args, cuda, lambda name: run_one(args, name),
                                         summary=lambda r: f"{_median(r, 'times_s'):.2f} s/image",
                                         prepare=lambda: checkpoint_file(args.model))
    body = [*introduction(args), *cost_table(args, cuda, results), *reading(args, cuda, results)]
    harness.finish(args.out, "Cost of MinorityPrompt against plain sampling", MODULE, body, cuda, started, failed)


if __name__ == "__main__":
    main()
