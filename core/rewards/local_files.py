"""Loading reward weights and tokenizers from local files only, with errors that say what is missing.

Nothing here downloads: Hugging Face loaders get `local_files_only=True`, state dicts are read with
safetensors or `torch.load(weights_only=True)`, and key mismatches are reported instead of ignored.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


class RewardFileError(FileNotFoundError):
    """A reward's weight folder or file is missing or incomplete."""


class RewardCheckpointError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model it should load into."""


class RewardArchitectureError(ValueError):
    """An open_clip architecture name that is missing, not a plain model name, or unknown to open_clip."""


BACKBONE = "backbone"  # `part` of an error raised while loading a reward's CLIP backbone (not its own weights)


def error_part(error: Exception) -> str:
    """Which of a reward's files an error concerns: BACKBONE, or "weights" (the reward's own)."""
    return getattr(error, "part", "weights")


def require_path(path: str | Path, what: str, expected: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise RewardFileError(f"{what}: '{path}' does not exist; expected {expected}.")
    return path


def require_files(folder: Path, names: Iterable[str], what: str, expected: str) -> None:
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        raise RewardFileError(f"{what}: folder '{folder}' lacks {', '.join(missing)}; expected {expected}.")


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat {key: tensor} from .safetensors or a torch pickle (weights only; 'state_dict' unwrapped)."""
    path = Path(path)
    if path.suffix.lower() in (".safetensors", ".sft"):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file: name it, not a parser's internals
            raise RewardCheckpointError(f"'{path}' cannot be read as safetensors ({e}); the file is damaged or "
                                        "incomplete (e.g. an interrupted download): download it again.") from e
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report the file, not an unpickling trace
        raise RewardCheckpointError(f"'{path}' cannot be read as a weights-only torch checkpoint ({e}).") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise RewardCheckpointError(f"'{path}' does not hold a state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in data.items()}


def check_keys(model_keys: dict[str, torch.Size], checkpoint: dict[str, torch.Tensor], source: str,
               ignore_unexpected: tuple[str, ...] = ()) -> None:
    """Raise RewardCheckpointError listing missing, unexpected and mis-shaped keys, if any."""
    missing = [k for k in model_keys if k not in checkpoint]
    unexpected = [k for k in checkpoint if k not in model_keys and not k.startswith(ignore_unexpected)]
    wrong = [f"{k} {tuple(checkpoint[k].shape)} != {tuple(s)}" for k, s in model_keys.items()
             if k in checkpoint and tuple(checkpoint[k].shape) != tuple(s)]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            more = f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""
            problems.append(f"{label}: {', '.join(keys[:8])}{more}")
    if problems:
        raise RewardCheckpointError(f"'{source}' does not match the model; " + "; ".join(problems) + ".")


def check_tokenizer(tokenizer, model_vocab: int, source: str) -> None:
    """Offline, a tokenizer whose files are not found can come back as a 2-7 token stub without raising."""
    regular = len(tokenizer) - len(getattr(tokenizer, "all_special_ids", []))
    if regular < 32:
        raise RewardFileError(f"the tokenizer loaded from '{source}' has only {len(tokenizer)} tokens; its vocabulary "
                              "files are missing or unreadable (an offline Hugging Face miss returns such a stub).")
    if len(tokenizer) > model_vocab:
        raise RewardCheckpointError(f"the tokenizer from '{source}' has {len(tokenizer)} tokens but the model's "
                                    f"vocabulary has {model_vocab}: they do not belong together.")


def first_existing(folders: Iterable[Path], names: Iterable[str]) -> Path | None:
    names = list(names)
    for folder in folders:
        if folder is not None and all((Path(folder) / n).exists() for n in names):
            return Path(folder)
    return None
