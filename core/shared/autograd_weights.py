"""Make a module's weights usable by autograd for a scope, without changing the module afterwards.

ComfyUI loads checkpoints inside `torch.inference_mode()`, so their weights are inference tensors,
which autograd refuses to save for backward. Inside `autograd_ready(module)` every inference
parameter/buffer is replaced by an ordinary copy (frozen: requires_grad=False); on exit the original
tensors are put back, except where someone else (e.g. a memory manager) replaced the copy meanwhile.
The copies are the extra memory this costs: `AutogradScope.extra_bytes` reports it.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class AutogradScope:
    extra_bytes: int = 0
    swapped: list = field(default_factory=list)


@contextmanager
def autograd_ready(module: torch.nn.Module):
    scope = AutogradScope()
    with torch.inference_mode(False):
        for sub in module.modules():
            for table in (sub._parameters, sub._buffers):
                for name, tensor in list(table.items()):
                    if tensor is None or not tensor.is_inference():
                        continue
                    copy = tensor.clone()
                    if isinstance(tensor, torch.nn.Parameter):
                        copy = torch.nn.Parameter(copy, requires_grad=False)
                    table[name] = copy
                    scope.swapped.append((table, name, tensor, copy))
                    scope.extra_bytes += copy.numel() * copy.element_size()
    try:
        yield scope
    finally:
        for table, name, original, copy in reversed(scope.swapped):
            if table.get(name) is copy:
                table[name] = original
        scope.swapped.clear()
