"""The `models/rewards` folder: registered with ComfyUI's folder_paths, listed for the loader node.

Reward weights come as folders (Hugging Face CLIPModel folders, ImageReward folders, open_clip
folders) or single files (aesthetic head, HPS v2), so the listing includes both. Extra locations
given under `rewards:` in extra_model_paths.yaml are merged, not replaced.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import folder_paths

from ..core.rewards.local_files import WEIGHT_SUFFIXES

FOLDER = "rewards"
# a folder with one of these files is a model folder: list it, do not descend into it
MODEL_FOLDER_MARKERS = ("config.json", "open_clip_config.json", "ImageReward.pt", "med_config.json")
NONE = "none"


def register() -> None:
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)


def roots() -> list[Path]:
    register()  # idempotent; also covers a models_dir changed after import (--base-directory)
    return [Path(p) for p in folder_paths.get_folder_paths(FOLDER)]


def list_entries(max_depth: int = 3) -> list[str]:
    """Names (relative, '/'-separated) of model folders and weight files under every rewards root."""
    entries: set[str] = set()
    for root in roots():
        if not root.is_dir():
            continue
        stack = [(root, 0)]
        while stack:
            folder, depth = stack.pop()
            for child in sorted(folder.iterdir()):
                if child.name.startswith("."):
                    continue
                rel = child.relative_to(root).as_posix()
                if child.is_dir():
                    if any((child / m).exists() for m in MODEL_FOLDER_MARKERS):
                        entries.add(rel)
                    elif depth + 1 < max_depth:
                        stack.append((child, depth + 1))
                elif child.suffix.lower() in WEIGHT_SUFFIXES:
                    entries.add(rel)
    return sorted(entries)


def resolve(name: str) -> Path | None:
    """Full path of a listed entry, or None."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts:  # only names inside the rewards folders (links are fine)
        return None
    for root in roots():
        candidate = root / rel
        if candidate.exists():
            return candidate
    return None


def expected_location() -> str:
    return " or ".join(f"'{r}'" for r in roots())
