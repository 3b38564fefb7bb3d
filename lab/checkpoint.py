"""Expand the committed compact lab weights into files ComfyUI loads as they are.

    python -m lab.checkpoint [--out DIR]    # prints the SD1.x checkpoint and the reward folder

- `<hash>/prompt_optim_lab_sd1.safetensors`: ComfyUI's SD1.x single-file layout (CheckpointLoaderSimple):
  the UNet widened exactly to 320 channels (lab/unet.py), the CLIP text model with its fixed parts
  generated (lab/text_encoder.py), the TAESD autoencoder (lab/autoencoder.py).
- `<hash>/prompt_optim_lab_clip/`: the lab reward as a Hugging Face CLIPModel folder for models/rewards.
<hash> is the compact files' content hash, so new weights never reuse a stale expansion, while the
names the workflows refer to stay fixed.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from devtools.comfy_path import CACHE, comfyui_root, configure_comfy_args

WEIGHTS = Path(__file__).resolve().parent / "weights"
LDM_FILE = WEIGHTS / "lab_ldm_v1.safetensors"
REWARD_FILE = WEIGHTS / "lab_clip_v1.safetensors"
REWRITERS_DIR = WEIGHTS / "rewriters"  # Hugging Face folders, used as they are (lab/rewriter.py)
DEFAULT_DIR = CACHE / "lab"


CHECKPOINT_NAME = "prompt_optim_lab_sd1.safetensors"
REWARD_NAME = "prompt_optim_lab_clip"


def _content_hash(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"lab weights not found: {path} (train them with `python -m lab.train` / "
                                "`python -m lab.reward`, see lab/README.md)")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def expand_ldm(compact: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from lab.text_encoder import LabTextEncoder
    from lab.unet import expand_state_dict, wide_shapes

    narrow_unet = {k[len("unet."):]: v for k, v in compact.items() if k.startswith("unet.")}
    out = {"model.diffusion_model." + k: v for k, v in expand_state_dict(narrow_unet, wide_shapes()).items()}
    text = LabTextEncoder(compact["text.token_ids"].tolist())
    text.load_state_dict({k[len("text."):]: v.float() for k, v in compact.items() if k.startswith("text.")})
    out.update(text.expand())
    out.update({"first_stage_model." + k[len("vae."):]: v.float() for k, v in compact.items() if k.startswith("vae.")})
    # fp16 like SD checkpoints, except the VAE scale, which must stay exact
    return {k: (v if k.endswith("vae_scale") else v.half()).contiguous() for k, v in out.items()}


def lab_checkpoint_path(out_dir: Path | None = None) -> Path:
    from safetensors.torch import load_file, save_file

    out_dir = Path(out_dir or DEFAULT_DIR)
    path = out_dir / _content_hash(LDM_FILE) / CHECKPOINT_NAME
    if not path.exists():
        configure_comfy_args()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(expand_ldm(load_file(str(LDM_FILE))), str(tmp), metadata={"generator": "prompt-optim lab"})
        tmp.replace(path)
    return path


def lab_reward_folder(out_dir: Path | None = None) -> Path:
    from safetensors.torch import load_file

    from lab.reward import write_folder

    out_dir = Path(out_dir or DEFAULT_DIR)
    folder = out_dir / _content_hash(REWARD_FILE) / REWARD_NAME
    if not (folder / "config.json").exists():
        tmp = folder.with_name(folder.name + ".tmp")
        write_folder(load_file(str(REWARD_FILE)), tmp, comfyui_root() / "comfy" / "sd1_tokenizer")
        tmp.replace(folder)
    return folder


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
