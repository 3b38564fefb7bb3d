"""The core views over diffusers / transformers components, so methods run outside ComfyUI too.

Optional extra: `pip install diffusers` (transformers comes with ComfyUI). Covers SD1.x/SD2.x-style
pipelines: a UNet2DConditionModel with a DDPM-family scheduler, and one CLIPTextModel.
"""
from __future__ import annotations

import torch

from .conditioning import TextConditioning
from .denoiser import Denoiser
from .prediction import PredictionType, model_input, vp_sigmas, x0_from_output
from .text_encoder import LearnableTokens, TextEncoder

_PREDICTIONS = {"epsilon": PredictionType.EPS, "v_prediction": PredictionType.V, "sample": PredictionType.X0}


class DiffusersDenoiser(Denoiser):
    """UNet2DConditionModel + a scheduler with `alphas_cumprod` (DDPM, DDIM, Euler, DPM-Solver, ...)."""

    def __init__(self, unet, scheduler):
        kind = scheduler.config.get("prediction_type", "epsilon")
        if kind not in _PREDICTIONS:
            raise ValueError(f"scheduler prediction_type {kind!r} is not supported; expected one of {list(_PREDICTIONS)}")
        self.unet = unet
        self.prediction = _PREDICTIONS[kind]
        self.log_sigmas = vp_sigmas(scheduler.alphas_cumprod.double()).log()

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous training timestep of a sigma (log-sigma interpolation, as k-diffusion does)."""
        log_sigma = torch.as_tensor(sigma, dtype=torch.float64).log().reshape(-1, 1)
        ls = self.log_sigmas
        idx = (log_sigma >= ls).sum(dim=1).clamp(1, len(ls) - 1) - 1
        low, high = ls[idx], ls[idx + 1]
        w = ((low - log_sigma[:, 0]) / (low - high)).clamp(0, 1)
        return idx + w

    def predict_x0(self, x, sigma, cond: TextConditioning) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        t = self.timestep(sigma.cpu()).to(device=x.device, dtype=x.dtype)
        out = self.unet(model_input(self.prediction, x, sigma), t, encoder_hidden_states=cond.cross_attn).sample
        return x0_from_output(self.prediction, out, x, sigma)

    def sigma_at(self, fraction: float) -> float:
        t = min(max(fraction, 0.0), 1.0) * (len(self.log_sigmas) - 1)
        low = int(t)
        high = min(low + 1, len(self.log_sigmas) - 1)
        return float(((1 - (t - low)) * self.log_sigmas[low] + (t - low) * self.log_sigmas[high]).exp())

    def fraction_of(self, sigma: float) -> float:
        return float(self.timestep(torch.tensor([sigma]))[0]) / (len(self.log_sigmas) - 1)


class TransformersTextEncoder(TextEncoder):
    """One CLIPTextModel + CLIPTokenizer. `layer=None`: last hidden state after the final layer norm
    (SD1.x); a negative int: that hidden state without it (e.g. -2 for "clip skip 2")."""

    def __init__(self, tokenizer, text_model, name: str = "l", layer: int | None = None):
        if len(tokenizer) < 1000:
            raise ValueError(f"the tokenizer has only {len(tokenizer)} tokens; its vocabulary files were not found")
        self.tokenizer, self.model, self.name, self.layer = tokenizer, text_model, name, layer
        self.table = text_model.get_input_embeddings()

    @property
    def token_widths(self) -> dict[str, int]:
        return {self.name: self.table.weight.shape[1]}

    def vocabulary(self, encoder: str) -> torch.Tensor:
        return self.table.weight.detach().float().clone()

    def word_embeddings(self, encoder: str, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        return self.table.weight[torch.tensor(ids, device=self.table.weight.device)].detach().float().clone()

    def encode(self, prompt: str, learnable: LearnableTokens | None = None) -> TextConditioning:
        tok = self.tokenizer
        length = self.model.config.max_position_embeddings
        ids = tok(prompt, padding="max_length", max_length=length, truncation=True).input_ids
        slots: list[int] = []
        if learnable is not None:
            self.check_learnable(learnable)
            n = learnable.count
            at = 1 if learnable.position == "start" else ids.index(tok.eos_token_id, 1)
            if ids[-n:] != [tok.pad_token_id] * n or ids.index(tok.eos_token_id, 1) + n >= len(ids):
                raise ValueError(f"the prompt leaves no room for {n} more token(s); shorten the prompt")
            # Any id below end-of-text works as a stand-in: its embedding row is replaced below.
            ids = ids[:at] + [0] * n + ids[at:len(ids) - n]
            slots = list(range(at, at + n))
        input_ids = torch.tensor([ids], device=self.table.weight.device)

        def splice(module, args, output):
            if not slots:
                return output
            vectors = learnable.vectors[self.name].to(output)
            keep = torch.ones(output.shape[1], 1, dtype=output.dtype, device=output.device)
            keep[slots] = 0
            inserted = torch.zeros_like(output[0])
            inserted = inserted.index_put((torch.tensor(slots, device=output.device),), vectors)
            return output * keep + inserted  # out of place, so gradients reach `vectors`

        handle = self.table.register_forward_hook(splice)
        try:
            out = self.model(input_ids, output_hidden_states=self.layer is not None)
        finally:
            handle.remove()
        states = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]
        return TextConditioning(states)
