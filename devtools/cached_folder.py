"""Generated test assets cached in a folder that is either complete or absent."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import torch


def cached_folder(out: Path, version: int, write: Callable[[Path], None]) -> Path:
    """OUT as write(folder) fills it: built in a temporary sibling and renamed when complete, so an
    interrupted build is redone, never half-used. Built once; outside inference mode (ComfyUI's may be on)."""
    out = Path(out)
    if (out / ".complete").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with torch.inference_mode(False):
        write(tmp)
    (tmp / ".complete").write_text(str(version))
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out
