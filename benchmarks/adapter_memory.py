"""Extra memory of the autograd-ready weight copies the ComfyUI adapters make (core.shared.autograd_weights).

    python -m benchmarks.adapter_memory   (from the repo root, in the runtime venv)

Measured on the small test checkpoint, whose CLIP-L is the real full-size SD1.x text encoder. The
copy is exactly the module's inference-mode weights in their stored dtype, so for any other model it
is (parameter count x bytes per parameter as ComfyUI stores them).
"""
import os
import platform
import sys
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from devtools.checkpoints import checkpoint_path  # noqa: E402
from devtools.comfy_path import configure_comfy_args  # noqa: E402


def rss() -> int:
    return psutil.Process(os.getpid()).memory_info().rss


def main():
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
        rows.append((name, params, "/".join(dtypes), scope.extra_bytes, grown))
    print(f"device: CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}")
    print("| weights | parameters | stored as | copy made (exact) | bytes/param | process RSS growth |")
    print("|---|---|---|---|---|---|")
    for name, params, dtype, extra, grown in rows:
        print(f"| {name} | {params / 1e6:.1f} M | {dtype} | {extra / 2**20:.1f} MiB | {extra / params:.2f} | "
              f"{grown / 2**20:.1f} MiB |")


if __name__ == "__main__":
    main()
