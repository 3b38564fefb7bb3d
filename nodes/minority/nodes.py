"""MinorityPrompt nodes: encode with a placeholder, a GUIDER, a KSampler-like node, save the token."""
from __future__ import annotations

import os

import comfy.utils
import folder_paths
import latent_preview
import node_helpers
import safetensors.torch
import torch
from comfy_api.latest import io, ui

from ...core.minority.optimize import (ANNEAL_LEVELS, BETWEEN_STEPS, INITS, NORMS, TARGETS, MinoritySettings,
                                       MinoritySettingsError)
from ...core.shared.text_encoder import LearnableTokens
from ..comfy.errors import NodeInputError, require_prompt, settings_input_error
from ..comfy.guided_method import GuidedMethodFace, guider_node, ksampler_node, sample_like_ksampler
from ..comfy.model_family import CONDITIONING_FAMILIES, ENCODED_CLIP_FAMILIES, clip_family, model_family
from ..comfy.method_options import MethodOptions
from ..comfy.socket_types import MinorityOptions, MinorityToken
from ..comfy.step_guider import StepOptimizerGuider, single_positive
from ..comfy.text_encoder import ComfyTextEncoder
from ..comfy.validation import queued_check
from ..conditioning.keep_text import PROMPT_TEXT_KEY
from .guider import minority_guider, spec_of
from .placeholder_token import SPEC_KEY, PlaceholderSpec, free_embedding_name, safe_embedding_name, single_token_word

CATEGORY = "prompt_optim/minority_prompt"

ENCODE_NODE = "MinorityPrompt Text Encode"
GUIDER_NODE = "MinorityPrompt Guider"
SAMPLER_NODE = "MinorityPrompt KSampler"
SAVE_NODE = "Save MinorityPrompt Embedding"
# core settings fields -> the guider's inputs, where the names differ
SETTINGS_INPUTS = {"fraction": "optimize_fraction", "every": "every_n_steps", "target": "optimize",
                   "checkpointing": "gradient_checkpointing"}


INIT_HELP = ("Starting point of the placeholder's embedding. word: a copy of init_word's (authors: 'cool' for "
             "COCO, 'handsome' in demos; a meaningful word steers the direction, e.g. 'old'). random_vocabulary: "
             "a random vocabulary row. gaussian / gaussian_diagonal: a draw from a normal fitted to the "
             "vocabulary (full / diagonal covariance). Random draws use init_seed.")


class MinorityEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PromptOptim_MinorityEncode",
            display_name=ENCODE_NODE,
            category=CATEGORY,
            description="CLIP Text Encode for MinorityPrompt. Outputs the plain prompt's conditioning (it samples "
                        "exactly like CLIP Text Encode with any sampler) and carries what the MinorityPrompt "
                        "guider needs to re-encode the prompt with one learnable placeholder token.",
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder from the checkpoint (SD1.x, SD2.x, SDXL, SD3, Flux.1). "
                                              "It is not modified."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, tooltip="The prompt."),
                io.Combo.Input("position", options=["end", "start"], default="end",
                               tooltip="Where the placeholder goes: after the prompt (paper) or before it. CLIP's "
                                       "text encoder is causal, so an end placeholder leaves the prompt's own "
                                       "token states unchanged. A prompt that fills its last 77-token window: "
                                       "the placeholder gets a window of its own (end) or is refused (start)."),
                io.Combo.Input("init", options=list(INITS), default="word", tooltip=INIT_HELP),
                io.String.Input("init_word", default="cool", tooltip="A single-token word, for init 'word'."),
                io.Int.Input("init_seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seed of the random inits (random_vocabulary, gaussian*)."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, text, position, init, init_word, init_seed) -> io.NodeOutput:
        require_prompt(ENCODE_NODE, "text", text)
        if clip is None:
            raise NodeInputError(ENCODE_NODE, "clip", "no CLIP: the checkpoint has no text encoder.")
        clip_family(clip, ENCODE_NODE, families=ENCODED_CLIP_FAMILIES)
        encoder = ComfyTextEncoder(clip)
        if init == "word":
            try:
                single_token_word(encoder, init_word)
            except ValueError as e:
                raise NodeInputError(ENCODE_NODE, "init_word", str(e)) from None
        if position == "start":  # a prompt that fills its first window leaves no room there
            try:
                encoder.tokens(text, LearnableTokens({k: torch.zeros(1, w) for k, w in encoder.token_widths.items()},
                                                     position))
            except ValueError as e:
                raise NodeInputError(ENCODE_NODE, "text", str(e)) from None
        conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        spec = PlaceholderSpec(clip, text, position, init, init_word, init_seed, encoded=conditioning[0][0])
        return io.NodeOutput(node_helpers.conditioning_set_values(conditioning, {PROMPT_TEXT_KEY: text,
                                                                                 SPEC_KEY: spec}))


MODEL_HELP = ("The diffusion model (SD1.x, SD2.x, SDXL and derivatives, a distilled few-step SDXL at cfg 1, "
              "SD3/SD3.5, Flux.1). It is not modified.")
POSITIVE_HELP = ("From 'MinorityPrompt Text Encode' (directly, or as 'conditioning_to' of Conditioning Concat): "
                 "one entry, without area, mask or timestep range.")
NEGATIVE_HELP = "The negative/unconditional conditioning; never changed."
CFG_HELP = "Classifier-free guidance scale (paper: 7.5 on SD1.5/SD2, 1.0 on SDXL-Lightning 4-step)."


def _settings_inputs() -> list:
    return [
        io.Int.Input("iterations", default=10, min=1, max=200,
                     tooltip="K: Adam steps on the token per optimized step (paper: 10; SDXL-Lightning demo: 3). "
                             "Each re-runs the text encoder and two conditional predictions with backward."),
        io.Float.Input("lr", default=0.01, min=1e-6, max=10.0, step=0.001, round=1e-6,
                       tooltip="Adam learning rate (paper: 0.01). Adam restarts at every optimized step; the "
                               "token carries over."),
        io.Float.Input("optimize_fraction", default=0.1, min=0.0, max=1.0, step=0.01,
                       tooltip="Optimize within this share of the steps that run, from the first (paper: first "
                               "10% of 50 steps from pure noise, t > 0.9T; SDXL-Lightning: 1.0 = all steps). "
                               "img2img (denoise < 1): the share of the executed steps, which start below the "
                               "highest noise, so the paper's t > 0.9T region is not reached; the report lists "
                               "each optimized step's sigma."),
        io.Int.Input("every_n_steps", default=1, min=1, max=1000,
                     tooltip="...and only every N-th step there (paper: 1)."),
        io.Float.Input("sg_lambda", default=1.0, min=0.0, max=100.0, step=0.01,
                       tooltip="lambda of the stop-gradient split J = ||sg(x0_t) - x0_s|| + lambda ||x0_t - "
                               "sg(x0_s)|| (paper: 1)."),
        io.Combo.Input("norm", options=list(NORMS), default="plain",
                       tooltip="plain: L2 distances, as the authors' code (default). squared: squared L2, as the "
                               "paper's text writes J."),
        io.Boolean.Input("anneal", default=True,
                         tooltip="Annealed re-noise level (authors' --dynamic_pr, on in their released commands): "
                                 "light re-noise at noisy steps, heavy at clean ones, through the sampler's sigmas "
                                 "and the model's own schedule; anneal_level says which. Off: fixed_level."),
        io.Float.Input("fixed_level", default=0.75, min=0.0, max=1.0, step=0.01,
                       tooltip="Re-noise level as a fraction of the schedule when anneal is off (authors: 0.75)."),
        io.Combo.Input("between_steps", options=list(BETWEEN_STEPS), default="keep",
                       tooltip="Conditioning on steps that are not optimized: keep = the last optimized token "
                               "(authors' code, default); original = the plain prompt (the paper's text)."),
        io.Boolean.Input("token_per_image", default=True,
                         tooltip="One placeholder per image of the batch, each optimized for its own image (as "
                                 "if generated alone). Off: one token shared by the batch."),
        io.Float.Input("diversity", default=0.0, min=0.0, max=100.0, step=0.01,
                       tooltip="With token_per_image: also push the images' x0 estimates apart (mean pairwise L2 "
                               "distance, weighted). 0 = off (paper)."),
        io.Boolean.Input("gradient_checkpointing", default=False,
                         tooltip="Recompute the diffusion model's activations during backward: less memory on "
                                 "large images, slower (both diffusion-model passes of an iteration run twice; "
                                 "the cost per optimized step: benchmarks/minority_cost.md)."),
        io.Boolean.Input("measure_gain", default=False,
                         tooltip="Also measure the objective at the starting and at the final token of each "
                                 "optimized step, on the same K noise draws the iterations used, and show it in "
                                 "the report (2K extra evaluations per step, no backward)."),
        io.Combo.Input("optimize", options=list(TARGETS), default="appended_token", optional=True,
                       tooltip="appended_token: the method. whole_embedding: the paper's ablation, which "
                               "optimizes the prompt's whole encoder output instead of one token (the paper "
                               "measured it losing 0.7 CLIPScore: the prompt's meaning drifts); no token to save."),
        io.Combo.Input("anneal_level", options=list(ANNEAL_LEVELS), default="next_step", optional=True,
                       tooltip="With anneal: next_step = re-noise to s = T - t_next, the next sampling step's "
                               "level (authors' code, default); this_step = s = T - t (the paper's text; a "
                               "step starting at t = T then re-noises to almost nothing and optimizes nothing)."),
    ]


def check_diversity(node: str, diversity: float, token_per_image: bool) -> None:
    if diversity > 0 and not token_per_image:
        raise NodeInputError(node, "diversity", "the diversity term needs token_per_image on.")


def validate_diversity(cls, diversity=None, token_per_image=None) -> bool | str:
    """Both nodes' validate_inputs: checked when the graph is queued."""
    return queued_check(cls, cls.DISPLAY_NAME, {"diversity": diversity, "token_per_image": token_per_image},
                        lambda **values: check_diversity(cls.DISPLAY_NAME, **values))


def build_guider(node, model, positive, negative, cfg, iterations, lr, optimize_fraction, every_n_steps, sg_lambda,
                 norm, anneal, fixed_level, between_steps, token_per_image, diversity, gradient_checkpointing,
                 measure_gain, optimize="appended_token", anneal_level="next_step") -> StepOptimizerGuider:
    family = model_family(model, node, families=CONDITIONING_FAMILIES)
    spec = spec_of(positive)
    if spec is None:
        raise NodeInputError(node, "positive", f"this conditioning has no placeholder: encode the prompt with "
                                               f"'{ENCODE_NODE}'.")
    entry = single_positive(node, positive, "MinorityPrompt")
    try:
        concatenated = spec.concatenated_tokens(entry[0])
    except ValueError as e:
        raise NodeInputError(node, "positive", str(e) + ".") from None
    text_family = clip_family(spec.clip, node, "positive", families=ENCODED_CLIP_FAMILIES)
    if text_family != family:
        raise NodeInputError(node, "positive", f"the prompt was encoded with a {text_family} CLIP but the model is "
                                               f"{family}; use the CLIP from the model's checkpoint.")
    check_diversity(node, diversity, token_per_image)
    try:
        settings = MinoritySettings(iterations=iterations, lr=lr, sg_lambda=sg_lambda, norm=norm, anneal=anneal,
                                    fixed_level=fixed_level, fraction=optimize_fraction, every=every_n_steps,
                                    between_steps=between_steps, diversity=diversity,
                                    checkpointing=gradient_checkpointing, target=optimize,
                                    anneal_level=anneal_level)
    except MinoritySettingsError as e:
        raise settings_input_error(node, e, SETTINGS_INPUTS) from None
    guider = minority_guider(model, cfg, settings, spec, per_image=token_per_image, probe=measure_gain,
                             concatenated=concatenated, node=node)
    guider.set_conds(positive, negative)
    return guider


class _UnifiedProgress:
    """One bar over sampler steps and inner iterations, with the sampler's latent previews."""

    def __init__(self, model, steps: int, inner_total: int):
        self.total = steps + inner_total
        self.bar = comfy.utils.ProgressBar(self.total)
        self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
        self.steps_done = self.inner_done = 0

    def inner(self, step, k, objective):
        self.inner_done += 1
        self.bar.update_absolute(self.steps_done + self.inner_done, self.total)

    def sampler(self, step, x0, x, total_steps):
        self.steps_done = step + 1
        preview = None
        if self.previewer is not None and x0 is not None:
            preview = self.previewer.decode_latent_to_preview_image("JPEG", x0)
        self.bar.update_absolute(self.steps_done + self.inner_done, self.total, preview)


def sample(guider, model, seed, sampler_name, sigmas, latent_image) -> tuple:
    """MinorityPrompt KSampler's run: one bar over steps and token iterations; latent, token and report."""
    n_steps = sigmas.shape[-1] - 1
    settings = guider.method.settings
    progress = _UnifiedProgress(model, n_steps, len(settings.steps(n_steps)) * settings.iterations)
    guider.method.on_iteration = progress.inner
    out = sample_like_ksampler(guider, model, seed, sampler_name, sigmas, latent_image, progress.sampler)
    return out, guider.last_run.token, guider.last_run.report()


OPTIONS = MethodOptions(
    socket=MinorityOptions, node_id="PromptOptim_MinorityOptions", display_name="MinorityPrompt Options",
    category=CATEGORY, all_inputs=_settings_inputs,
    names=("optimize_fraction", "every_n_steps", "sg_lambda", "norm", "anneal", "fixed_level", "between_steps",
           "token_per_image", "diversity", "gradient_checkpointing", "measure_gain", "optimize", "anneal_level"),
    description="The MinorityPrompt settings users rarely change (which steps are optimized, the objective's "
                "form, re-noise levels, per-image tokens, memory), for MinorityPrompt Guider / KSampler's "
                "'options' input. Every default is the authors' released setting.")

FACE = GuidedMethodFace(category=CATEGORY, model_help=MODEL_HELP, cfg_default=7.5,
                        cfg_help=CFG_HELP, positive_help=POSITIVE_HELP, negative_help=NEGATIVE_HELP,
                        settings_inputs=_settings_inputs, build_guider=build_guider,
                        validate_inputs=validate_diversity, sample=sample, options=OPTIONS)

GUIDER_DESCRIPTION = ("MinorityPrompt: at scheduled steps a placeholder token appended to the prompt is "
                      "optimized so the model's denoising of the current state becomes harder to reconstruct "
                      "under the plain prompt (a low-likelihood direction), then the step is taken with CFG and "
                      "that token. Reaches rarer images that keep the prompt's meaning. Use with "
                      "SamplerCustomAdvanced and any sampler and sigmas; more settings on 'MinorityPrompt Options'.")
SAMPLER_DESCRIPTION = ("KSampler with MinorityPrompt: same inputs and the same noise as KSampler, plus the "
                       "MinorityPrompt settings (see MinorityPrompt Guider; more on 'MinorityPrompt Options'). "
                       "Outputs the latent, the learned token (save it with 'Save MinorityPrompt Embedding') and a "
                       "report.")


def _sampler_node(class_name: str, node_id: str, compact: bool) -> type:
    return ksampler_node(
        FACE, class_name, node_id=node_id, display_name=SAMPLER_NODE, description=SAMPLER_DESCRIPTION,
        seed_help="Noise seed (the same noise as KSampler); also seeds the re-noise draws.",
        steps_help="Sampling steps (paper: 50 DDIM).", compact=compact,
        outputs=lambda: [io.Latent.Output(),
                         MinorityToken.Output(display_name="token", tooltip="The optimized placeholder (one row "
                                                                             "per image with token_per_image)."),
                         io.String.Output(display_name="report")])


MinorityGuiderNode = guider_node(FACE, "MinorityGuiderNode", node_id="PromptOptim_MinorityGuiderV2",
                                 display_name=GUIDER_NODE, description=GUIDER_DESCRIPTION)
MinoritySamplerNode = _sampler_node("MinoritySamplerNode", "PromptOptim_MinoritySamplerV2", compact=True)
MinorityOptionsNode = OPTIONS.node("MinorityOptionsNode", validate_inputs=validate_diversity)
# the first nodes, every setting shown: deprecated, kept so saved workflows load with their values
MinorityGuiderAllSettings = guider_node(FACE, "MinorityGuiderAllSettings", node_id="PromptOptim_MinorityGuider",
                                        display_name=GUIDER_NODE, description=GUIDER_DESCRIPTION, compact=False)
MinoritySamplerAllSettings = _sampler_node("MinoritySamplerAllSettings", "PromptOptim_MinoritySampler",
                                           compact=False)


class SaveMinorityEmbedding(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PromptOptim_SaveMinorityEmbedding",
            display_name=SAVE_NODE,
            category=CATEGORY,
            description="Saves a learned MinorityPrompt token as a textual-inversion embedding in models/embeddings "
                        "(safetensors; SDXL: one row per text encoder, clip_l and clip_g). Use it in any prompt "
                        "as embedding:name, placed where the token was (end: after the prompt).",
            inputs=[MinorityToken.Input("token", tooltip="From MinorityPrompt KSampler."),
                    io.String.Input("name", default="minority_token",
                                    tooltip="File name without extension; if taken, _00001, _00002... is added."),
                    io.Int.Input("image_index", default=0, min=0, max=4095,
                                 tooltip="Which image's token to save (token_per_image gives one per image).")],
            outputs=[io.String.Output(display_name="usage", tooltip="The prompt text that uses it, e.g. "
                                                                    "'a red square embedding:minority_token'.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, token, name, image_index) -> io.NodeOutput:
        if token is None:
            raise NodeInputError(SAVE_NODE, "token", "no token: the sampler ran no optimized step, or it optimized "
                                                     "the whole embedding (optimize = whole_embedding).")
        try:
            name = safe_embedding_name(name)
            tensors = token.embedding_file(image_index)
        except ValueError as e:
            raise NodeInputError(SAVE_NODE, "name", str(e)) from None
        except IndexError as e:
            raise NodeInputError(SAVE_NODE, "image_index", str(e)) from None
        folder = folder_paths.get_folder_paths("embeddings")[0]
        os.makedirs(folder, exist_ok=True)
        name = free_embedding_name(folder, name)
        safetensors.torch.save_file(tensors, os.path.join(folder, name + ".safetensors"),
                                    metadata={"prompt_optim": "MinorityPrompt", "position": token.position,
                                              "prompt": token.text})
        word = f"embedding:{name}"
        usage = f"{token.text} {word}" if token.position == "end" else f"{word} {token.text}"
        return io.NodeOutput(usage, ui=ui.PreviewText(usage))


NODES = [MinorityEncode, MinorityGuiderNode, MinoritySamplerNode, MinorityOptionsNode, SaveMinorityEmbedding,
         MinorityGuiderAllSettings, MinoritySamplerAllSettings]
