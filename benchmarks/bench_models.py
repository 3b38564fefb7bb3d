"""The full-size random-weight models of the cost benchmarks, built once into ~/.cache/prompt-optim/bench.

Random weights: the cost of a forward or a backward does not depend on their values. Kept apart from the
benchmark scripts because this file's text is part of each model's cache key: editing a script's report
must not rebuild a 2 GB checkpoint.

    sd15_checkpoint()   full-size SD1.5 single file: UNet from ComfyUI's own SD15 UNet config (model_detection's
                        SD15 dict, 860 M parameters), the full SD1.x AutoencoderKL VAE and CLIP-L; fp16 weights by
                        devtools.checkpoints' per-key rule (~2.1 GB)
    sdxl_checkpoint()   full-size SDXL base single file: UNet from model_detection's SDXL dict (2.6 B parameters),
                        the AutoencoderKL VAE and CLIP-L + CLIP-G (bigG) as the SDXL test checkpoint lays them
                        out; fp16 (~6.9 GB)
    clip_l_folder()     a Hugging Face CLIPModel folder with openai/clip-vit-large-patch14's configuration (fp32
                        weights, tokenizer files from ComfyUI's bundled sd1_tokenizer, preprocessor_config.json;
                        ~1.7 GB)
"""
from __future__ import annotations

import shutil
from pathlib import Path

from devtools.asset_cache import build_inputs, cached
from devtools.comfy_path import CACHE, comfyui_root, configure_comfy_args

BENCH_DIR = CACHE / "bench"
CLIP_L_NAME = "prompt_optim_bench_clip_vit_l14"


def _sd15_unet_config() -> dict:
    """ComfyUI's own SD15 UNet config (comfy/model_detection.py, unet_config_from_diffusers_unet's SD15)."""
    return dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                adm_in_channels=None, in_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
                transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 2, 4, 4], transformer_depth_middle=1,
                use_linear_in_transformer=False, context_dim=768, num_heads=8,
                transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                use_temporal_attention=False, use_temporal_resblock=False)


def _sdxl_unet_config() -> dict:
    """ComfyUI's own SDXL base UNet config (comfy/model_detection.py, unet_config_from_diffusers_unet's SDXL)."""
    return dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                num_classes="sequential", adm_in_channels=2816, in_channels=4, model_channels=320,
                num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 2, 2, 10, 10], channel_mult=[1, 2, 4],
                transformer_depth_middle=10, use_linear_in_transformer=True, context_dim=2048, num_head_channels=64,
                transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], use_temporal_attention=False,
                use_temporal_resblock=False)


# family -> (UNet config, the test checkpoint whose full-size text encoders are reused, their key prefix)
FULL_SIZE = {"sd15": (_sd15_unet_config, "sd1", "cond_stage_model."),
             "sdxl": (_sdxl_unet_config, "sdxl", "conditioner.")}


def full_size_shapes(family: str) -> dict:
    """Key -> shape of every tensor of the full-size checkpoint, from ComfyUI's own modules built on 'meta'."""
    from devtools import checkpoints

    configure_comfy_args()
    import torch

    import comfy.ops
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet_config, test_family, text_prefix = FULL_SIZE[family]
    meta = torch.device("meta")
    unet = UNetModel(**unet_config(), device=meta, operations=comfy.ops.disable_weight_init)
    shapes = {"model.diffusion_model." + k: v.shape for k, v in unet.state_dict().items()}
    ddconfig = {'double_z': True, 'z_channels': 4, 'resolution': 256, 'in_channels': 3, 'out_ch': 3, 'ch': 128,
                'ch_mult': [1, 2, 4, 4], 'num_res_blocks': 2, 'attn_resolutions': [], 'dropout': 0.0}
    with meta:  # ComfyUI's default SD1.x / SDXL VAE architecture (comfy/sd.py)
        vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
    shapes.update({"first_stage_model." + k: v.shape for k, v in vae.state_dict().items()})
    # the full text encoders, exactly as the test checkpoint lays them out
    shapes.update({k: s for k, s in checkpoints._shapes(test_family).items() if k.startswith(text_prefix)})
    return shapes


def _full_size_checkpoint(family: str, seed: int) -> Path:
    from devtools import checkpoints

    def write(path: Path) -> None:
        from safetensors.torch import save_file

        state = {k: checkpoints._tensor(seed, k, s).half() for k, s in full_size_shapes(family).items()}
        save_file(state, str(path), metadata={"generator": "prompt-optim benchmarks.bench_models"})

    sources = [__file__, checkpoints, *(comfyui_root() / f for f in checkpoints.COMFY_SOURCES),
               comfyui_root() / "comfy/ldm/models/autoencoder.py"]
    return cached(BENCH_DIR, f"prompt_optim_bench_{family}_full_s{seed}.safetensors",
                  build_inputs(sources, seed=seed, family=family), write)


def sd15_checkpoint(seed: int = 0) -> Path:
    """Full-size SD1.5 single-file checkpoint with random fp16 weights (cached under its build key)."""
    return _full_size_checkpoint("sd15", seed)


def sdxl_checkpoint(seed: int = 0) -> Path:
    """Full-size SDXL base single-file checkpoint with random fp16 weights (cached under its build key)."""
    return _full_size_checkpoint("sdxl", seed)


def checkpoint_file(model: str) -> Path:
    """The checkpoint of `--model small` (the test SD1 checkpoint) or `--model sd15` (sd15_checkpoint)."""
    from devtools.checkpoints import checkpoint_path

    return checkpoint_path("sd1") if model == "small" else sd15_checkpoint()


def clip_vit_l14_config():
    """openai/clip-vit-large-patch14's configuration (transformers.CLIPConfig)."""
    from transformers import CLIPConfig

    return CLIPConfig(text_config=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                       num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=77,
                                       projection_dim=768, hidden_act="quick_gelu"),
                      vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                         num_hidden_layers=24, patch_size=14, image_size=224, projection_dim=768,
                                         hidden_act="quick_gelu"),
                      projection_dim=768)


def clip_l_folder() -> Path:
    """A Hugging Face CLIPModel folder: openai/clip-vit-large-patch14's config, random weights (cached)."""
    bundled = comfyui_root() / "comfy" / "sd1_tokenizer"

    def write(folder: Path) -> None:
        import torch
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        torch.manual_seed(0)
        CLIPModel(clip_vit_l14_config()).eval().save_pretrained(str(folder), safe_serialization=True)
        CLIPImageProcessor(size={"shortest_edge": 224},
                           crop_size={"height": 224, "width": 224}).save_pretrained(str(folder))
        CLIPTokenizer.from_pretrained(str(bundled), local_files_only=True).save_pretrained(str(folder))
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(bundled / name, folder / name)

    sources = [__file__, bundled / "vocab.json", bundled / "merges.txt"]
    return cached(BENCH_DIR, CLIP_L_NAME, build_inputs(sources), write)
