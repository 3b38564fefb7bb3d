"""Extra memory of making ComfyUI's inference-mode weights usable by autograd (core.shared.autograd_weights).

    python -m benchmarks.adapter_memory [--out PATH]   (from the repo root, in the runtime venv)

Measured on the small test checkpoint, whose CLIP-L is the real full-size SD1.x text encoder: the bytes
the scope copied (only tensor subclasses are copied), the bytes it shared with the module (plain weights,
re-viewed in place), and the process's resident-set growth while the scope is open. Writes
benchmarks/adapter_memory.md (or --out).
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

INTRODUCTION = ("ComfyUI loads weights inside `torch.inference_mode()`; autograd cannot save such tensors for "
                "backward. For the duration of one differentiable block, `core/shared/autograd_weights.py` puts in "
                "place of each inference-mode weight an ordinary tensor viewing the same memory (`Tensor.set_` on "
                "the weight's storage), and puts the originals back afterwards. Only tensor subclasses (quantized "
                "weights of other packs) are copied. Measured on the small test checkpoint, whose CLIP-L is the "
                "real full-size SD1.x text encoder.")


def rss() -> int:
    return psutil.Process(os.getpid()).memory_info().rss


def reading(rows: list[dict]) -> list[str]:
    """What the numbers say, written from the numbers of this run."""
    copied = sum(r["extra"] for r in rows)
    shared = sum(r["shared"] for r in rows)
    grown = sum(r["grown"] for r in rows)
    text = (f"Reading: of {shared / 2**20:.1f} MiB of weights made usable by autograd, {copied / 2**20:.1f} MiB were "
            f"copied; the process grew by {grown / 2**20:.1f} MiB while the scopes were open. ")
    text += ("No weight is copied, so a method's extra memory is the activations its backward keeps, not another "
             "model." if copied == 0 else "The copies are tensor subclasses the scope could not re-view in place.")
    on_gpu = [r["name"] for r in rows if r["device"] != "cpu"]
    if on_gpu:
        text += f" The weights of {' and '.join(on_gpu)} were in GPU memory here, so the RSS column does not see them."
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
        rows.append(dict(name=name, params=params, dtype="/".join(dtypes), extra=scope.extra_bytes,
                         shared=scope.aliased_bytes, grown=grown, device=next(module.parameters()).device.type))
    body = [INTRODUCTION, "",
            "| weights | parameters | stored as | shared in place | copied | process RSS growth |",
            "|---|---|---|---|---|---|"]
    body += [f"| {r['name']} | {r['params'] / 1e6:.1f} M | {r['dtype']} | {r['shared'] / 2**20:.1f} MiB | "
             f"{r['extra'] / 2**20:.1f} MiB | {r['grown'] / 2**20:.1f} MiB |" for r in rows]
    body += ["", *reading(rows)]
    harness.write_report(args.out, "Extra memory of the gradient-safe adapters", MODULE, body,
                         torch.cuda.is_available(), time.perf_counter() - start)


if __name__ == "__main__":
    main()
