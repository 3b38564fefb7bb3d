"""Which model families the pack's adapters support, read from ComfyUI's own model objects.

A model is accepted by what the methods need, not by its exact class: a UNet that reads the prompt through
cross-attention from the CLIP encoders ComfyUI pairs with its family, and nothing else. So the SDXL
derivatives ComfyUI models as SDXL subclasses (SSD-1B, Segmind Vega, KOALA: fewer blocks, the same text
side) are SDXL here. Subclasses that also need an image input (instruct-pix2pix, unCLIP, the x4 upscaler,
Lotus) are refused: their extra conditioning is not part of what the methods were checked on.
"""
from __future__ import annotations

import comfy.supported_models as supported

from .errors import NodeInputError

# ComfyUI model-config classes (and their subclasses) -> family shown to users; most specific first.
MODEL_FAMILIES = ((supported.SDXL, "SDXL"), (supported.SD20, "SD2.x"), (supported.SD15, "SD1.x"))
# Diffusion transformers whose text arrives as one token sequence (SD3: CLIP-L/G + T5 along the sequence; Flux:
# T5's sequence, CLIP-L pooled). DATE moves that sequence, IPGO wraps it, MinorityPrompt re-runs every encoder
# (T5 included) with its placeholder.
SEQUENCE_FAMILIES = ((supported.SD3, "SD3"), (supported.Flux, "Flux.1"))
CONDITIONING_FAMILIES = MODEL_FAMILIES + SEQUENCE_FAMILIES
NEEDS_AN_IMAGE = (supported.SD15_instructpix2pix, supported.SDXL_instructpix2pix, supported.SD21UnclipL,
                  supported.SD21UnclipH, supported.SD_X4Upscaler, supported.LotusD)
# Flux subclasses with another input layout (inpainting's image channels, Flux.2's own text side)
EXCLUDED_VARIANTS = (supported.FluxInpaint, supported.Flux2)
# Text-encoder keys of a CLIP object's tokens -> family: the CLIP-only families,
CLIP_FAMILIES = {("l",): "SD1.x", ("h",): "SD2.x", ("g", "l"): "SDXL"}
# and those with T5. An SD3 checkpoint without T5 still tokenizes for it (ComfyUI then leaves T5's part out).
SEQUENCE_CLIP_FAMILIES = {("g", "l", "t5xxl"): "SD3", ("l", "t5xxl"): "Flux.1"}
ENCODED_CLIP_FAMILIES = {**CLIP_FAMILIES, **SEQUENCE_CLIP_FAMILIES}


def model_family(model_patcher, node: str, input_name: str = "model", families=MODEL_FAMILIES) -> str:
    """The model's family among `families`, or a NodeInputError naming the node's input."""
    config = model_patcher.model.model_config
    family = next((name for cls, name in families if isinstance(config, cls)), None)
    if family is None or isinstance(config, NEEDS_AN_IMAGE + EXCLUDED_VARIANTS):
        supported_names = ", ".join(name for _, name in families)
        raise NodeInputError(node, input_name, f"model family '{type(config).__name__}' is not supported; "
                             f"supported: {supported_names} and their derivatives (e.g. SSD-1B, Segmind Vega, "
                             "KOALA), without image conditioning.")
    return family


def clip_family(clip, node: str, input_name: str = "clip", families: dict = CLIP_FAMILIES) -> str:
    keys = tuple(sorted(clip.tokenize("").keys()))
    family = families.get(keys)
    if family is None:
        raise NodeInputError(node, input_name, f"text encoder with parts {list(keys)} is not supported; "
                             f"supported: {', '.join(dict.fromkeys(families.values()))}.")
    return family


def matching_families(model_patcher, clip, node: str, model_families=MODEL_FAMILIES,
                      clip_families: dict = CLIP_FAMILIES) -> str:
    model = model_family(model_patcher, node, families=model_families)
    text = clip_family(clip, node, families=clip_families)
    if model != text:
        raise NodeInputError(node, "clip", f"this CLIP is for {text} but the model is {model}; "
                             "connect the CLIP that came with the model's checkpoint.")
    return model
