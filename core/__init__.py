"""Plain-PyTorch core of the pack: the methods, rewards and math, usable without ComfyUI.

Nothing under core/ may import ComfyUI (`comfy`, `folder_paths`, `nodes`, ...); a test enforces it.
The ComfyUI face lives in nodes/, the diffusers face in core/shared/diffusers_adapter.py.
"""
from .shared.conditioning import TextConditioning
from .shared.denoiser import Denoiser
from .shared.prediction import PredictionType
from .shared.text_encoder import LearnableTokens, TextEncoder

__all__ = ["Denoiser", "LearnableTokens", "PredictionType", "TextConditioning", "TextEncoder"]
