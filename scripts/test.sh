#!/usr/bin/env bash
# Runs the whole test suite (CPU, offline) after installing what it needs; extra args go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
eval "$(bash scripts/setup_runtime.sh)"
eval "$(bash scripts/setup_comfy_cli.sh)"  # its own venv, for tests/test_registry_package.py
bash scripts/install_browser.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$PROMPT_OPTIM_PYTHON" -m pytest -p no:logging "$@"
