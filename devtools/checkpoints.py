"""Small random-weight checkpoints in ComfyUI's single-file layout (SD1.x and SDXL).

The UNet is shrunk as far as ComfyUI's model detection allows (it still detects SD15 / SDXL); the
text encoders have their fixed full-size configs (ComfyUI builds them from fixed configs, and a
missing key would leave uninitialized memory); the VAE is a TAESD, which ComfyUI builds when it finds
`taesd_encoder.` / `taesd_decoder.` keys. Every tensor is a pure function of (seed, key name, shape),
so a file is reproducible bit for bit. Files are cached outside git, under their build key
(devtools/asset_cache.py):

    python -m devtools.checkpoints sd1 [--out DIR]    # prints the path
"""
from __future__ import annotations

import argparse
import hashlib
import math
from pathlib import Path

import torch

from devtools.asset_cache import build_inputs, cached
from devtools.comfy_path import CACHE, comfyui_root, configure_comfy_args

DEFAULT_DIR = CACHE / "checkpoints"
# ComfyUI's files that fix the shapes
COMFY_SOURCES = ("comfyui_version.py", "comfy/ldm/modules/diffusionmodules/openaimodel.py", "comfy/taesd/taesd.py",
                 "comfy/sd1_clip.py", "comfy/sd1_clip_config.json", "comfy/sdxl_clip.py", "comfy/clip_config_bigg.json")


def _unet_config(family: str) -> dict:
    common = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320,
                  use_spatial_transformer=True, legacy=False)
    if family == "sd1":
        return dict(common, num_res_blocks=[1], channel_mult=(1,), num_heads=8, transformer_depth=[1],
                    transformer_depth_output=[1, 1], transformer_depth_middle=-2, context_dim=768,
                    use_linear_in_transformer=False)
    if family == "sdxl":
        # SDXL detection needs 3 levels x 2 res blocks with depths [0,0,2,2,10,10]; width may stay 320.
        return dict(common, num_res_blocks=[2, 2, 2], channel_mult=(1, 1, 1), num_head_channels=64,
                    transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                    transformer_depth_middle=-2, context_dim=2048, use_linear_in_transformer=True,
                    adm_in_channels=2816, num_classes="sequential")
    if family == "vega":  # Segmind Vega: an SDXL derivative (ComfyUI's SDXL subclass), fewer transformer blocks
        return dict(_unet_config("sdxl"), transformer_depth=[0, 0, 1, 1, 2, 2],
                    transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2])
    if family == "sd1_ip2p":  # InstructPix2Pix: an SD1 UNet with 8 input channels, a family we do not support
        return dict(_unet_config("sd1"), in_channels=8)
    raise ValueError(f"unknown family {family!r}; expected 'sd1', 'sdxl', 'vega' or 'sd1_ip2p'")


def _shapes(family: str) -> dict[str, torch.Size]:
    """Key -> shape of every tensor of the checkpoint, from ComfyUI's own modules built on 'meta'."""
    configure_comfy_args()
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.taesd.taesd import TAESD
    from comfy.text_encoders import sd2_clip  # noqa: F401  (imports the config registry)
    import comfy.sd1_clip
    import comfy.sdxl_clip

    meta = torch.device("meta")
    shapes: dict[str, torch.Size] = {}

    def add(prefix: str, module: torch.nn.Module):
        for k, v in module.state_dict().items():
            shapes[prefix + k] = v.shape

    ops = comfy.ops.disable_weight_init
    add("model.diffusion_model.", UNetModel(**_unet_config(family), device=meta, operations=ops))
    with torch.device(meta):
        add("first_stage_model.", TAESD())
    if family == "sd1":
        clip = comfy.sd1_clip.SDClipModel(device=meta)
        add("cond_stage_model.", clip)
    else:
        clip_l = comfy.sd1_clip.SDClipModel(device=meta, layer="hidden", layer_idx=-2)
        clip_g = comfy.sdxl_clip.SDXLClipG(device=meta)
        add("conditioner.embedders.0.", clip_l)
        add("conditioner.embedders.1.model.", clip_g)
    # Keys that are not weights (position ids, logit scale) are handled by the loader itself.
    return {k: s for k, s in shapes.items() if not k.endswith(("position_ids", "logit_scale"))}


def _tensor(seed: int, key: str, shape: torch.Size) -> torch.Tensor:
    """A deterministic tensor for one key: norms start at identity, biases at zero, weights ~ N(0, 1/fan_in)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    name = key.rsplit(".", 2)
    leaf = name[-1]
    parent = name[-2] if len(name) > 1 else ""
    if len(shape) == 0:
        return torch.tensor(1.0 if "scale" in leaf else 0.0)
    if len(shape) == 1:
        is_norm = "norm" in parent or "ln" in parent or parent.startswith(("in_layers", "out_layers")) \
            or parent in {"0", "2"} and "norm" in key
        if leaf == "weight" and is_norm:
            return torch.ones(shape)
        return torch.zeros(shape) if leaf == "bias" else torch.randn(shape, generator=gen) * 0.02
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    if "embedding" in key:
        fan_in = shape[-1]
    return torch.randn(shape, generator=gen) / math.sqrt(fan_in)


def build_state_dict(family: str, seed: int = 0, dtype=torch.float16) -> dict[str, torch.Tensor]:
    return {k: _tensor(seed, k, s).to(dtype) for k, s in _shapes(family).items()}


def _build_inputs(family: str, seed: int) -> dict:
    return build_inputs([__file__, *(comfyui_root() / f for f in COMFY_SOURCES)], family=family, seed=seed)


def unet_only_path(family: str, seed: int = 0, out_dir: Path | None = None) -> Path:
    """A diffusion-model-only file (models/diffusion_models layout, for UNETLoader)."""
    def write(path: Path) -> None:
        from safetensors.torch import save_file

        configure_comfy_args()
        import comfy.ops
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

        unet = UNetModel(**_unet_config(family), device=torch.device("meta"), operations=comfy.ops.disable_weight_init)
        save_file({k: _tensor(seed, k, v.shape).half() for k, v in unet.state_dict().items()}, str(path))

    return cached(Path(out_dir or DEFAULT_DIR), f"prompt_optim_test_{family}_unet_s{seed}.safetensors",
                  _build_inputs(family + "_unet", seed), write)


def checkpoint_path(family: str, seed: int = 0, out_dir: Path | None = None) -> Path:
    """Path of the cached checkpoint, generating it on first use."""
    def write(path: Path) -> None:
        from safetensors.torch import save_file

        save_file(build_state_dict(family, seed), str(path), metadata={"generator": "prompt-optim devtools"})

    return cached(Path(out_dir or DEFAULT_DIR), f"prompt_optim_test_{family}_s{seed}.safetensors",
                  _build_inputs(family, seed), write)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("family", choices=["sd1", "sdxl", "vega", "sd1_ip2p"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    print(checkpoint_path(args.family, args.seed, args.out))


if __name__ == "__main__":
    main()
