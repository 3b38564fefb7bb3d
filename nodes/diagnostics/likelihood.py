"""A node that estimates how likely each latent is under the model and a prompt (ELBO-style)."""
from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ...core.diagnostics.likelihood import denoising_loss
from ...core.shared.conditioning import TextConditioning
from ..comfy.denoiser import prepared_denoiser
from ..comfy.errors import NodeInputError
from ..comfy.model_family import CONDITIONING_FAMILIES, model_family

CATEGORY = "prompt_optim/evaluate"

LIKELIHOOD_NODE = "Denoising Likelihood"


class DenoisingLikelihood(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PromptOptim_DenoisingLikelihood",
            display_name=LIKELIHOOD_NODE,
            category=CATEGORY,
            description="Per-image likelihood estimate under the model and a prompt: the latent is noised at evenly "
                        "spaced levels of the model's schedule (fixed seed) and denoised; the mean squared "
                        "noise-prediction error is an ELBO-style loss. Higher log_likelihood = more typical image; "
                        "MinorityPrompt should lower it. Compare images of the same size under the same prompt, "
                        "model, seed and levels.",
            inputs=[io.Model.Input("model", tooltip="The diffusion model that made the images (SD1.x, SD2.x, SDXL, "
                                                           "SD3, Flux.1)."),
                    io.Conditioning.Input("positive", tooltip="The ORIGINAL prompt's conditioning (one entry)."),
                    io.Latent.Input("samples", tooltip="The latents to evaluate (a sampler's output)."),
                    io.Int.Input("evaluation_seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                                 tooltip="Seed of the noise draws; keep it fixed across the images you compare "
                                         "(not randomized after each run, unlike a sampler's seed)."),
                    io.Int.Input("levels", default=20, min=1, max=1000,
                                 tooltip="Noise levels averaged (each costs one model call per image).")],
            outputs=[io.Float.Output(display_name="log_likelihood", is_output_list=True,
                                     tooltip="Per image: minus the denoising loss."),
                     io.Float.Output(display_name="mean", tooltip="Mean log_likelihood over the batch."),
                     io.String.Output(display_name="report")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, positive, samples, evaluation_seed, levels) -> io.NodeOutput:
        model_family(model, LIKELIHOOD_NODE, families=CONDITIONING_FAMILIES)
        if not positive or len(positive) != 1:
            raise NodeInputError(LIKELIHOOD_NODE, "positive", f"needs one conditioning entry, got "
                                                              f"{len(positive or [])}; use a single text encode.")
        latent = samples["samples"]
        if latent.ndim != 4 or not torch.isfinite(latent).all():
            raise NodeInputError(LIKELIHOOD_NODE, "samples", "needs finite image latents (B, C, H, W).")
        tensor, extras = positive[0]
        text = TextConditioning(tensor, extras.get("pooled_output"))
        with prepared_denoiser(model, positive, latent, differentiable=False) as (denoiser, _):
            device = model.load_device
            x0 = denoiser.model.process_latent_in(latent.to(device))
            text = TextConditioning(text.cross_attn.to(device),
                                    None if text.pooled is None else text.pooled.to(device))
            loss = denoising_loss(denoiser, x0, text, levels=levels, seed=evaluation_seed)
        scores = [-float(v) for v in loss]
        mean = sum(scores) / len(scores)
        report = "\n".join([f"log-likelihood estimate ({levels} levels, seed {evaluation_seed}); higher = more typical"]
                           + [f"image {i}: {s:.6g}" for i, s in enumerate(scores)] + [f"mean: {mean:.6g}"])
        return io.NodeOutput(scores, mean, report, ui=ui.PreviewText(report))


NODES = [DenoisingLikelihood]
