"""Which model families the pack's adapters support, read from ComfyUI's own model objects."""
from __future__ import annotations

from .errors import NodeInputError

# ComfyUI model-config class name -> family shown to users.
MODEL_FAMILIES = {"SD15": "SD1.x", "SD20": "SD2.x", "SDXL": "SDXL"}
# Text-encoder keys of a CLIP object's tokens -> family.
CLIP_FAMILIES = {("l",): "SD1.x", ("h",): "SD2.x", ("g", "l"): "SDXL"}


def model_family(model_patcher, node: str, input_name: str = "model") -> str:
    config = type(model_patcher.model.model_config).__name__
    family = MODEL_FAMILIES.get(config)
    if family is None:
        raise NodeInputError(node, input_name, f"model family '{config}' is not supported; "
                             f"supported: {', '.join(sorted(set(MODEL_FAMILIES.values())))}.")
    return family


def clip_family(clip, node: str, input_name: str = "clip") -> str:
    keys = tuple(sorted(clip.tokenize("").keys()))
    family = CLIP_FAMILIES.get(keys)
    if family is None:
        raise NodeInputError(node, input_name, f"text encoder with parts {list(keys)} is not supported; "
                             f"supported: {', '.join(sorted(set(CLIP_FAMILIES.values())))}.")
    return family


def matching_families(model_patcher, clip, node: str) -> str:
    model = model_family(model_patcher, node)
    text = clip_family(clip, node)
    if model != text:
        raise NodeInputError(node, "clip", f"this CLIP is for {text} but the model is {model}; "
                             "connect the CLIP that came with the model's checkpoint.")
    return model
