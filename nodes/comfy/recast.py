"""Cast weights again in backward instead of keeping ComfyUI's cast copies alive until then.

Where ComfyUI stores a layer's weight in another dtype or device than it computes with (its manual_cast
ops: fp8 checkpoints, fp16 text encoders on the CPU, layers left in RAM by low-VRAM loading, LoRA applied
on the fly), `forward_comfy_cast_weights` casts the weight for each call. Under autograd, the plain
`F.linear` / conv then saves that cast copy for the backward, so a differentiable forward holds a second
copy of every layer it ran until the backward ends. Inside `recast_in_backward(module)` the cast
Linear and Conv2d layers of `module` run through an autograd Function that saves nothing of the weight:
its backward casts the weight again (through the same `cast_bias_weight`, patches included) to compute
the gradient of the input. The weights are frozen, so the input's gradient is the only one needed.

Only layers whose cast forward is ComfyUI's own and whose weight is a plain tensor are changed (another
pack's op classes and quantized tensors keep their own path); the change is an instance attribute,
removed on exit.
"""
from __future__ import annotations

import types
from contextlib import contextmanager

import torch

import comfy.ops

from .out_of_place import out_of_place_adds
from ...core.shared.autograd_weights import autograd_ready

_OWN = {comfy.ops.disable_weight_init.Linear: comfy.ops.disable_weight_init.Linear.forward_comfy_cast_weights,
        comfy.ops.disable_weight_init.Conv2d: comfy.ops.disable_weight_init.Conv2d.forward_comfy_cast_weights}


def _cast(module, like: torch.Tensor):
    return comfy.ops.cast_bias_weight(module, like, offloadable=True)


class _RecastLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, module):
        weight, bias, stream = _cast(module, input)
        out = torch.nn.functional.linear(input, weight, bias)
        comfy.ops.uncast_bias_weight(module, weight, bias, stream)
        ctx.module = module
        return out

    @staticmethod
    def backward(ctx, grad):
        weight, bias, stream = _cast(ctx.module, grad)
        grad_input = grad.matmul(weight)
        comfy.ops.uncast_bias_weight(ctx.module, weight, bias, stream)
        return grad_input, None


class _RecastConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, module):
        weight, bias, stream = _cast(module, input)
        out = module._conv_forward(input, weight, bias)
        comfy.ops.uncast_bias_weight(module, weight, bias, stream)
        ctx.module, ctx.input_shape = module, input.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        m = ctx.module
        weight, bias, stream = _cast(m, grad)
        grad_input = torch.nn.grad.conv2d_input(ctx.input_shape, weight, grad, m.stride, m.padding, m.dilation,
                                                m.groups)
        comfy.ops.uncast_bias_weight(m, weight, bias, stream)
        return grad_input, None


def _linear_forward(self, input):
    return _RecastLinear.apply(input, self)


def _conv2d_forward(self, input):
    return _RecastConv2d.apply(input, self)


def _replacement(module: torch.nn.Module):
    for cls, own in _OWN.items():
        if isinstance(module, cls) and getattr(type(module), "forward_comfy_cast_weights", None) is own:
            weight = module.weight
            if weight is None or type(weight.data) is not torch.Tensor:
                return None
            if cls is comfy.ops.disable_weight_init.Conv2d and (
                    module.padding_mode != "zeros" or isinstance(module.padding, str)):
                return None
            return _linear_forward if cls is comfy.ops.disable_weight_init.Linear else _conv2d_forward
    return None


@contextmanager
def recast_in_backward(module: torch.nn.Module):
    changed = []
    for sub in module.modules():
        forward = _replacement(sub)
        if forward is not None and "forward_comfy_cast_weights" not in sub.__dict__:
            sub.forward_comfy_cast_weights = types.MethodType(forward, sub)
            changed.append(sub)
    try:
        yield len(changed)
    finally:
        for sub in changed:
            sub.__dict__.pop("forward_comfy_cast_weights", None)


@contextmanager
def differentiable(module: torch.nn.Module):
    """`module` usable by autograd for the block, with no copy kept: shared inference-mode weights
    (core.shared.autograd_weights), casts redone in backward, and in-place residual adds (Flux, T5) made
    out of place (out_of_place.py). Yields the AutogradScope."""
    with autograd_ready(module) as scope, recast_in_backward(module), out_of_place_adds(module):
        yield scope
