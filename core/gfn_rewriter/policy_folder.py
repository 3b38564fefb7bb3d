"""A rewriter policy folder (Hugging Face layout, safetensors weights): checked first, then loaded.

Each problem gets one message naming the folder and what is missing, instead of the deep stack trace
(or the silent download attempt) that from_pretrained gives for an incomplete folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt")
LAYOUT = ("a Hugging Face causal language model folder: config.json, model.safetensors (or sharded "
          "model-*.safetensors with model.safetensors.index.json) and tokenizer files (tokenizer.json, or "
          "vocab.json + merges.txt)")


class PolicyFolderError(ValueError):
    pass


def _causal_lm_classes() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def check_policy_folder(folder: str | Path) -> dict:
    """The folder's config.json as a dict, or PolicyFolderError saying what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PolicyFolderError(f"'{folder}' is not a folder; expected {LAYOUT}.")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise PolicyFolderError(f"'{folder}' has no config.json; expected {LAYOUT}.")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise PolicyFolderError(f"'{config_file}' is not readable JSON ({e}).") from e
    architectures = config.get("architectures") or []
    if not architectures or architectures[0] not in _causal_lm_classes():
        found = architectures[0] if architectures else f"model_type '{config.get('model_type')}' without 'architectures'"
        raise PolicyFolderError(f"'{folder}' holds a {found} (config.json), not a causal language model; a rewriter "
                                "needs a model with a language-model head, e.g. GPT2LMHeadModel or LlamaForCausalLM.")
    if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        other = [p.name for p in folder.glob("*.bin")]
        hint = f" (found {', '.join(other)}: only safetensors weights are loaded)" if other else ""
        raise PolicyFolderError(f"'{folder}' has no model.safetensors{hint}; expected {LAYOUT}.")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise PolicyFolderError(f"'{folder}' has no tokenizer files (tokenizer.json, or vocab.json + merges.txt); "
                                "save the tokenizer beside the model (tokenizer.save_pretrained(folder)).")
    return config


def load_policy(folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a checked folder; local files only, no remote code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_policy_folder(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    if tokenizer.eos_token_id is None:
        raise PolicyFolderError(f"'{folder}': the tokenizer defines no end-of-text (eos) token; rewrites could not end.")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False,
                                                     use_safetensors=True, dtype=dtype)
    except Exception as e:  # noqa: BLE001 - e.g. a truncated model.safetensors (safetensors' own error type)
        raise PolicyFolderError(f"'{folder}': the model weights cannot be read ({type(e).__name__}: {e}); a file "
                                "is damaged or incomplete: copy the folder again.") from e
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise PolicyFolderError(f"'{folder}': the tokenizer has {len(tokenizer)} tokens but the model embeds only "
                                f"{model.get_input_embeddings().num_embeddings}; they do not belong together.")
    return model.to(device).eval(), tokenizer
