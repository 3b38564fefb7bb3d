"""A rewriter policy folder (Hugging Face layout): checked first, then loaded.

Weights: model.safetensors (or its shards), or a single pytorch_model.bin as the published GPT-2 rewriters
ship it (microsoft/Promptist, Gustavosta/MagicPrompt-Stable-Diffusion). A .bin is read with
torch.load(weights_only=True), which unpickles tensors only, into a model built from config.json; keys must
match exactly, except the causal-mask buffers old GPT-2 checkpoints carry (attn.bias, attn.masked_bias) and a
tied lm_head.weight equal to the token embedding (or absent); a state dict saved from the base model (keys
without its prefix, e.g. "transformer.") gets the prefix, as from_pretrained does.

Each problem gets one message naming the folder and what is missing, instead of the deep stack trace
(or the silent download attempt, or the warning about randomly initialized weights) that from_pretrained
gives for an incomplete folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt")
BIN = "pytorch_model.bin"
LAYOUT = ("a Hugging Face causal language model folder: config.json, model.safetensors (or sharded "
          "model-*.safetensors with model.safetensors.index.json, or a single pytorch_model.bin) and tokenizer "
          "files (tokenizer.json, or vocab.json + merges.txt)")
# buffers of old GPT-2 checkpoints (the causal mask and its fill value) that current transformers computes instead
IGNORED_BUFFERS = (".attn.bias", ".attn.masked_bias")


class PolicyFolderError(ValueError):
    pass


def _causal_lm_classes() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def weights_file(folder: str | Path) -> Path | None:
    """The folder's weights: model.safetensors, its shard index, or pytorch_model.bin (in that preference)."""
    for name in ("model.safetensors", "model.safetensors.index.json", BIN):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


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
    if weights_file(folder) is None:
        other = sorted(p.name for p in folder.glob("*.bin"))
        hint = f" (found {', '.join(other)}: sharded .bin weights are not loaded)" if other else ""
        raise PolicyFolderError(f"'{folder}' has no weights: no model.safetensors and no {BIN}{hint}; "
                                f"expected {LAYOUT}.")
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
    weights = weights_file(folder)
    if weights.name == BIN:
        model = _load_bin(Path(folder), weights, dtype)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False,
                                                         use_safetensors=True, dtype=dtype)
        except Exception as e:  # noqa: BLE001 - e.g. a truncated model.safetensors (safetensors' own error type)
            raise PolicyFolderError(f"'{folder}': the model weights cannot be read ({type(e).__name__}: {e}); a "
                                    "file is damaged or incomplete: copy the folder again.") from e
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise PolicyFolderError(f"'{folder}': the tokenizer has {len(tokenizer)} tokens but the model embeds only "
                                f"{model.get_input_embeddings().num_embeddings}; they do not belong together.")
    return model.to(device).eval(), tokenizer


def _load_bin(folder: Path, weights: Path, dtype: torch.dtype):
    """The model config.json describes, with the state dict of pytorch_model.bin (tensors only, no code)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated zip or pickle raises several types
        raise PolicyFolderError(f"'{folder}': {BIN} cannot be read ({type(e).__name__}: {e}); the file is damaged "
                                "or incomplete: copy the folder again.") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PolicyFolderError(f"'{weights}' holds no state dict (name -> tensor); expected the weights that "
                                "save_pretrained writes.")
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    expected = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and not any(k.startswith(prefix + ".") for k in state):  # saved from the base model (GPT2Model)
        state = {f"{prefix}.{k}": v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not (k.endswith(IGNORED_BUFFERS) and k not in expected)}
    tied = _tied_keys(model)
    for key, source in tied.items():  # a tied head: the file may hold it (equal to its source) or leave it out
        if key in state and source in state and not torch.equal(state[key], state[source]):
            raise PolicyFolderError(f"'{weights}': {key} differs from {source}, but config.json ties them "
                                    "(tie_word_embeddings); the weights do not belong to this config.")
        state.pop(key, None)
    missing = sorted(k for k in expected if k not in state and k not in tied)
    unexpected = sorted(k for k in state if k not in expected)
    wrong = sorted(k for k in state if k in expected and state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        found = (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        parts = [f"{label}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''} ({len(keys)})"
                 for label, keys in found if keys]
        raise PolicyFolderError(f"'{weights}' does not match the {type(model).__name__} config.json describes; "
                                + "; ".join(parts) + ".")
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    return model.to(dtype)


def _tied_keys(model) -> dict[str, str]:
    """{tied parameter name: the name it shares storage with} in this model (e.g. lm_head.weight -> wte)."""
    first: dict[int, str] = {}
    tied = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            tied[name] = first[id(param)]
        else:
            first[id(param)] = name
    return tied
