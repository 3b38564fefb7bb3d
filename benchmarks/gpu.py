"""One GPU benchmark: what each method costs against plain sampling on full-size SD1.5 and SDXL, in one run.

    python -m benchmarks.gpu [--families sd15 sdxl] [--configs ...] [--reps N] [--out PATH]
    python -m benchmarks.gpu --smoke [--out PATH]     # the same code, tiny, on the CPU (run by the test suite)

Writes benchmarks/gpu_results.md (or --out). Models, random weights (the cost does not depend on their
values), built once into ~/.cache/prompt-optim/bench by benchmarks/bench_models.py:

    sd15   full-size SD1.5 (860 M-parameter UNet, full AutoencoderKL VAE, CLIP-L): 512², 50 steps
    sdxl   full-size SDXL base (2.6 B-parameter UNet, AutoencoderKL VAE, CLIP-L + CLIP-G): 1024², 30 steps
    reward a CLIP ViT-L/14 with openai/clip-vit-large-patch14's configuration (DATE and IPGO)

Configurations, per family: the same seed, steps, cfg 7.5, DDIM (ComfyUI's `ddim` / `ddim_uniform`), batch 1,
each a real ComfyUI graph through the executor (checkpoint loader, text encode, sampler, VAE decode, preview):

    plain          core KSampler
    date_10        DATE Sampler, every_k_steps "10" (the paper's 10 % updates), rho 0.5, paper rule
    date_1         DATE at every step
    minority       MinorityPrompt Sampler at its defaults (positive from MinorityPrompt Text Encode)
    minority_ckpt  the same with gradient_checkpointing on
    ipgo_epoch     one IPGO epoch (IPGO Optimize, epochs 1, the paper's token settings, last 2 steps)

Protocol: one child process per family (a fresh CUDA context); in it each configuration runs once to warm up
(model loading, kernel selection), then --reps timed runs (default 1), each at a new seed. Time: the
sampler node's (IPGO: the optimize node's) own seconds from the executor's events; the ratio divides by
plain's. Peak: CUDA max allocated over the timed runs (reset before them; the resident models included);
on the CPU the highest resident set size sampled every 5 ms over them. In each child, a probe opens the
autograd scope the methods use (nodes/comfy/recast.py) on the loaded UNet and reports the bytes it copied and
how much allocated memory grew (the weights should be shared, not copied).

--smoke runs every configuration on the small test SD1 checkpoint at 64², 10 steps, with the tiny test CLIP
reward, on the CPU: the code path of the real run, in about a minute.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from benchmarks import harness
from benchmarks.comfy_run import SAMPLER_NODE, ComfyBench, model_dtypes, sampling_graph

MODULE = "benchmarks.gpu"
REPORT = harness.ROOT / "benchmarks" / "gpu_results.md"
CFG = 7.5
SAMPLER, SCHEDULER = "ddim", "ddim_uniform"


@dataclass(frozen=True)
class Family:
    label: str
    checkpoint: str  # a bench_models / devtools.checkpoints name, resolved in the child
    size: int
    steps: int


FAMILIES = {"sd15": Family("SD1.5, 512², 50 steps", "sd15", 512, 50),
            "sdxl": Family("SDXL, 1024², 30 steps", "sdxl", 1024, 30)}
SMOKE_FAMILIES = {"sd15": Family("small test SD1 checkpoint (smoke), 64², 10 steps", "small", 64, 10)}

CONFIGS = {
    "plain": "plain KSampler",
    "date_10": 'DATE, every_k_steps "10"',
    "date_1": 'DATE, every_k_steps "1"',
    "minority": "MinorityPrompt, defaults",
    "minority_ckpt": "MinorityPrompt, gradient_checkpointing",
    "ipgo_epoch": "IPGO, one epoch (K = 2)",
}
# the targets, as (time ratio, peak ratio) upper bounds against plain
TARGETS = {"date_10": 1.2, "date_1": 2.5, "minority": 2.5, "minority_ckpt": 2.5}
PEAK_TARGET = 1.3
IPGO_NODE = "ipgo"
AUTHORS_DATE_NOTE = ("The authors' own DATE pipeline (diffusers) is not part of this run: it needs their repository "
                     "and diffusers installed beside ComfyUI. Our numbers are checked against their code by the "
                     "equivalence tests (tests/test_date_authors.py); this script measures cost only.")


# -- what runs in a child ----------------------------------------------------------------------------------
def model_files(args, family: Family) -> tuple[Path, Path]:
    """(checkpoint, reward entry) for a family, built into the cache on first use."""
    from benchmarks.bench_models import clip_l_folder, sd15_checkpoint, sdxl_checkpoint
    from devtools.checkpoints import checkpoint_path
    from devtools.reward_models import NAMES, reward_models_dir

    checkpoint = {"small": lambda: checkpoint_path("sd1"), "sd15": sd15_checkpoint,
                  "sdxl": sdxl_checkpoint}[family.checkpoint]()
    reward = reward_models_dir() / NAMES["clip"] if args.smoke else clip_l_folder()
    return checkpoint, reward


def graph_for(name: str, family: Family, ckpt: str, reward: str, sampler: str, scheduler: str, seed: int) -> dict:
    """The graph of one configuration; the timed node is SAMPLER_NODE, or IPGO_NODE for ipgo_epoch."""
    from benchmarks.date_cost import date_graph
    from benchmarks.ipgo_cost import ipgo_graph
    from benchmarks.minority_cost import minority_graph

    settings = SimpleNamespace(steps=family.steps, cfg=CFG, size=family.size)
    if name == "plain":
        return sampling_graph(settings, ckpt, sampler, scheduler, seed)
    if name.startswith("date_"):
        every = name.split("_")[1]
        return date_graph(settings, dict(every=every, scale="1.0"), ckpt, reward, sampler, scheduler, seed)
    if name.startswith("minority"):
        return minority_graph(settings, dict(minority=True, checkpointing=name == "minority_ckpt"), ckpt, sampler,
                              scheduler, seed)
    return ipgo_graph(settings, dict(last_steps=2), ckpt, reward, sampler, scheduler, seed, epochs=1)


def method_report(bench: ComfyBench, name: str) -> str:
    """The method node's report text of the last run (how many steps it optimized), '' for plain."""
    slot = {"date": 1, "minority": 2, "ipgo": 5}.get(name.split("_")[0])
    if slot is None:
        return ""
    node = IPGO_NODE if name == "ipgo_epoch" else SAMPLER_NODE
    return bench.outputs(node)[slot][0]


class PeakMemory:
    """Peak memory over a block: CUDA max allocated, or the highest RSS sampled every 5 ms on the CPU."""

    def __init__(self, cuda: bool):
        self.cuda, self.bytes = cuda, 0
        self._stop = threading.Event()

    def _sample(self):
        import psutil

        process = psutil.Process()
        while not self._stop.is_set():
            self.bytes = max(self.bytes, process.memory_info().rss)
            self._stop.wait(0.005)

    def __enter__(self):
        if self.cuda:
            harness.reset_peak_memory(True)
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.bytes = harness.peak_memory_bytes(True)
        else:
            self._stop.set()
            self._thread.join()
        return False


def autograd_probe(bench: ComfyBench) -> dict:
    """Open the methods' autograd scope (nodes/comfy/recast.py `differentiable`) on the loaded UNet: bytes copied,
    bytes shared, growth of allocated memory."""
    import psutil
    import torch

    import comfy.model_management as mm
    from devtools.inprocess import pack_module

    patcher = bench.outputs("ckpt")[0][0]
    mm.load_models_gpu([patcher])

    def allocated() -> int:
        return torch.cuda.memory_allocated() if bench.cuda else psutil.Process().memory_info().rss

    before = allocated()
    with torch.inference_mode(False), pack_module("nodes.comfy.recast").differentiable(patcher.model) as scope:
        grown = allocated() - before
    return dict(copied=scope.extra_bytes, shared=scope.aliased_bytes, grown=grown)


def run_family(args, key: str) -> dict:
    family = families(args)[key]
    checkpoint, reward = model_files(args, family)
    bench = ComfyBench("gpu_bench_", [checkpoint], [reward], SAMPLER, SCHEDULER)
    configs = {}
    for name in args.configs:
        node = IPGO_NODE if name == "ipgo_epoch" else SAMPLER_NODE

        def run(seed: int):
            return bench.run(graph_for(name, family, checkpoint.name, reward.name, bench.sampler, bench.scheduler,
                                       seed), node)

        warm = run(args.seed + 10_000)
        with PeakMemory(bench.cuda) as peak:
            timed = [run(args.seed + i) for i in range(args.reps)]
        configs[name] = dict(node_s=[t.node_s for t in timed], total_s=[t.total_s for t in timed],
                             warmup_s=warm.total_s, peak_bytes=peak.bytes,
                             report=(method_report(bench, name).splitlines() or [""])[0].replace("|", "/"))
        harness.log(f"[gpu] {key} {name}: {statistics.median(configs[name]['node_s']):.2f} s")
    probe = autograd_probe(bench)
    dtypes = model_dtypes(bench)
    bench.close()
    return dict(name=key, label=family.label, configs=configs, probe=probe, dtypes=dtypes, sampler=bench.sampler,
                scheduler=bench.scheduler)


def prepare(args) -> None:
    for family in families(args).values():
        model_files(args, family)


# -- the report ----------------------------------------------------------------------------------------------
def families(args) -> dict[str, Family]:
    table = SMOKE_FAMILIES if args.smoke else FAMILIES
    return {key: table[key] for key in args.families if key in table}


def _median(result: dict) -> float:
    return statistics.median(result["node_s"])


def verdict(value: float, bound: float | None) -> str:
    if bound is None:
        return "-"
    return f"≤ {bound:g}× {'met' if value <= bound else 'MISSED'}"


def family_section(result: dict, cuda: bool, judge: bool) -> list[str]:
    """The family's table; judge: compare with the targets (not in a smoke run, whose numbers mean nothing)."""
    configs, probe = result["configs"], result["probe"]
    plain = configs.get("plain")
    lines = ["", f"## {result['label']}", "",
             f"dtypes: UNet {result['dtypes']['unet']} (compute {result['dtypes']['unet_compute']}), VAE "
             f"{result['dtypes']['vae']}, text encoder {result['dtypes']['clip']}; {result['sampler']} / "
             f"{result['scheduler']}", "",
             "| config | what ran | s/image | time ratio | time target | peak memory* | peak ratio | peak target |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in configs.items():
        seconds = _median(r)
        time_ratio = seconds / _median(plain) if plain else None
        peak_ratio = r["peak_bytes"] / plain["peak_bytes"] if plain else None
        lines.append(
            f"| {CONFIGS[name]} | {r['report'] or '-'} | {seconds:.2f} | "
            f"{'-' if time_ratio is None else f'{time_ratio:.2f}x'} | "
            f"{verdict(time_ratio, TARGETS.get(name)) if time_ratio and judge else '-'} | "
            f"{harness.gib(r['peak_bytes'])} | {'-' if peak_ratio is None else f'{peak_ratio:.2f}x'} | "
            f"{verdict(peak_ratio, PEAK_TARGET) if peak_ratio and judge and name != 'plain' else '-'} |")
    memory = "CUDA allocated memory" if cuda else "resident set"
    lines += ["", f"Autograd scope on the loaded UNet: {probe['shared'] / 2**30:.2f} GiB of weights shared, "
                  f"{probe['copied'] / 2**20:.1f} MiB copied; {memory} grew by {probe['grown'] / 2**20:.1f} MiB "
                  "while it was open."]
    return lines


def reading(results: dict, cuda: bool, smoke: bool) -> list[str]:
    if smoke:
        return harness.reading_section(["Smoke run: the targets apply to the GPU run; only the autograd probe means "
                                        "something here (weights copied: " + ", ".join(
                                            f"{r['probe']['copied'] / 2**20:.1f} MiB" for r in results.values())
                                        + ")."])
    bullets = []
    for result in results.values():
        configs = result["configs"]
        plain = configs.get("plain")
        if not plain:
            continue
        missed = [f"{CONFIGS[n]} {_median(r) / _median(plain):.2f}× (target ≤ {TARGETS[n]:g}×)"
                  for n, r in configs.items() if n in TARGETS and _median(r) / _median(plain) > TARGETS[n]]
        heavy = [f"{CONFIGS[n]} {r['peak_bytes'] / plain['peak_bytes']:.2f}×" for n, r in configs.items()
                 if n != "plain" and r["peak_bytes"] / plain["peak_bytes"] > PEAK_TARGET]
        text = f"**{result['label']}.** "
        text += ("Every time target was met" if not missed else "Time targets missed: " + "; ".join(missed)) + ". "
        text += ("Every peak stayed within 1.3× plain." if not heavy else
                 "Peaks above 1.3× plain: " + "; ".join(heavy) + ".")
        if "minority" in configs and "minority_ckpt" in configs:
            m, c = configs["minority"], configs["minority_ckpt"]
            text += (f" Gradient checkpointing changed MinorityPrompt's peak by "
                     f"{(c['peak_bytes'] - m['peak_bytes']) / 2**30:+.2f} GiB and its time by "
                     f"{_median(c) / _median(m) - 1:+.0%}.")
        probe = result["probe"]
        text += (f" The autograd scope copied {probe['copied'] / 2**20:.1f} MiB of the UNet's "
                 f"{probe['shared'] / 2**30:.2f} GiB of weights.")
        bullets.append(text)
    if not cuda:
        bullets.append("This run used the CPU: the peak is the process's resident set, which includes the models "
                       "and what the allocator keeps, so it is only a rough guide to GPU memory.")
    return harness.reading_section(bullets)


def introduction(args) -> list[str]:
    if args.smoke:
        what = ("Smoke run: the real run's code on tiny models on the CPU; the numbers say nothing about GPU cost. "
                "Reward of DATE and IPGO: the tiny test CLIP.")
    else:
        what = ("Each method against plain sampling, side by side, on random-weight full-size models (the cost does "
                "not depend on the weights' values). Reward of DATE and IPGO: a full-size CLIP ViT-L/14.")
    protocol = f"Batch 1, cfg {CFG:g}, {harness.counted(args.reps, 'timed run')} per configuration after one warm-up."
    return [f"{what} {protocol}", "", AUTHORS_DATE_NOTE]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU (the test suite's run)")
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--reps", type=int, default=1, help="timed runs per configuration after the warm-up")
    parser.add_argument("--seed", type=int, default=0)
    harness.add_out_option(parser, REPORT)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode: one family, or "prepare"
    args = parser.parse_args()
    if "plain" not in args.configs:
        args.configs = ["plain", *args.configs]  # every ratio is against it
    import torch

    cuda = torch.cuda.is_available() and not args.smoke
    if args.one is not None:
        from devtools.comfy_path import configure_comfy_args

        configure_comfy_args()
        if args.one == "prepare":
            prepare(args)
            harness.emit_result(dict(name="prepare"))
        else:
            harness.emit_result(run_family(args, args.one))
        raise SystemExit(0)
    started = time.perf_counter()
    harness.run_prepare_child(MODULE, cpu_only=not cuda)
    results, failed = harness.run_children(MODULE, list(families(args)), cpu_only=not cuda,
                                           summary=lambda r: f"{len(r['configs'])} configurations")
    body = introduction(args)
    for key in families(args):
        if key in results:
            body += family_section(results[key], cuda, judge=not args.smoke)
    body += ["", harness.peak_memory_note(True, "the timed runs of each configuration") if cuda else
             "*peak: the highest resident set size sampled every 5 ms over the timed runs."]
    body += reading(results, cuda, args.smoke)
    harness.finish(args.out, "Methods against plain sampling on one GPU", MODULE, body, cuda, started, failed)


if __name__ == "__main__":
    main()
