"""Extra memory of the autograd-ready weight copies the ComfyUI adapters make (core.shared.autograd_weights).

    python -m benchmarks.adapter_memory [--out PATH]   (from the repo root, in the runtime venv)

Measured on the small test checkpoint, whose CLIP-L is the real full-size SD1.x text encoder. The
copy is exactly the module's inference-mode weights in their stored dtype, so for any other model it
is (parameter count x bytes per parameter as ComfyUI stores them). Writes benchmarks/adapter_memory.md
(or --out).
"""
import argparse
import os
import sys
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import harness  # noqa: E402
from devtools.checkpoints import checkpoint_path  # noqa: E402
from devtools.comfy_path import configure_comfy_args  # noqa: E402

MODULE = "benchmarks.adapter_memory"
REPORT = harness.ROOT / "benchmarks" / "adapter_memory.md"
# parameter counts of full-size models, to turn bytes/param into what a method holds while it runs
FULL_SIZE_PARAMETERS = {"SD1.5": (860e6, 123.7e6), "SDXL": (2.6e9, 0.8e9)}  # (UNet, text encoders)
FP16_BYTES = 2

INTRODUCTION = ("ComfyUI loads weights inside `torch.inference_mode()`; autograd cannot save such tensors for "
                "backward. The adapters in `nodes/comfy/` therefore hold, through "
                "`core/shared/autograd_weights.py`, an ordinary copy of a module's inference-mode weights for the "
                "duration of one differentiable block, and put the originals back afterwards. That copy is the "
                "whole extra cost; it is freed when the block ends. Measured on the small test checkpoint, whose "
                "CLIP-L is the real full-size SD1.x text encoder.")


def rss() -> int:
    return psutil.Process(os.getpid()).memory_info().rss


def reading(rows: list[dict]) -> list[str]:
    """What the numbers say, written from the numbers of this run."""
    per_row = ", ".join(f"{r['name']} {r['dtype']} = {r['extra'] / r['params']:.2f} bytes/param" for r in rows)

    def count(n: float) -> str:
        return f"{n / 1e9:.1f} B" if n >= 1e9 else f"{n / 1e6:.0f} M"

    estimates = " and ".join(
        f"~{unet * FP16_BYTES / 2**30:.2f} GiB (UNet) + ~{text * FP16_BYTES / 2**30:.2f} GiB (text encoders) for "
        f"{model} (~{count(unet)} + ~{count(text)} params)" for model, (unet, text) in FULL_SIZE_PARAMETERS.items())
    text = (f"Reading: the copy costs exactly one more set of weights in the dtype ComfyUI stores them in (here "
            f"{per_row}). With fp16 weights, as on a GPU, the copies held while a method runs come to {estimates}. "
            "The RSS column is the process's resident-set growth measured around the copy (allocator reuse can make "
            "it differ from the exact copy).")
    on_gpu = [r["name"] for r in rows if r["device"] != "cpu"]
    if on_gpu:
        text += (f" The weights of {' and '.join(on_gpu)} were in GPU memory here, so the RSS column does not show "
                 "their copy.")
    return [text]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_out_option(ap, REPORT)
    args = ap.parse_args()
    start = time.perf_counter()
    configure_comfy_args()
    import comfy.sd

    from core.shared.autograd_weights import autograd_ready

    with torch.inference_mode():
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint_path("sd1")))
    clip.load_model()
    rows = []
    for name, module in (("SD1.x CLIP-L text encoder (full size)", clip.cond_stage_model),
                         ("test UNet (small)", model.model)):
        before = rss()
        with autograd_ready(module) as scope:
            grown = rss() - before
        params = sum(p.numel() for p in module.parameters())
        dtypes = sorted({str(p.dtype).replace("torch.", "") for p in module.parameters()})
        rows.append(dict(name=name, params=params, dtype="/".join(dtypes), extra=scope.extra_bytes, grown=grown,
                         device=next(module.parameters()).device.type))
    body = [INTRODUCTION, "",
            "| weights | parameters | stored as | copy made (exact) | bytes/param | process RSS growth |",
            "|---|---|---|---|---|---|"]
    body += [f"| {r['name']} | {r['params'] / 1e6:.1f} M | {r['dtype']} | {r['extra'] / 2**20:.1f} MiB | "
             f"{r['extra'] / r['params']:.2f} | {r['grown'] / 2**20:.1f} MiB |" for r in rows]
    body += ["", *reading(rows)]
    harness.write_report(args.out, "Extra memory of the gradient-safe adapters", MODULE, body,
                         torch.cuda.is_available(), time.perf_counter() - start)


if __name__ == "__main__":
    main()
