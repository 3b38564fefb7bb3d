"""Find the ComfyUI source tree and make its modules importable."""
import os
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("PROMPT_OPTIM_CACHE", Path.home() / ".cache" / "prompt-optim"))


def comfyui_root() -> Path:
    """The ComfyUI to use: $COMFYUI_PATH, else the one scripts/setup_runtime.sh unpacked."""
    root = Path(os.environ.get("COMFYUI_PATH") or CACHE / "ComfyUI-0.3.75")
    if not (root / "main.py").is_file():
        raise FileNotFoundError(
            f"No ComfyUI at {root} (main.py missing). Run `bash scripts/setup_runtime.sh` "
            "or set COMFYUI_PATH to your ComfyUI folder."
        )
    return root


def add_comfyui_to_path() -> Path:
    root = comfyui_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def configure_comfy_args(base_directory: str | os.PathLike | None = None):
    """Prepare ComfyUI's global arguments for use as a library (before comfy.model_management loads).

    ComfyUI parses sys.argv at import unless told not to; without CUDA it must be told to use the CPU.
    """
    add_comfyui_to_path()
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import torch
    from comfy.cli_args import args

    if not torch.cuda.is_available():
        args.cpu = True
    if base_directory is not None:
        args.base_directory = str(base_directory)
    return args
