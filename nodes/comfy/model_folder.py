"""A model folder under ComfyUI's `models/` (e.g. `models/rewards`), registered with folder_paths and listed
for a loader node. Extra locations given under the same key in extra_model_paths.yaml are merged."""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import folder_paths


class ModelFolder:
    """`markers`: a sub-folder holding one of these files is a model folder (listed, not descended into);
    `file_suffixes`: single weight files with these suffixes are listed too."""

    def __init__(self, name: str, markers: tuple[str, ...], file_suffixes: tuple[str, ...] = ()):
        self.name, self.markers, self.file_suffixes = name, markers, file_suffixes

    def register(self) -> None:
        folder_paths.add_model_folder_path(self.name, os.path.join(folder_paths.models_dir, self.name),
                                           is_default=True)

    def roots(self) -> list[Path]:
        self.register()  # idempotent; also covers a models_dir changed after import (--base-directory)
        return [Path(p) for p in folder_paths.get_folder_paths(self.name)]

    def list_entries(self, max_depth: int = 3) -> list[str]:
        """Names (relative, '/'-separated) of the model folders and weight files under every root."""
        entries: set[str] = set()
        for root in self.roots():
            if not root.is_dir():
                continue
            stack = [(root, 0)]
            while stack:
                folder, depth = stack.pop()
                for child in sorted(folder.iterdir()):
                    if child.name.startswith("."):
                        continue
                    if child.is_dir():
                        if any((child / m).exists() for m in self.markers):
                            entries.add(child.relative_to(root).as_posix())
                        elif depth + 1 < max_depth:
                            stack.append((child, depth + 1))
                    elif child.suffix.lower() in self.file_suffixes:
                        entries.add(child.relative_to(root).as_posix())
        return sorted(entries)

    def resolve(self, name: str) -> Path | None:
        """Full path of a listed entry, or None."""
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts:  # only names inside the folder's roots (links are fine)
            return None
        for root in self.roots():
            candidate = root / rel
            if candidate.is_dir() or (self.file_suffixes and candidate.is_file()):
                return candidate
        return None

    def expected_location(self) -> str:
        return " or ".join(f"'{r}'" for r in self.roots())
