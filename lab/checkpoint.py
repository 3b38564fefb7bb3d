"""Expand the committed compact lab weights into files ComfyUI loads as they are.

    python -m lab.checkpoint [--out DIR]    # prints the SD1.x checkpoint and the reward folder

- `<key>/prompt_optim_lab_sd1.safetensors`: ComfyUI's SD1.x single-file layout (CheckpointLoaderSimple):
  the UNet widened exactly to 320 channels (lab/unet.py), the CLIP text model with its fixed parts
  generated (lab/text_encoder.py), the TAESD autoencoder (lab/autoencoder.py).
- `<key>/prompt_optim_lab_clip/`: the lab reward as a Hugging Face CLIPModel folder for models/rewards.
<key> is the build key (devtools/asset_cache.py) of the compact weights and the code that expands them, so
new weights or a changed expansion never reuse a stale file, while the names the workflows refer to stay fixed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from devtools.asset_cache import build_inputs, cached
from devtools.comfy_path import CACHE, comfyui_root, configure_comfy_args

WEIGHTS = Path(__file__).resolve().parent / "weights"
LDM_FILE = WEIGHTS / "lab_ldm_v1.safetensors"
REWARD_FILE = WEIGHTS / "lab_clip_v1.safetensors"
REWRITERS_DIR = WEIGHTS / "rewriters"  # Hugging Face folders, used as they are (lab/rewriter.py)
DEFAULT_DIR = CACHE / "lab"


CHECKPOINT_NAME = "prompt_optim_lab_sd1.safetensors"
REWARD_NAME = "prompt_optim_lab_clip"


def _lab_weights(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"lab weights not found: {path} (train them with `python -m lab.train` / "
                                "`python -m lab.reward`, see lab/README.md)")
    return path


def expand_ldm(compact: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from lab.text_encoder import LabTextEncoder
    from lab.unet import expand_state_dict, wide_shapes

    narrow_unet = {k[len("unet."):]: v for k, v in compact.items() if k.startswith("unet.")}
    out = {"model.diffusion_model." + k: v for k, v in expand_state_dict(narrow_unet, wide_shapes()).items()}
    out.update(LabTextEncoder.from_compact(compact).expand())
    out.update({"first_stage_model." + k[len("vae."):]: v.float() for k, v in compact.items() if k.startswith("vae.")})
    # fp16 like SD checkpoints, except the VAE scale, which must stay exact
    return {k: (v if k.endswith("vae_scale") else v.half()).contiguous() for k, v in out.items()}


def lab_checkpoint_path(out_dir: Path | None = None) -> Path:
    import lab.text_encoder
    import lab.unet

    def write(path: Path) -> None:
        from safetensors.torch import load_file, save_file

        configure_comfy_args()
        save_file(expand_ldm(load_file(str(LDM_FILE))), str(path), metadata={"generator": "prompt-optim lab"})

    inputs = build_inputs([_lab_weights(LDM_FILE), __file__, lab.unet, lab.text_encoder])
    return cached(Path(out_dir or DEFAULT_DIR), CHECKPOINT_NAME, inputs, write)


def lab_reward_folder(out_dir: Path | None = None) -> Path:
    import lab.reward

    tokenizer = comfyui_root() / "comfy" / "sd1_tokenizer"

    def write(folder: Path) -> None:
        from safetensors.torch import load_file

        lab.reward.write_folder(load_file(str(REWARD_FILE)), folder, tokenizer)

    inputs = build_inputs([_lab_weights(REWARD_FILE), __file__, lab.reward, *sorted(tokenizer.iterdir())])
    return cached(Path(out_dir or DEFAULT_DIR), REWARD_NAME, inputs, write)


def lab_rewriter_folders() -> list[Path]:
    """The lab's rewriter policies (reference, GFlowNet, reward maximization), for models/prompt_rewriters."""
    from lab.rewriter import NAMES

    folders = [REWRITERS_DIR / name for name in NAMES.values()]
    missing = [str(f) for f in folders if not (f / "config.json").is_file()]
    if missing:
        raise FileNotFoundError(f"lab rewriter policies not found: {missing} (train them with "
                                f"`python -m lab.rewriter --out {REWRITERS_DIR}`, see lab/README.md)")
    return folders


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    print(lab_checkpoint_path(args.out))
    print(lab_reward_folder(args.out))


if __name__ == "__main__":
    main()
