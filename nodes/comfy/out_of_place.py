"""Residual adds written in place (`x += f(x)`), made differentiable for a block of code.

Some of ComfyUI's blocks add their residuals in place to save memory: Flux's double- and single-stream
blocks (`img += ...`, `x += ...`) and T5's layers. Autograd cannot differentiate that: the tensor was saved
by the layer norm before it and is then overwritten. Inside `out_of_place_adds`, each such block receives
its tensor inputs as `_OutOfPlace` views (same memory, same autograd history), whose `+=` rebinds the name
to a new tensor instead of writing into the old one, which is what those lines mean for the block's own
variables; outputs go back to plain tensors. Nothing is copied and ComfyUI's code is not changed; the
instance attributes are removed on exit.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


class _OutOfPlace(torch.Tensor):
    """A tensor whose `+=` is `+` (results of its operations stay `_OutOfPlace`)."""

    def __iadd__(self, other):
        return self + other


def _wrap(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point() and type(value) is torch.Tensor:
        return value.as_subclass(_OutOfPlace)
    return value


def _unwrap(value):
    if isinstance(value, _OutOfPlace):
        return value.as_subclass(torch.Tensor)
    if isinstance(value, tuple):
        return tuple(_unwrap(v) for v in value)
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def _out_of_place(forward):
    def call(*args, **kwargs):
        return _unwrap(forward(*(_wrap(a) for a in args), **{k: _wrap(v) for k, v in kwargs.items()}))
    return call


def in_place_blocks() -> tuple[type, ...]:
    """ComfyUI's block classes whose forward adds residuals in place."""
    from comfy.ldm.flux.layers import DoubleStreamBlock, SingleStreamBlock
    from comfy.text_encoders.t5 import T5LayerFF, T5LayerSelfAttention

    return DoubleStreamBlock, SingleStreamBlock, T5LayerFF, T5LayerSelfAttention


@contextmanager
def out_of_place_adds(module: torch.nn.Module):
    """Give each in-place block of `module` the out-of-place forward (instance attribute), removed on exit."""
    blocks = [m for m in module.modules() if isinstance(m, in_place_blocks())]
    previous = [m.__dict__.get("forward") for m in blocks]  # another pack's instance forward, kept inside ours
    for block in blocks:
        block.forward = _out_of_place(block.forward)
    try:
        yield
    finally:
        for block, forward in zip(blocks, previous):
            if forward is None:
                block.__dict__.pop("forward", None)
            else:
                block.forward = forward
