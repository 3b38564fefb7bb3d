"""Diffusers / transformers state dicts in ComfyUI's single-file checkpoint layout (SD1.x, SDXL).

For equivalence fixtures that run reference code on diffusers models and the pack on the same weights
inside ComfyUI. Names are mapped with ComfyUI's own table (comfy.utils.unet_to_diffusers), never by
hand; every function checks that each tensor lands on exactly one ComfyUI key of the same shape.
Each function handles one component, so a caller adds the others (e.g. a VAE) beside them:

    state = {}
    state.update(comfy_unet_state(diffusers_unet_state, unet_config))
    state.update(comfy_clip_state(hf_text_encoder_state, CLIP_PREFIXES["sd1"]["text_encoder"]))

`unet_config` is ComfyUI's UNetModel config of the same architecture (devtools/checkpoints.py has the
smallest ones ComfyUI still detects as SD15 / SDXL). Text encoders keep their Hugging Face names under
ComfyUI's prefixes: ComfyUI reads CLIP checkpoints in that naming (SDXL's CLIP-G too, beside the
open_clip naming it converts).
"""
from __future__ import annotations

from typing import Mapping

import torch

UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIXES = {
    "sd1": {"text_encoder": "cond_stage_model.transformer."},
    "sdxl": {"text_encoder": "conditioner.embedders.0.transformer.",
             "text_encoder_2": "conditioner.embedders.1.model.transformer."},
}


class LayoutError(KeyError):
    pass


def comfy_unet_state(diffusers_state: Mapping[str, torch.Tensor], unet_config: dict,
                     prefix: str = UNET_PREFIX) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel state dict under ComfyUI's UNet names (with `prefix`)."""
    from devtools.comfy_path import configure_comfy_args

    configure_comfy_args()
    import comfy.utils

    mapping = comfy.utils.unet_to_diffusers(dict(unet_config))  # diffusers name -> ComfyUI name
    unknown = sorted(k for k in diffusers_state if k not in mapping)
    if unknown:
        raise LayoutError(f"{len(unknown)} diffusers UNet keys have no ComfyUI name, e.g. {unknown[:5]}")
    out: dict[str, torch.Tensor] = {}
    for k, v in diffusers_state.items():
        name = prefix + mapping[k]
        if name in out:
            raise LayoutError(f"two diffusers keys map to {name}")
        out[name] = v
    return out


def hf_text_key(key: str) -> str:
    """transformers' CLIP text-model key with its `text_model.` prefix (transformers 5 drops it)."""
    return key if key.startswith(("text_model.", "text_projection")) else "text_model." + key


def comfy_clip_state(hf_state: Mapping[str, torch.Tensor], prefix: str,
                     drop=("position_ids",)) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModel(WithProjection) state dict under a ComfyUI prefix (CLIP_PREFIXES).
    Buffers ComfyUI does not keep (position ids) are dropped."""
    out = {}
    for k, v in hf_state.items():
        if k.rsplit(".", 1)[-1] in drop:
            continue
        out[prefix + hf_text_key(k)] = v
    return out


def check_against(state: Mapping[str, torch.Tensor], expected_shapes: Mapping[str, torch.Size],
                  what: str = "checkpoint") -> None:
    """Raise unless `state` has exactly the keys of `expected_shapes` (e.g. ComfyUI's modules built on
    'meta'), each with that shape."""
    missing = sorted(set(expected_shapes) - set(state))
    extra = sorted(set(state) - set(expected_shapes))
    if missing or extra:
        raise LayoutError(f"{what}: {len(missing)} keys missing (e.g. {missing[:3]}), {len(extra)} unexpected "
                          f"(e.g. {extra[:3]})")
    wrong = [k for k, s in expected_shapes.items() if tuple(state[k].shape) != tuple(s)]
    if wrong:
        raise LayoutError(f"{what}: shape mismatch for {wrong[:3]}: "
                          f"{[(tuple(state[k].shape), tuple(expected_shapes[k])) for k in wrong[:3]]}")


def comfy_module_shapes(family: str, unet_config: dict) -> dict[str, torch.Size]:
    """Key -> shape of ComfyUI's own UNet (from `unet_config`) and text encoders for `family`, built on
    'meta' (no VAE: add its keys separately)."""
    from devtools.comfy_path import configure_comfy_args

    configure_comfy_args()
    import comfy.ops
    import comfy.sd1_clip
    import comfy.sdxl_clip
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    meta = torch.device("meta")
    shapes: dict[str, torch.Size] = {}

    def add(prefix, module):
        for k, v in module.state_dict().items():
            shapes[prefix + k] = v.shape

    add(UNET_PREFIX, UNetModel(**unet_config, device=meta, operations=comfy.ops.disable_weight_init))
    if family == "sd1":
        add("cond_stage_model.", comfy.sd1_clip.SDClipModel(device=meta))
    elif family == "sdxl":
        add("conditioner.embedders.0.", comfy.sd1_clip.SDClipModel(device=meta, layer="hidden", layer_idx=-2))
        add("conditioner.embedders.1.model.", comfy.sdxl_clip.SDXLClipG(device=meta))
    else:
        raise ValueError(f"unknown family {family!r}")
    return {k: s for k, s in shapes.items() if not k.endswith(("position_ids", "logit_scale"))}


VAE_PREFIX = "first_stage_model."


def comfy_vae_state(vae_state: Mapping[str, torch.Tensor], prefix: str = VAE_PREFIX) -> dict[str, torch.Tensor]:
    """A VAE state dict under ComfyUI's checkpoint names (with `prefix`).

    A diffusers AutoencoderKL (`decoder.up_blocks.*`, mid-block attention as `query/key/value/proj_attn`
    or `to_q/to_k/to_v/to_out.0`) goes through ComfyUI's own table (comfy.diffusers_convert.
    convert_vae_state_dict, which also turns the attention Linear weights into 1x1 convs); a TAESD
    (`taesd_encoder.*` / `taesd_decoder.*`, ComfyUI's own names, plus `vae_scale` / `vae_shift`) is
    already in ComfyUI's naming and only gets the prefix. ComfyUI builds a KL VAE only at the full SD
    size (comfy/sd.py), a TAESD at its one size."""
    keys = list(vae_state)
    if any(k.startswith(("taesd_decoder.", "taesd_encoder.")) for k in keys):
        stray = [k for k in keys if not k.startswith(("taesd_decoder.", "taesd_encoder.", "vae_scale", "vae_shift"))]
        if stray:
            raise LayoutError(f"TAESD state dict with {len(stray)} keys of another layout, e.g. {stray[:3]}")
        return {prefix + k: v for k, v in vae_state.items()}
    if any(".up_blocks." in k or ".down_blocks." in k for k in keys):
        from devtools.comfy_path import configure_comfy_args

        configure_comfy_args()
        import comfy.diffusers_convert

        converted = comfy.diffusers_convert.convert_vae_state_dict(dict(vae_state))
        if len(converted) != len(vae_state):
            raise LayoutError(f"the VAE conversion merged keys: {len(vae_state)} in, {len(converted)} out")
        leftover = sorted(k for k in converted if ".up_blocks." in k or ".down_blocks." in k or "mid_block" in k)
        if leftover:
            raise LayoutError(f"{len(leftover)} diffusers VAE keys have no ComfyUI name, e.g. {leftover[:3]}")
        return {prefix + k: v for k, v in converted.items()}
    raise LayoutError(f"neither a diffusers AutoencoderKL nor a TAESD state dict (e.g. {keys[:3]})")


# -- checkpoints for the authors'-code fixtures ----------------------------------------------------------
# ComfyUI-only tensors without a counterpart in the reference models, filled by the same rule under these
# canonical names: CLIP-L's text_projection (SD1.5's and SDXL's CLIPTextModel has none; ComfyUI builds one
# and would leave it uninitialized; only CLIP-L's pooled output uses it, which neither UNet reads).
COMFY_ONLY = {
    "sd1": {"cond_stage_model.transformer.text_projection.weight": "text_encoder.text_projection.weight"},
    "sdxl": {"conditioner.embedders.0.transformer.text_projection.weight": "text_encoder.text_projection.weight"},
}


def fixture_checkpoint_state(family: str, entries: list[dict], fill_rule, unet_config: dict) -> dict[str, torch.Tensor]:
    """ComfyUI single-file state (UNet + text encoders, no VAE) of a fixture's models.

    `entries`: the fixture's key list, [{"component", "key", "shape", "checksum"}, ...] with components
    "unet", "text_encoder", "text_encoder_2" under diffusers / transformers names; every tensor is
    `fill_rule.fill_value(canonical_key)` and must reproduce the recorded checksum. The result has exactly
    the keys and shapes of ComfyUI's own modules for `family`.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for e in entries:
        value = fill_rule.fill_value(fill_rule.canonical_key(e["component"], e["key"]), e["shape"])
        got, want = fill_rule.checksum(value), e["checksum"]
        if abs(got - want) > 1e-6 * max(1.0, abs(want)):
            raise ValueError(f"{e['component']}.{e['key']}: fill rule checksum {got} != recorded {want}")
        parts.setdefault(e["component"], {})[e["key"]] = value
    state = comfy_unet_state(parts.pop("unet"), unet_config)
    for component, hf_state in parts.items():
        state.update(comfy_clip_state(hf_state, CLIP_PREFIXES[family][component]))
    shapes = comfy_module_shapes(family, unet_config)
    for name, canonical in COMFY_ONLY[family].items():
        state[name] = fill_rule.fill_value(canonical, shapes[name])
    check_against(state, shapes, f"{family} fixture checkpoint")
    return state


def fixture_checkpoint_path(family: str, keys_file, fill_rule_file, out_dir=None):
    """The fixture's checkpoint (float32 safetensors), built on first use and cached under a key derived from
    everything that builds it (devtools/asset_cache.py)."""
    import importlib.util
    from pathlib import Path

    from devtools.asset_cache import build_inputs, cached
    from devtools.checkpoints import COMFY_SOURCES, DEFAULT_DIR, _unet_config
    from devtools.comfy_path import comfyui_root

    keys_file, fill_rule_file = Path(keys_file), Path(fill_rule_file)
    comfy_family = {"sd15": "sd1", "sd1": "sd1", "sdxl": "sdxl"}[family]

    def write(path: Path) -> None:
        import json

        from safetensors.torch import save_file

        spec = importlib.util.spec_from_file_location(f"fill_rule_{fill_rule_file.parent.name}", fill_rule_file)
        fill_rule = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fill_rule)
        state = fixture_checkpoint_state(comfy_family, json.loads(keys_file.read_text()), fill_rule,
                                         _unet_config(comfy_family))
        save_file({k: v.contiguous() for k, v in state.items()}, str(path),
                  metadata={"generator": "prompt-optim devtools.diffusers_layout", "keys": keys_file.name})

    sources = [__file__, keys_file, fill_rule_file, Path(__file__).parent / "checkpoints.py",
               *(comfyui_root() / f for f in COMFY_SOURCES)]
    name = f"prompt_optim_fixture_{keys_file.parent.name}_{keys_file.stem}.safetensors"
    return cached(Path(out_dir or DEFAULT_DIR), name, build_inputs(sources, family=comfy_family), write)
