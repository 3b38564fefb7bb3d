"""Make a module's weights usable by autograd for a scope, without copying them or changing the module afterwards.

ComfyUI loads checkpoints inside `torch.inference_mode()`, so their weights are inference tensors,
which autograd refuses to save for backward. Inside `autograd_ready(module)` every inference
parameter/buffer is replaced by an ordinary tensor that views the same memory (`Tensor.set_` on the
weight's storage: no copy, created outside inference mode so autograd may save it); on exit the
original tensors are put back. Weights autograd only reads, never writes, so sharing memory is safe;
frozen: requires_grad=False.

Tensor subclasses (quantized or packed weights of other packs) cannot be re-viewed as a plain tensor;
those are copied instead, and `AutogradScope.extra_bytes` reports what the copies cost (0 otherwise).

If someone else (e.g. ComfyUI's memory manager offloading the model) replaces or moves a weight
inside the scope, the new placement is kept on exit rather than the stale original.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class AutogradScope:
    extra_bytes: int = 0  # copies made (tensor subclasses only)
    aliased_bytes: int = 0  # weights shared with the module, no memory of their own
    swapped: list = field(default_factory=list)


def ordinary_view(tensor: torch.Tensor) -> torch.Tensor | None:
    """A non-inference tensor on the same memory as `tensor`, or None when its type does not allow one."""
    base = tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor
    if type(base) is not torch.Tensor or base.layout != torch.strided or base.is_quantized or base.is_nested:
        return None
    view = torch.empty(0, dtype=base.dtype, device=base.device)
    view.set_(base.untyped_storage(), base.storage_offset(), base.size(), base.stride())
    return view


@contextmanager
def autograd_ready(module: torch.nn.Module):
    scope = AutogradScope()
    with torch.inference_mode(False):
        for sub in module.modules():
            for table in (sub._parameters, sub._buffers):
                for name, tensor in list(table.items()):
                    if tensor is None or not tensor.is_inference():
                        continue
                    usable = ordinary_view(tensor)
                    nbytes = tensor.numel() * tensor.element_size()
                    if usable is None:
                        usable = tensor.clone()
                        scope.extra_bytes += nbytes
                    else:
                        scope.aliased_bytes += nbytes
                    if isinstance(tensor, torch.nn.Parameter):
                        usable = torch.nn.Parameter(usable, requires_grad=False)
                    table[name] = usable
                    scope.swapped.append((table, name, tensor, usable, usable.data_ptr()))
    try:
        yield scope
    finally:
        for table, name, original, usable, placed_at in reversed(scope.swapped):
            # moved or replaced meanwhile (offloaded): the new placement is the weight now
            if table.get(name) is usable and usable.data_ptr() == placed_at:
                table[name] = original
        scope.swapped.clear()
