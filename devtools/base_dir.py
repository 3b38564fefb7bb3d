"""A ComfyUI --base-directory holding only this pack and the test checkpoints."""
from __future__ import annotations

import json
import os
from pathlib import Path

from devtools.comfy_path import PACK_ROOT

PACK_NAME = "prompt-optim"


def make_base_dir(base: Path, checkpoints: list[Path] = (), diffusion_models: list[Path] = (),
                  rewards: list[Path] = (), prompt_rewriters: list[Path] = (), vae: list[Path] = (),
                  text_encoders: list[Path] = ()) -> Path:
    """Lay out BASE with custom_nodes/prompt-optim -> this repo and model files linked in."""
    base = Path(base)
    for sub in ("custom_nodes", "models/checkpoints", "models/diffusion_models", "models/rewards",
                "models/prompt_rewriters", "models/vae", "models/text_encoders", "input", "output", "user/default",
                "temp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_NAME
    if not link.exists():
        link.symlink_to(PACK_ROOT, target_is_directory=True)
    link_models(base, checkpoints=checkpoints, diffusion_models=diffusion_models, rewards=rewards,
                prompt_rewriters=prompt_rewriters, vae=vae, text_encoders=text_encoders)
    # Skip the first-visit templates dialog that would cover the graph in the browser.
    settings = base / "user" / "default" / "comfy.settings.json"
    if not settings.exists():
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    return base


def link_models(base: Path, checkpoints: list[Path] = (), diffusion_models: list[Path] = (), rewards: list[Path] = (),
                prompt_rewriters: list[Path] = (), vae: list[Path] = (), text_encoders: list[Path] = ()) -> None:
    """Link model files into BASE/models/<folder>/ under their own names."""
    for folder, files in (("checkpoints", checkpoints), ("diffusion_models", diffusion_models), ("rewards", rewards),
                          ("prompt_rewriters", prompt_rewriters), ("vae", vae), ("text_encoders", text_encoders)):
        for f in files:
            target = Path(base) / "models" / folder / Path(f).name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.symlink(Path(f).resolve(), target)
