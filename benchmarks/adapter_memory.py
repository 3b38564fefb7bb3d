"""Extra memory of making ComfyUI's inference-mode weights usable by autograd (core.shared.autograd_weights).

    python -m benchmarks.adapter_memory [--out PATH]   (from the repo root, in the runtime venv)

Measured on the small test checkpoint, whose CLIP-L is the real full-size SD1.x text encoder: the bytes
the scope copied (only tensor subclasses are copied), the bytes it shared with the module (plain weights,
re-viewed in place), and the process's resident-set growth while the scope is open; then, through the
pack as ComfyUI loads it, the bytes autograd keeps for backward in one differentiable CLIP-L encode
with and without casting the weights again in backward (nodes/comfy/recast.py). Writes
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

MODULE = "benchmarks.adapter_memory"
PROMPT = "a photo of a"
REPORT = harness.ROOT / "benchmarks" / "adapter_memory.md"

INTRODUCTION = ("ComfyUI loads weights inside `torch.inference_mode()`; autograd cannot save such tensors for "
                "backward. For the duration of one differentiable block, `core/shared/autograd_weights.py` puts in "
                "place of each inference-mode weight an ordinary tensor viewing the same memory (`Tensor.set_` on "
                "the weight's storage), and puts the originals back afterwards. Only tensor subclasses (quantized "
                "weights of other packs) are copied. Measured on the small test checkpoint, whose CLIP-L is the "
                "real full-size SD1.x text encoder.")
CAST_INTRODUCTION = ("ComfyUI computes some layers in another dtype than it stores them in (here the CPU keeps "
                     "CLIP-L's Linear weights in float16 and computes in float32; fp8 checkpoints and low-VRAM loading "
                     "do the same on a GPU). Autograd would keep every such cast weight until the backward. Bytes "
                     f"autograd keeps for backward in one differentiable encode of {PROMPT!r} with one learnable "
                     "token:")


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


def saved_for_backward(encoder, text_encoder_module, token: torch.Tensor) -> int:
    """Bytes autograd keeps for backward during one differentiable encode of a prompt with one learnable token."""
    saved = []

    def pack_hook(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.inference_mode(False):
        leaf = token.clone().requires_grad_(True)
        with encoder, torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
            out = encoder.encode(PROMPT, text_encoder_module.LearnableTokens({"l": leaf}))
        out.cross_attn.square().sum().backward()
    return sum(saved)


def cast_rows(clip) -> list[dict]:
    """A differentiable CLIP-L encode through the pack's adapter, with and without recasting in backward."""
    from contextlib import contextmanager

    from devtools.inprocess import pack_module

    recast = pack_module("nodes.comfy.recast")
    adapter = pack_module("nodes.comfy.text_encoder")
    shared_text = pack_module("core.shared.text_encoder")
    encoder = adapter.ComfyTextEncoder(clip)
    linears = [m for m in clip.cond_stage_model.modules() if isinstance(m, torch.nn.Linear)]
    cast = [m for m in linears if m.weight.dtype != torch.float32]
    token = torch.randn(1, 768, generator=torch.Generator().manual_seed(0)) * 0.05
    with_recast = saved_for_backward(encoder, shared_text, token)

    @contextmanager
    def no_recast(module):  # the path before recast.py: ComfyUI's own cast forward, its copy kept for backward
        yield 0

    original, recast.recast_in_backward = recast.recast_in_backward, no_recast
    try:
        without = saved_for_backward(encoder, shared_text, token)
    finally:
        recast.recast_in_backward = original
    return [dict(path="ComfyUI's cast forward (before)", saved=without),
            dict(path="cast again in backward (`nodes/comfy/recast.py`)", saved=with_recast),
            dict(path="for scale: the Linear weights cast to float32", saved=sum(m.weight.numel() * 4 for m in cast),
                 note=f"{len(cast)} of {len(linears)} Linear layers stored as "
                      f"{', '.join(sorted({str(m.weight.dtype).replace('torch.', '') for m in cast}))}")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_out_option(ap, REPORT)
    args = ap.parse_args()
    start = time.perf_counter()
    from benchmarks.comfy_run import ComfyBench

    bench = ComfyBench("adapter_memory_", [checkpoint_path("sd1")])  # this pack loaded, as ComfyUI loads it
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
    casts = cast_rows(clip)
    bench.close()
    body = [INTRODUCTION, "",
            "| weights | parameters | stored as | shared in place | copied | process RSS growth |",
            "|---|---|---|---|---|---|"]
    body += [f"| {r['name']} | {r['params'] / 1e6:.1f} M | {r['dtype']} | {r['shared'] / 2**20:.1f} MiB | "
             f"{r['extra'] / 2**20:.1f} MiB | {r['grown'] / 2**20:.1f} MiB |" for r in rows]
    body += ["", *reading(rows), "", CAST_INTRODUCTION, "", "| path | kept for backward |", "|---|---|"]
    body += [f"| {r['path']} | {r['saved'] / 2**20:.1f} MiB{' (' + r['note'] + ')' if 'note' in r else ''} |"
             for r in casts]
    before, after = casts[0]["saved"], casts[1]["saved"]
    body += ["", f"Reading: recasting in backward cut what one encode keeps for its backward from "
                 f"{before / 2**20:.1f} MiB to {after / 2**20:.1f} MiB; what is left is activations."]
    harness.write_report(args.out, "Extra memory of the gradient-safe adapters", MODULE, body,
                         torch.cuda.is_available(), time.perf_counter() - start)


if __name__ == "__main__":
    main()
