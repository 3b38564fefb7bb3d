"""Generated test assets (checkpoints, reward models, rewriter policies, lab expansions), cached under a key
derived from everything that builds them, so a stale cache can never stand in for a fresh build.

    <root>/<key>/<name>          the asset (a file or a folder), complete or absent
    <root>/<key>/build.json      what the key was derived from

The key hashes the text of the builder's source files, its settings, the versions of the libraries whose
code runs in the build, and the CPU kernels in use (torch's kernel set, MKL's code path when forced): seeded
float32 draws differ in the last bit between torch's AVX-512/AVX2 kernels and its portable ones, so a
machine whose kernels differ builds its own copy, as a fresh machine of that kind would.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import types
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable

import torch

LIBRARIES = ("torch", "transformers", "tokenizers", "safetensors", "numpy")


def _source_path(source) -> Path:
    return Path(source.__file__) if isinstance(source, types.ModuleType) else Path(source)


def build_inputs(sources: Iterable, **settings) -> dict:
    """What a build depends on: sha256 of each source file (a path or a module), settings, versions, kernels."""
    files = []  # (name, sha256) in the given order: where the checkout lives does not change the key
    for source in sources:
        path = _source_path(source)
        if not path.is_file():
            raise FileNotFoundError(f"asset builder source not found: {path}")
        files.append([path.name, hashlib.sha256(path.read_bytes()).hexdigest()])
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    kernels = {"torch": torch.backends.cpu.get_cpu_capability(), "MKL_CBWR": os.environ.get("MKL_CBWR")}
    return {"sources": files, "settings": {k: str(v) for k, v in sorted(settings.items())}, "versions": versions,
            "kernels": kernels}


def build_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def cached(root: Path, name: str, inputs: dict, write: Callable[[Path], None]) -> Path:
    """root/<key>/name as write(path) makes it (a file or a folder). Built at a per-process temporary sibling
    and renamed when complete, so an interrupted build is redone, never half-used, and concurrent builds do
    not collide. Built outside inference mode (ComfyUI's may be on)."""
    folder = Path(root) / build_key(inputs)
    out = folder / name
    if out.exists():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{os.getpid()}-{name}"  # per process: two test runs may build the same key at once
    _remove(tmp)
    with torch.inference_mode(False):
        write(tmp)
    (folder / "build.json").write_text(json.dumps(inputs, indent=2, sort_keys=True))
    if out.exists():  # another process finished the same build first: same inputs, same asset
        _remove(tmp)
    else:
        tmp.replace(out)
    return out


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
