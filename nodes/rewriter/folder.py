"""The `models/prompt_rewriters` folder: rewriter policies (Hugging Face causal-LM folders). Folders holding
a config.json are listed, incomplete ones too: loading says what is missing."""
from __future__ import annotations

from ..comfy.model_folder import ModelFolder

REWRITERS = ModelFolder("prompt_rewriters", markers=("config.json",))
