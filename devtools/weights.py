"""Bit-exact weight snapshots for "the user's model is unchanged" checks.

torch.equal is wrong for this: a weight the checkpoint does not provide keeps ComfyUI's uninitialized
memory (SD1 checkpoints have no clip_l text_projection, so ComfyUI pops it and leaves torch.empty
bytes), which can hold NaN, and NaN != NaN. Comparing the raw bits says "unchanged" exactly when no
byte was written.
"""
import torch

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()
    if tensor.is_floating_point() and tensor.dim() > 0:
        return tensor.contiguous().view(_INT_OF_SIZE[tensor.element_size()])
    if tensor.is_floating_point():  # 0-d tensors cannot be viewed as another dtype
        return tensor.reshape(1).view(_INT_OF_SIZE[tensor.element_size()])
    return tensor


def snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed_keys(module: torch.nn.Module, before: dict) -> list:
    """Names whose bits differ from the snapshot (plus names added or removed)."""
    now = module.state_dict()
    differ = [k for k, v in now.items() if k not in before or v.dtype != before[k].dtype
              or v.shape != before[k].shape or not torch.equal(_bits(v), _bits(before[k]))]
    return differ + [k for k in before if k not in now]


def damaged_copy(folder, name: str, weights: str = "model.safetensors"):
    """A copy of a model folder beside it, `name`, whose weights file is cut in half (an interrupted download)."""
    import shutil

    copy = folder.parent / name
    if not copy.exists():
        shutil.copytree(folder, copy)
        cut = copy / weights
        cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    return copy
