#!/usr/bin/env bash
# The main job: every workflow in workflows/ in a headless ComfyUI, images written to ./output.
# Uses the embedded default model unless CKPT=/path/to/your_checkpoint.safetensors is set.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
eval "$(bash scripts/setup_runtime.sh)"
export HF_HUB_OFFLINE=1
exec "$PROMPT_OPTIM_PYTHON" -m devtools.run_workflows "$@"
