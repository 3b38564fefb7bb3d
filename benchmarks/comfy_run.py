"""What the ComfyUI cost benchmarks (date_cost, minority_cost, ipgo_cost) share: their sampling options and the
defaults that depend on the device, a throw-away ComfyUI running this pack in the child process, the timing of
one graph run and of one node in it, and the plain text-to-image graph they compare against."""
from __future__ import annotations

import argparse
import math
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import harness
from devtools.comfy_path import configure_comfy_args

PROMPT = "an astronaut riding a horse on the moon, highly detailed"
SAMPLER_NODE = "ks"  # the id of the sampler node in sampling_graph


def parse_arguments(description: str, configs: dict, report: Path, extra_options=lambda parser: None,
                    **sampling_options):
    """This benchmark's command line, with the defaults that depend on the device resolved: (args, cuda).

    The parent and each child (the same arguments plus `--one NAME`) parse it the same way."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_options(parser, **sampling_options)
    extra_options(parser)
    parser.add_argument("--configs", nargs="+", choices=list(configs), default=list(configs))
    harness.add_out_option(parser, report)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode: one configuration
    args = parser.parse_args()
    return args, resolve_device_defaults(parser, args)


def run_configurations(module: str, args, cuda: bool, child_result, summary, prepare=None):
    """In a child (`--one NAME`): hand child_result(NAME) to the parent and exit. In the parent: build the model
    files first with PREPARE if given (in a child of its own, `--one prepare`, so no configuration's first run pays
    for it), then run each of args.configs in its own child; return (results, failed) as harness.run_children."""
    if args.one is not None:
        configure_comfy_args()
        if args.one == "prepare":
            prepare()
            harness.emit_result(dict(name="prepare"))
        else:
            harness.emit_result(child_result(args.one))
        raise SystemExit(0)
    if prepare is not None:
        harness.run_prepare_child(module, cpu_only=not cuda)
    return harness.run_children(module, args.configs, cpu_only=not cuda, summary=summary)


def add_sampling_options(parser, steps: int | None = 50, steps_help: str | None = None, sampler: str = "ddim",
                         scheduler: str = "ddim_uniform", reps_help: str = "timed generations (default 1 on CPU, "
                                                                           "3 on GPU)") -> None:
    parser.add_argument("--model", choices=["small", "sd15"], default=None, help="default: small on CPU, sd15 on GPU")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--steps", type=int, default=steps, help=steps_help)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--sampler", default=sampler)
    parser.add_argument("--scheduler", default=scheduler)
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 256 small, 512 sd15)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reps", type=int, default=None, help=reps_help)


def resolve_device_defaults(parser, args) -> bool:
    """Fill the defaults that depend on the device (model, size, repeats); True when the run uses CUDA.

    Parent and children both call it with the same arguments; a CPU child runs with the GPU hidden, so both
    resolve the same way."""
    import torch  # only to pick defaults: torch.cuda.is_available() does not start a CUDA context

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    args.device = "cuda" if cuda else "cpu"
    args.model = args.model or ("sd15" if cuda else "small")
    args.size = args.size or (512 if args.model == "sd15" else 256)
    args.reps = args.reps or (3 if cuda else 1)
    return cuda


MODEL_DESCRIPTIONS = {
    "small": "the test SD1 checkpoint: shrunk UNet (one level), full CLIP-L text encoder, TAESD VAE",
    "sd15": "full-size SD1.5: 860 M-parameter UNet, full SD1.x AutoencoderKL VAE, CLIP-L",
}


@dataclass
class RunTime:
    total_s: float  # the whole graph
    node_s: float  # the timed node alone (from the executor's "executing" events); nan if it did not run
    cpu_s: float  # process CPU time over the whole graph, all threads


class ComfyBench:
    """A throw-away ComfyUI base dir with this pack and the given model files, and its in-process executor."""

    def __init__(self, prefix: str, checkpoints: list[Path], rewards: list[Path] = (), sampler: str = "ddim",
                 scheduler: str = "ddim_uniform"):
        from devtools.base_dir import make_base_dir
        from devtools.inprocess import InProcessComfy

        self.base = Path(tempfile.mkdtemp(prefix=prefix))
        make_base_dir(self.base, checkpoints=checkpoints, rewards=list(rewards))
        self.runner = InProcessComfy(self.base)
        import comfy.samplers
        import comfy.utils
        import torch

        comfy.utils.set_progress_bar_enabled(False)
        self.cuda = torch.cuda.is_available()
        self.sampler, self.scheduler = sampler, scheduler
        if sampler not in comfy.samplers.SAMPLER_NAMES or scheduler not in comfy.samplers.SCHEDULER_NAMES:
            self.sampler, self.scheduler = "euler", "normal"  # an older ComfyUI without the requested pair
        self._stamps: list[tuple[float, str]] = []
        send = self.runner.server.send_sync

        def record(event, data, sid=None):
            if event == "executing":
                self._stamps.append((time.perf_counter(), str(data.get("node") if isinstance(data, dict) else data)))
            return send(event, data, sid)

        self.runner.server.send_sync = record

    def _synchronize(self) -> None:
        if self.cuda:  # queued kernels belong to the run that queued them
            import torch

            torch.cuda.synchronize()

    def run(self, graph: dict, node: str) -> RunTime:
        """Execute GRAPH; how long it took, and how long NODE took within it."""
        self._stamps.clear()
        self._synchronize()
        cpu_start, start = time.process_time(), time.perf_counter()
        self.runner.run(graph)
        self._synchronize()
        total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        names = [name for _, name in self._stamps]
        node_s = math.nan
        if node in names:  # a node runs until the executor announces the next one (or the run ends)
            i = names.index(node)
            end = self._stamps[i + 1][0] if i + 1 < len(self._stamps) else start + total
            node_s = end - self._stamps[i][0]
        return RunTime(total, node_s, cpu)

    def outputs(self, node: str):
        return self.runner.node_outputs(node)

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def sampling_graph(args, ckpt_name: str, sampler: str, scheduler: str, seed: int, positive: tuple[str, dict] = None,
                   sampler_node: tuple[str, dict] = None) -> dict:
    """checkpoint -> text encodes -> empty latent -> sampler ("ks") -> VAE decode -> preview, batch 1.

    positive / sampler_node: (class_type, extra inputs) replacing CLIPTextEncode / the core KSampler."""
    positive_type, positive_inputs = positive or ("CLIPTextEncode", {})
    sampler_type, sampler_inputs = sampler_node or ("KSampler", {})
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "pos": {"class_type": positive_type, "inputs": {"clip": ["ckpt", 1], "text": PROMPT, **positive_inputs}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": args.size, "height": args.size, "batch_size": 1}},
        SAMPLER_NODE: {"class_type": sampler_type,
                       "inputs": {"model": ["ckpt", 0], "seed": seed, "steps": args.steps, "cfg": args.cfg,
                                  "sampler_name": sampler, "scheduler": scheduler, "positive": ["pos", 0],
                                  "negative": ["neg", 0], "latent_image": ["lat", 0], "denoise": 1.0,
                                  **sampler_inputs}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": [SAMPLER_NODE, 0], "vae": ["ckpt", 2]}},
        "prev": {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}},
    }


def model_dtypes(bench: ComfyBench) -> dict:
    """The dtypes the checkpoint loader gave the UNet (stored and computed in), the VAE and the text encoder."""
    model, clip, vae = (out[0] for out in bench.outputs("ckpt"))
    stored = model.model.get_dtype()
    return dict(unet=str(stored), unet_compute=str(model.model.manual_cast_dtype or stored), vae=str(vae.vae_dtype),
                clip=str(next(clip.cond_stage_model.parameters()).dtype))


def generation_cells(result: dict, plain: dict | None) -> dict[str, str]:
    """The cells of a configuration's row that the DATE and MinorityPrompt tables share, by column."""
    seconds, cpu = statistics.median(result["times_s"]), statistics.median(result["cpu_s"])
    plain_s = statistics.median(plain["times_s"]) if plain else None
    plain_cpu = statistics.median(plain["cpu_s"]) if plain else None
    return {"s/image": f"{seconds:.2f}", "ratio vs plain": harness.ratio(seconds, plain_s),
            "sampler node s": f"{statistics.median(result['node_s']):.2f}", "CPU s/image**": f"{cpu:.1f}",
            "CPU-time ratio": harness.ratio(cpu, plain_cpu), "peak memory*": harness.gib(result["peak_bytes"])}


def generation_notes(cuda: bool, results: dict) -> list[str]:
    """The footnotes of the generation_cells columns."""
    cpu_note = ("**CPU s: process CPU time (all threads) per generation; less sensitive than wall time to other load "
                "on the machine.")
    return ["", harness.peak_memory_note(cuda, "the timed generations"),
            f"{cpu_note} {harness.load_note(results)}".strip()]


def settings_block(args, results: dict, describe) -> list[str]:
    """The settings of the run as a code block (the lines describe(results) gives), and a note if ComfyUI lacked
    the requested sampler; nothing when no configuration ran."""
    if not results:
        return []
    note = sampler_fallback_note(args, next(iter(results.values())))
    return ["```", *describe(results), "```", "", *([note, ""] if note else [])]


def generation_protocol(args) -> str:
    """How the DATE and MinorityPrompt benchmarks time a configuration against plain sampling, and on what model."""
    timed = "one timed generation" if args.reps == 1 else f"the median of {args.reps} timed generations"
    return ("Both run at the same seed, steps, cfg, sampler and scheduler, batch 1, each configuration in its own "
            "fresh process through the real ComfyUI executor (sampler node + VAE decode + preview): one warm-up "
            f"generation (it loads the models), then {timed}. Model `{args.model}` ({MODEL_DESCRIPTIONS[args.model]}), "
            f"{args.size} × {args.size}")


def sampler_fallback_note(args, result: dict) -> str:
    """A sentence when ComfyUI lacked the requested sampler / scheduler and euler / normal ran instead."""
    if (result["sampler"], result["scheduler"]) == (args.sampler, args.scheduler):
        return ""
    return (f"This ComfyUI has no `{args.sampler}` / `{args.scheduler}`, so {result['sampler']} / "
            f"{result['scheduler']} ran instead.")
