#!/usr/bin/env bash
# Builds (once) a virtual environment of its own with comfy-cli and ruff, for
# tests/test_registry_package.py (`comfy node validate` runs `python -m ruff` in comfy-cli's own
# interpreter). It is kept apart from the test venv, which stands for ComfyUI's shared environment:
# comfy-cli brings many dependencies of its own that a ComfyUI user's environment never sees.
# Idempotent: a second run only checks a stamp. Prints an `export` line for the caller to eval.
#
# PROMPT_OPTIM_CACHE=dir  where the venv lives (default ~/.cache/prompt-optim).
set -euo pipefail
cache="${PROMPT_OPTIM_CACHE:-$HOME/.cache/prompt-optim}"
venv="$cache/comfy-cli-venv"
reqs="comfy-cli==1.23.0 ruff==0.17.6"
stamp="$venv/.prompt-optim-stamp"
log() { echo "[prompt-optim setup] $*" >&2; }
mkdir -p "$cache"
if [ "$(cat "$stamp" 2>/dev/null)" != "$reqs" ]; then
  log "building comfy-cli's own virtual environment in $venv (first run: about a minute)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  pip_log="$cache/comfy-cli-pip.log"
  # shellcheck disable=SC2086  # $reqs is a list of requirement words
  "$venv/bin/python" -m pip install $reqs > "$pip_log" 2>&1 ||
    { tail -40 "$pip_log" >&2; log "pip failed; full log: $pip_log"; exit 1; }
  echo "$reqs" > "$stamp"
fi
echo "export PROMPT_OPTIM_COMFY_CLI='$venv/bin/comfy'"
