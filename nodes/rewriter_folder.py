"""The `models/prompt_rewriters` folder: rewriter policies (Hugging Face causal-LM folders), registered
with ComfyUI's folder_paths and listed for the rewriter node. Extra locations given under
`prompt_rewriters:` in extra_model_paths.yaml are merged."""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import folder_paths

FOLDER = "prompt_rewriters"


def register() -> None:
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)


def roots() -> list[Path]:
    register()  # idempotent; also covers a models_dir changed after import (--base-directory)
    return [Path(p) for p in folder_paths.get_folder_paths(FOLDER)]


def list_entries(max_depth: int = 3) -> list[str]:
    """Folders holding a config.json, relative and '/'-separated (incomplete ones too: loading says what is missing)."""
    entries: set[str] = set()
    for root in roots():
        if not root.is_dir():
            continue
        stack = [(root, 0)]
        while stack:
            folder, depth = stack.pop()
            for child in sorted(folder.iterdir()):
                if child.name.startswith(".") or not child.is_dir():
                    continue
                if (child / "config.json").is_file():
                    entries.add(child.relative_to(root).as_posix())
                elif depth + 1 < max_depth:
                    stack.append((child, depth + 1))
    return sorted(entries)


def resolve(name: str) -> Path | None:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts:
        return None
    for root in roots():
        if (root / rel).is_dir():
            return root / rel
    return None


def expected_location() -> str:
    return " or ".join(f"'{r}'" for r in roots())
