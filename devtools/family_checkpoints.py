"""Small random-weight SD3 and Flux.1 models in ComfyUI's file layouts, and a reduced T5-XXL.

Built like devtools/checkpoints.py: ComfyUI's own modules on the 'meta' device give every key and shape,
every tensor is a pure function of (seed, key name, shape), files are cached under their build key
(devtools/asset_cache.py). What ComfyUI 0.3.75 detects and builds from key shapes fixes what can shrink:

- SD3 (MMDiT): detection reads depth = x_embedder width / 64 and uses as many joint blocks and 64-wide
  heads (comfy/model_detection.py:63, mmdit.py:809), so 2 blocks give width 128. The checkpoint holds
  CLIP-L and CLIP-G at full size (fixed configs) and no T5: ComfyUI then builds SD3ClipModel without T5
  and the conditioning is CLIP-L/G's 77 tokens zero-padded to 4096 (sd3_clip.py:128; with T5, T5's
  tokens are concatenated after them, sd3_clip.py:139). SD3.5 is the same class (`SD3`); a small SD3.5-style
  MMDiT-X (RMS q/k norms, model_detection.py:80-82; a second image self-attention, :88-92) is a
  diffusion-model file that uses the SD3 checkpoint's text encoders and VAE.
- Flux.1 dev: detection fixes 24 heads and rotary axes (16, 56, 56), so the width must be 24 x 128 = 3072
  (model_detection.py:220-221, flux/model.py:61-63); only the block counts shrink (1 + 1); `guidance_in`
  keys make it dev-style (model_detection.py:272, supported_models.py:693-697).
- VAE: a TAESD with 16 latent channels (what ComfyUI builds from `taesd_decoder.` keys, sd.py:318-320),
  in the SD3 checkpoint and as a separate file for VAELoader.
- T5-XXL: the loaders build T5 from the fixed t5_config_xxl.json (4.7 B parameters); the only way to
  another configuration is `model_options["t5xxl_model_config"]`, read by SDClipModel (sd1_clip.py:105-107)
  but passed by no loader node (nodes.py:578, 988-992 pass none). REDUCED_T5 keeps the width (4096, which
  SD3 concatenates with CLIP-L/G and Flux's txt_in reads), the vocabulary (ComfyUI's T5 tokenizer) and the
  24 blocks (ComfyUI detects a T5-XXL file by `encoder.block.23...wi_1` of width 4096, sd.py:999-1002), and
  shrinks heads and MLP.
  `load_reduced_t5_clip` builds the CLIP objects in-process through ComfyUI's own loaders with that
  option; `ReducedT5CLIPLoader` is a test-only node around it, registered by tests/conftest.py.

    python -m devtools.family_checkpoints sd3|sd35_unet|flux_unet|flux_vae|clip_l|t5_reduced [--out DIR]
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from devtools.asset_cache import build_inputs, cached
from devtools.checkpoints import DEFAULT_DIR, _tensor
from devtools.comfy_path import comfyui_root, configure_comfy_args

COMFY_SOURCES = ("comfyui_version.py", "comfy/ldm/modules/diffusionmodules/mmdit.py", "comfy/ldm/flux/model.py",
                 "comfy/ldm/flux/layers.py", "comfy/taesd/taesd.py", "comfy/sd1_clip.py", "comfy/sd1_clip_config.json",
                 "comfy/sdxl_clip.py", "comfy/clip_config_bigg.json", "comfy/text_encoders/t5.py",
                 "comfy/text_encoders/t5_config_xxl.json")

SD3_DEPTH = 2  # joint blocks; width 64 * depth, heads = depth
SD3_POS_EMBED_MAX = 16  # latent patches per side: images up to 16 * 2 * 8 = 256 px
SD3_CONFIG = dict(in_channels=16, out_channels=16, patch_size=2, depth=SD3_DEPTH, input_size=None,
                  adm_in_channels=2048, num_patches=SD3_POS_EMBED_MAX ** 2, pos_embed_max_size=SD3_POS_EMBED_MAX,
                  pos_embed_scaling_factor=None, x_block_self_attn_layers=[],
                  context_embedder_config={"target": "torch.nn.Linear",
                                           "params": {"in_features": 4096, "out_features": 64 * SD3_DEPTH}})
# SD3.5 (Medium's MMDiT-X): RMS q/k norms and a second self-attention in the first joint block's image side
SD35_CONFIG = dict(SD3_CONFIG, qk_norm="rms", x_block_self_attn_layers=[0])
FLUX_CONFIG = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                   hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=1, depth_single_blocks=1,
                   axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)
# Overrides of comfy/text_encoders/t5_config_xxl.json (d_model 4096, 64 heads x 64, d_ff 10240, 24 layers).
REDUCED_T5 = {"num_heads": 2, "d_kv": 32, "d_ff": 64}
T5_MODEL_OPTIONS = {"t5xxl_model_config": REDUCED_T5}

FILES = {  # what -> file name stem
    "sd3": "prompt_optim_test_sd3",
    "sd35_unet": "prompt_optim_test_sd35_unet",
    "flux_unet": "prompt_optim_test_flux_unet",
    "flux_vae": "prompt_optim_test_flux_vae",
    "clip_l": "prompt_optim_test_clip_l",
    "t5_reduced": "prompt_optim_test_t5xxl_reduced",
}


def _modules(what: str) -> dict[str, torch.nn.Module]:
    """Key prefix -> ComfyUI module (on 'meta') whose state dict the file holds under that prefix."""
    configure_comfy_args()
    import comfy.ops
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.text_encoders.t5
    from comfy.ldm.flux.model import Flux
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
    from comfy.taesd.taesd import TAESD

    meta = torch.device("meta")
    ops = comfy.ops.disable_weight_init
    if what == "sd3":
        with meta:
            vae = TAESD(latent_channels=16)
        # as SD3ClipModel builds them (sd3_clip.py): CLIP-L penultimate layer, CLIP-G
        clip_l = comfy.sd1_clip.SDClipModel(device=meta, layer="hidden", layer_idx=-2, layer_norm_hidden_state=False,
                                            return_projected_pooled=False)
        return {"model.diffusion_model.": MMDiT(**SD3_CONFIG, device=meta, operations=ops),
                "first_stage_model.": vae,
                "text_encoders.clip_l.": clip_l,
                "text_encoders.clip_g.": comfy.sdxl_clip.SDXLClipG(device=meta)}
    if what == "sd35_unet":  # a diffusion-model file (UNETLoader), keys without prefix
        return {"": MMDiT(**SD35_CONFIG, device=meta, operations=ops)}
    if what == "flux_unet":
        return {"": Flux(**FLUX_CONFIG, device=meta, operations=ops)}
    if what == "flux_vae":
        with meta:
            return {"": TAESD(latent_channels=16)}
    if what == "clip_l":  # a text-encoder file: keys `text_model.*`, `text_projection.weight`
        return {"": comfy.sd1_clip.SDClipModel(device=meta).transformer}
    if what == "t5_reduced":
        return {"": comfy.text_encoders.t5.T5(t5_config(), None, meta, ops)}
    raise ValueError(f"unknown asset {what!r}; expected one of {sorted(FILES)}")


def t5_config() -> dict:
    """ComfyUI's T5-XXL config with REDUCED_T5 applied, as SDClipModel applies `t5xxl_model_config`."""
    import json

    config = json.loads((comfyui_root() / "comfy/text_encoders/t5_config_xxl.json").read_text())
    return {**config, **REDUCED_T5}


def _shapes(what: str) -> dict[str, torch.Size]:
    shapes = {}
    for prefix, module in _modules(what).items():
        for k, v in module.state_dict().items():
            shapes[prefix + k] = v.shape
    # Keys that are not weights (position ids, logit scale) are handled by the loader itself.
    return {k: s for k, s in shapes.items() if not k.endswith(("position_ids", "logit_scale"))}


def _family_tensor(seed: int, key: str, shape: torch.Size) -> torch.Tensor:
    """devtools.checkpoints._tensor, plus what its rules do not cover: RMS-norm scales (Flux's q/k norms)
    start at one, and the token embedding of T5 ("shared") is N(0, 1) like T5's own initialization."""
    leaf = key.rsplit(".", 1)[-1]
    if len(shape) == 1 and leaf == "scale" and "norm" in key:
        return torch.ones(shape)
    if key == "shared.weight" or key.endswith(".shared.weight"):
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        return torch.randn(shape, generator=gen)
    return _tensor(seed, key, shape)


def build_state_dict(what: str, seed: int = 0, dtype=torch.float16) -> dict[str, torch.Tensor]:
    return {k: _family_tensor(seed, k, s).to(dtype) for k, s in _shapes(what).items()}


def asset_path(what: str, seed: int = 0, out_dir: Path | None = None) -> Path:
    """Path of the cached file, generating it on first use."""
    if what not in FILES:
        raise ValueError(f"unknown asset {what!r}; expected one of {sorted(FILES)}")

    def write(path: Path) -> None:
        from safetensors.torch import save_file

        save_file(build_state_dict(what, seed), str(path), metadata={"generator": "prompt-optim devtools"})

    inputs = build_inputs([__file__, Path(__file__).with_name("checkpoints.py"),
                           *(comfyui_root() / f for f in COMFY_SOURCES)], what=what, seed=seed)
    return cached(Path(out_dir or DEFAULT_DIR), f"{FILES[what]}_s{seed}.safetensors", inputs, write)


def load_reduced_t5_clip(kind: str, t5_path: Path, clip_l_path: Path | None = None, ckpt_path: Path | None = None):
    """A ComfyUI CLIP with the reduced T5, through ComfyUI's own loaders with `t5xxl_model_config` set.

    kind "flux": DualCLIPLoader's path, comfy.sd.load_clip([clip_l, t5], CLIPType.FLUX).
    kind "sd3": the single-file path (CheckpointLoaderSimple's comfy.sd.load_state_dict_guess_config) on the
    SD3 checkpoint with the T5 keys added under `text_encoders.t5xxl.transformer.`, as ComfyUI's SD3
    checkpoints that include T5 store them; only the text encoders are built.
    """
    configure_comfy_args()
    import comfy.sd
    import comfy.utils
    import folder_paths

    embeddings = folder_paths.get_folder_paths("embeddings")
    if kind == "flux":
        return comfy.sd.load_clip([str(clip_l_path), str(t5_path)], embedding_directory=embeddings,
                                  clip_type=comfy.sd.CLIPType.FLUX, model_options=dict(T5_MODEL_OPTIONS))
    if kind == "sd3":
        sd, metadata = comfy.utils.load_torch_file(str(ckpt_path), return_metadata=True)
        t5 = comfy.utils.load_torch_file(str(t5_path))
        sd.update({"text_encoders.t5xxl.transformer." + k: v for k, v in t5.items()})
        out = comfy.sd.load_state_dict_guess_config(sd, output_vae=False, output_clip=True, output_model=False,
                                                    embedding_directory=embeddings, metadata=metadata,
                                                    te_model_options=dict(T5_MODEL_OPTIONS))
        return out[1]
    raise ValueError(f"unknown kind {kind!r}; expected 'flux' or 'sd3'")


class ReducedT5CLIPLoader:
    """Test-only node: DualCLIPLoader (flux: CLIP-L + T5) or the SD3 checkpoint's CLIP-L/G + T5, with the
    reduced T5 configuration that no ComfyUI loader node can pass."""

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        return {"required": {"type": (["flux", "sd3"],),
                             "t5_name": (folder_paths.get_filename_list("text_encoders"),)},
                "optional": {"clip_l_name": (folder_paths.get_filename_list("text_encoders"),),
                             "ckpt_name": (folder_paths.get_filename_list("checkpoints"),)}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, type, t5_name, clip_l_name=None, ckpt_name=None):
        import folder_paths

        t5 = folder_paths.get_full_path_or_raise("text_encoders", t5_name)
        if type == "flux":
            if clip_l_name is None:
                raise ValueError("flux needs clip_l_name")
            clip_l = folder_paths.get_full_path_or_raise("text_encoders", clip_l_name)
            return (load_reduced_t5_clip("flux", t5, clip_l_path=clip_l),)
        if ckpt_name is None:
            raise ValueError("sd3 needs ckpt_name")
        ckpt = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
        return (load_reduced_t5_clip("sd3", t5, ckpt_path=ckpt),)


TEST_NODES = {"PromptOptimTestReducedT5CLIPLoader": ReducedT5CLIPLoader}


def register_test_nodes(nodes_module) -> None:
    """Add the test-only nodes to a running ComfyUI's registry (ComfyUI's `nodes` module)."""
    nodes_module.NODE_CLASS_MAPPINGS.update(TEST_NODES)
    nodes_module.NODE_DISPLAY_NAME_MAPPINGS.update({k: "Reduced-T5 CLIP loader (tests)" for k in TEST_NODES})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=sorted(FILES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    print(asset_path(args.what, args.seed, args.out))


if __name__ == "__main__":
    main()
