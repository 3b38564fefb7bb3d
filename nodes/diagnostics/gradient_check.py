"""A diagnostic node: do gradients flow correctly through this model and CLIP?

Every method in the pack differentiates through the text encoder and the denoiser. This node checks
both on the user's own model, inside ComfyUI: autograd's directional derivative against a central
finite difference for (1) a learnable token spliced into the prompt, through CLIP, and (2) the
conditioning, through the denoiser's x0 estimate. It passes MODEL and CLIP through unchanged.
"""
from __future__ import annotations

import math

import torch
from comfy_api.latest import io, ui

from ...core.diagnostics.gradient_check import directional_check
from ...core.shared.conditioning import TextConditioning
from ...core.shared.text_encoder import LearnableTokens
from ..comfy.denoiser import prepared_denoiser
from ..comfy.errors import require_prompt
from ..comfy.errors import NodeInputError
from ..comfy.model_family import CONDITIONING_FAMILIES, ENCODED_CLIP_FAMILIES, matching_families
from ..comfy.text_encoder import ComfyTextEncoder

CATEGORY = "prompt_optim/diagnostics"

NODE = "Gradient Check"


def _unit(shape, gen: torch.Generator) -> torch.Tensor:
    v = torch.randn(shape, generator=gen)
    return v / v.norm()


def _projection(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(t.shape, generator=gen) / math.sqrt(t.numel())


class GradientCheck(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PromptOptim_GradientCheck",
            display_name=NODE,
            category=CATEGORY,
            description=(
                "Checks that gradients through this CLIP and model are correct (autograd vs. finite "
                "differences), which every prompt-optimization method here relies on. Passes MODEL and "
                "CLIP through unchanged; shows a report."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to check (SD1.x, SD2.x, SDXL and derivatives, "
                                                "SD3/SD3.5, Flux.1)."),
                io.Clip.Input("clip", tooltip="The CLIP that belongs to the model."),
                io.String.Input("prompt", multiline=True, default="a photo of a cat",
                                tooltip="Prompt encoded for the check."),
                io.Float.Input("noise_level", default=0.5, min=0.05, max=0.95, step=0.05,
                               tooltip="Where in the noise schedule the denoiser is checked "
                                       "(0 = clean, 1 = pure noise)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed for the random token, latent and directions used by the check."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The input model, unchanged."),
                io.Clip.Output(display_name="clip", tooltip="The input CLIP, unchanged."),
                io.String.Output(display_name="report", tooltip="What was checked and the results."),
                io.Float.Output(display_name="token_error",
                                tooltip="Relative error of the token gradient through the text encoder."),
                io.Float.Output(display_name="conditioning_error",
                                tooltip="Relative error of the conditioning gradient through the denoiser."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, prompt, noise_level, seed) -> io.NodeOutput:
        require_prompt(NODE, "prompt", prompt)
        if clip is None:
            raise NodeInputError(NODE, "clip", "no CLIP: the checkpoint has no text encoder.")
        family = matching_families(model, clip, NODE, CONDITIONING_FAMILIES, ENCODED_CLIP_FAMILIES)
        gen = torch.Generator().manual_seed(seed)
        with torch.inference_mode(False), torch.enable_grad():
            token, plain, clip_bytes, token_parts = cls._check_token(clip, prompt, gen)
            cond, model_bytes = cls._check_conditioning(model, plain, noise_level, gen)
        report = "\n".join([
            f"family: {family}",
            f"token through the text encoder ({', '.join(token_parts)}): autograd "
            f"{token.autograd:.6g}, finite difference {token.finite_difference:.6g}, relative error "
            f"{token.relative_error:.2e}",
            f"conditioning through denoiser x0: autograd {cond.autograd:.6g}, finite difference "
            f"{cond.finite_difference:.6g}, relative error {cond.relative_error:.2e}",
            f"weights copied to make them autograd-ready: CLIP {clip_bytes / 2**20:.1f} MiB, "
            f"model {model_bytes / 2**20:.1f} MiB (plain weights are shared, not copied)",
        ])
        return io.NodeOutput(model, clip, report, token.relative_error, cond.relative_error,
                             ui=ui.PreviewText(report))

    @staticmethod
    def _check_token(clip, prompt, gen):
        with ComfyTextEncoder(clip) as encoder:
            widths = encoder.token_widths
            rows = []
            for k in sorted(widths):
                rows.append(encoder.rows(k, torch.randint(0, encoder.vocabulary_size(k), (1,), generator=gen)))
            start = torch.cat(rows, dim=1)
            plain = encoder.encode(prompt).detach()
            weight = _projection(plain.cross_attn, gen)
            pooled_weight = None if plain.pooled is None else _projection(plain.pooled, gen)

            def f(flat):
                parts = torch.split(flat, [widths[k] for k in sorted(widths)], dim=1)
                out = encoder.encode(prompt, LearnableTokens(dict(zip(sorted(widths), parts))))
                value = (out.cross_attn * weight.to(out.cross_attn)).sum()
                if pooled_weight is not None:
                    value = value + (out.pooled * pooled_weight.to(out.pooled)).sum()
                return value

            # Richardson: T5's input rows are large (norm ~60 against CLIP's ~0.5), where its curvature makes
            # the plain central difference's h^2 term the larger error (measured: 7e-2 at 1e-2, 4e-3 at 1e-3)
            check = directional_check(f, start, _unit(start.shape, gen), step=1e-2 * float(start.norm()),
                                      richardson=True)
            return check, plain, encoder.extra_bytes, encoder.keys

    @staticmethod
    def _check_conditioning(model, plain: TextConditioning, noise_level, gen):
        latent_format = model.model.latent_format
        latent = torch.zeros(1, latent_format.latent_channels, 8, 8)
        positive = [[plain.cross_attn, {} if plain.pooled is None else {"pooled_output": plain.pooled}]]
        with prepared_denoiser(model, positive, latent) as (denoiser, scope):
            device = model.load_device
            sigma = denoiser.sigma_at(noise_level)
            x = denoiser.renoise(torch.randn(latent.shape, generator=gen), sigma,
                                 torch.randn(latent.shape, generator=gen)).to(device)
            weight = _projection(latent, gen).to(device)
            start = plain.cross_attn.to(device)

            def g(c):
                return (denoiser.predict_x0(x, sigma, TextConditioning(c, plain.pooled)) * weight).sum()

            # Along the gradient: a random direction barely moves x0 of a random-weight model, and the
            # float32 round-off of x0 would then swamp the finite difference. The step is small because
            # deep random-weight UNets (SDXL) curve quickly: measured error 6e-3 at 1e-3, 0.19 at 1e-2.
            check = directional_check(g, start, None, step=1e-3 * float(start.norm()))
            return check, scope.extra_bytes
