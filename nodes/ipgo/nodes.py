"""IPGO nodes: learn prefix/suffix tokens for a prompt (or a list), apply them to any prompt, save/load."""
from __future__ import annotations

import json
import os

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
import safetensors
import safetensors.torch
import torch
from comfy_api.latest import io, ui

from ...core.ipgo.optimize import BoundaryTokens, IpgoSettings, IpgoSettingsError, LearnedTokens, train
from ..comfy.errors import NodeInputError, require_prompt, settings_input_error
from ..comfy.model_family import (CONDITIONING_FAMILIES, ENCODED_CLIP_FAMILIES, SEQUENCE_CLIP_FAMILIES, clip_family,
                                  matching_families)
from ..comfy.method_options import MethodOptions
from ..comfy.socket_types import IpgoOptions, IpgoTokens, RewardModel
from ..comfy.step_guider import progress_text
from ..comfy.validation import queued_check
from ..conditioning.prompt_words import plain_words
from .render import IpgoRenderer
from .reward_curve import curve_image
from .sequences import encode_sequence

CATEGORY = "prompt_optim/ipgo"

OPTIMIZE_NODE = "IPGO Optimize Prompt Tokens"
APPLY_NODE = "IPGO Encode with Learned Tokens"
SAVE_NODE = "Save IPGO Tokens"
LOAD_NODE = "Load IPGO Tokens"
TOKENS_FOLDER = "ipgo_tokens"



def register_folder() -> None:
    folder_paths.add_model_folder_path(TOKENS_FOLDER, os.path.join(folder_paths.models_dir, TOKENS_FOLDER),
                                       is_default=True)


register_folder()


# core settings fields -> the optimizer's inputs, where the names differ
SETTINGS_INPUTS = {"lr": "learning_rate"}


def split_prompts(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _settings(node: str, **values) -> IpgoSettings:
    try:
        return IpgoSettings(**values)
    except IpgoSettingsError as e:
        raise settings_input_error(node, e, SETTINGS_INPUTS) from None


def _check_token_counts(steps: int, last_steps: int, prefix_tokens: int, suffix_tokens: int) -> None:
    if last_steps >= steps:
        raise NodeInputError(OPTIMIZE_NODE, "last_steps", f"must be fewer than steps ({steps}), got {last_steps}.")
    _check_token_sum(prefix_tokens, suffix_tokens)


def _check_token_sum(prefix_tokens: int, suffix_tokens: int) -> None:
    if prefix_tokens + suffix_tokens < 1:
        raise NodeInputError(OPTIMIZE_NODE, "prefix_tokens", "plus suffix_tokens must be at least 1, got "
                                                             f"{prefix_tokens} + {suffix_tokens}.")


def _optimize_settings_inputs() -> list:
    """IPGO Optimize's settings inputs, in the order the first node showed them."""
    return [
        io.String.Input("prompts", multiline=True, dynamic_prompts=False,
                        tooltip="One prompt, or several, one per line (batch-wise)."),
        io.String.Input("negative", default="", multiline=False,
                        tooltip="The unconditional text (paper: empty), cut to the prompt's length."),
        io.Int.Input("sampling_seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                     tooltip="Noise seed of every generation in the loop (the paper fixes one seed); the "
                             "same noise as KSampler with this seed."),
        io.Int.Input("steps", default=50, min=2, max=1000, tooltip="Sampling steps (paper: 50)."),
        io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                       tooltip="Classifier-free guidance scale (paper: 7.5)."),
        io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="lms",
                       tooltip="Sampler of the first steps-K steps (paper: LMS); the last K steps are "
                               "deterministic Euler steps so gradients can pass."),
        io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="normal",
                       tooltip="Sigma schedule (the paper's LMS schedule: normal)."),
        io.Int.Input("width", default=512, min=64, max=4096, step=8, tooltip="Image width (paper: 512)."),
        io.Int.Input("height", default=512, min=64, max=4096, step=8, tooltip="Image height (paper: 512)."),
        io.Int.Input("epochs", default=50, min=1, max=10000,
                     tooltip="Passes over the prompts (paper: 50 prompt-wise, 20 batch-wise)."),
        io.Float.Input("learning_rate", default=0.001, min=1e-6, max=1.0, step=0.0001, round=1e-6,
                       tooltip="Adam learning rate (paper: 0.001)."),
        io.Int.Input("lr_step", default=10, min=1, max=10000,
                     tooltip="Multiply the learning rate by lr_gamma every lr_step optimizer steps "
                             "(paper: 10 prompt-wise, 15 batch-wise)."),
        io.Float.Input("lr_gamma", default=0.9, min=0.01, max=1.0, step=0.01,
                       tooltip="Learning-rate decay factor (paper: 0.9 prompt-wise, 0.95 batch-wise)."),
        io.Int.Input("accumulation", default=4, min=1, max=1024,
                     tooltip="Prompt lists: prompts whose gradients are summed per optimizer step (paper: 4)."),
        io.Int.Input("prefix_tokens", default=10, min=0, max=37, tooltip="Learned tokens before the prompt "
                                                                          "(paper: 10)."),
        io.Int.Input("suffix_tokens", default=10, min=0, max=37, tooltip="Learned tokens after the prompt "
                                                                          "(paper: 10)."),
        io.Int.Input("rank", default=300, min=1, max=2048,
                     tooltip="Coefficients per token, m (paper: 300); the orthonormal basis maps them to "
                             "the conditioning width. At most that width."),
        io.Boolean.Input("rotation", default=False,
                         tooltip="Off (default): no rotation, what the authors' notebook runs (its slicing "
                                 "leaves no angles). On: the paper's text, two rotation angles per token."),
        io.Float.Input("conformity_weight", default=0.001, min=0.0, max=100.0, step=0.0001, round=1e-6,
                       tooltip="Weight of the penalty keeping the sequence's mean state near the prompt's "
                               "(paper: 0.001)."),
        io.Int.Input("last_steps", default=2, min=1, max=100,
                     tooltip="K: gradients flow through the last K sampling steps only (paper: 2). More is "
                             "slower and needs more memory."),
        io.Float.Input("clip_norm", default=1.0, min=0.0, max=1000.0, step=0.1,
                       tooltip="Gradient-norm clipping (paper: 1). 0 = off."),
        io.Int.Input("init_seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                     tooltip="Seed of the tokens' random initialization."),
    ]


def _optimize_outputs() -> list:
    return [
        IpgoTokens.Output(display_name="tokens", tooltip="The learned tokens: those of the best epoch (with several "
                                                         "optimizer steps per epoch, i.e. more prompts than "
                                                         "accumulation, the last ones). Use them with "
                                                         "'IPGO Encode with Learned Tokens' or save them."),
        io.Conditioning.Output(display_name="positive", tooltip="The first prompt with the learned tokens."),
        io.Conditioning.Output(display_name="negative",
                               tooltip="The matching negative: cut to the same length when prompt and tokens "
                                       "fit one 77-token window (the authors' way), else ComfyUI's own "
                                       "encoding of it."),
        io.Image.Output(display_name="best_images", tooltip="The images of the best epoch, one per prompt."),
        io.Image.Output(display_name="reward_curve", tooltip="Mean reward per epoch, best epoch circled."),
        io.String.Output(display_name="report"),
    ]


def optimize(node: str, model, clip, vae, reward, prompts, negative, sampling_seed, steps, cfg, sampler_name,
             scheduler, width, height, epochs, learning_rate, lr_step, lr_gamma, accumulation, prefix_tokens,
             suffix_tokens, rank, rotation, conformity_weight, last_steps, clip_norm, init_seed) -> io.NodeOutput:
    """The optimizer's run, whichever node (compact or with every setting) holds the settings."""
    texts = split_prompts(prompts or "")
    if not texts:
        require_prompt(node, "prompts", "")
    if clip is None or vae is None or reward is None:
        missing = "clip" if clip is None else "vae" if vae is None else "reward"
        raise NodeInputError(node, missing, f"no {missing} connected.")
    family = matching_families(model, clip, node, CONDITIONING_FAMILIES, ENCODED_CLIP_FAMILIES)
    whole = family in SEQUENCE_CLIP_FAMILIES.values()  # SD3 / Flux.1: the whole encoded sequence
    _check_token_counts(steps, last_steps, prefix_tokens, suffix_tokens)
    settings = _settings(node, prefix_tokens=prefix_tokens, suffix_tokens=suffix_tokens, rank=rank,
                         rotation=rotation, conformity_weight=conformity_weight, last_steps=last_steps,
                         epochs=epochs, lr=learning_rate, lr_step=lr_step, lr_gamma=lr_gamma,
                         clip_norm=clip_norm, accumulation=accumulation)
    sequences = []
    for text in texts:
        try:
            sequences.append(encode_sequence(clip, text, negative, prefix_tokens + suffix_tokens, whole))
        except ValueError as e:
            raise NodeInputError(node, "prompts", f"{text!r}: {e}.") from None
    reward_texts = [plain_words(text) for text in texts]  # the reward reads words, not ComfyUI's weight syntax
    width_c = sequences[0].states.shape[-1]
    try:
        with torch.inference_mode(False):  # ComfyUI runs nodes in inference mode; these are trained
            tokens = BoundaryTokens(width_c, settings, seed=init_seed)
    except IpgoSettingsError as e:
        raise NodeInputError(node, "rank", str(e)) from None

    latent = comfy.sample.fix_empty_latent_channels(
        model, torch.zeros(1, 4, height // 8, width // 8))
    seed = sampling_seed
    noise = comfy.sample.prepare_noise(latent, seed)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)
    sampler = comfy.samplers.sampler_object(sampler_name)
    renderer = IpgoRenderer(model, cfg, vae, reward, last_steps)
    device = model.load_device
    grad_scaling = device.type == "cuda" and model.model_dtype() == torch.float16
    bar = comfy.utils.ProgressBar(epochs * len(sequences))
    done = [0]

    def interrupt_check(*_):
        mm.throw_exception_if_processing_interrupted()

    def evaluate(index, cross_attn, backward):
        mm.throw_exception_if_processing_interrupted()
        seq = sequences[index]
        images = renderer.render(cross_attn, seq.pooled, seq.negative_conditioning(), reward_texts[index], noise,
                                 latent, sampler, sigmas, seed, backward, callback=interrupt_check)
        done[0] += 1
        bar.update_absolute(done[0], bar.total)
        return images

    constraint = {"orthonormality": 0.0, "in_range": True}

    def on_epoch(epoch, mean, lr):
        constraint["orthonormality"] = max(constraint["orthonormality"], tokens.orthonormality_error())
        constraint["in_range"] &= tokens.in_range()
        progress_text(f"IPGO epoch {epoch + 1}/{epochs}: {reward.label} {mean:.5g} (lr {lr:.3g})")

    with torch.inference_mode(False), torch.enable_grad():
        result = train(tokens, [s.states for s in sequences], evaluate, settings, grad_scaling=grad_scaling,
                       device_type=device.type, on_epoch=on_epoch,
                       is_cancel=lambda e: isinstance(e, mm.InterruptProcessingException))
    learned = result.tokens
    learned.info = {"family": family, "width": str(width_c), "prompts": json.dumps(texts),
                    "reward": reward.label, "negative": negative,
                    "settings": json.dumps(settings.__dict__), "best_epoch": str(result.best_epoch + 1),
                    "best_reward": f"{result.best_reward:.6g}"}
    images = torch.cat([result.best_outputs[i] for i in sorted(result.best_outputs)])
    report = _report(result, reward.label, len(texts), renderer.model_calls_with_grad, constraint,
                     single_step=len(texts) <= accumulation)
    curve = curve_image(result.curve, f"IPGO: mean {reward.label} per epoch", best=result.best_epoch)
    first = sequences[0]
    return io.NodeOutput(learned, first.positive_conditioning(learned), first.negative_conditioning(), images,
                         curve, report, ui=ui.PreviewText(report))




OPTIONS = MethodOptions(
    socket=IpgoOptions, node_id="PromptOptim_IPGOOptions", display_name="IPGO Options", category=CATEGORY,
    all_inputs=_optimize_settings_inputs,
    names=("sampler_name", "scheduler", "learning_rate", "lr_step", "lr_gamma", "accumulation", "prefix_tokens",
           "suffix_tokens", "rank", "rotation", "conformity_weight", "last_steps", "clip_norm", "init_seed"),
    description="The IPGO settings users rarely change (sampler, learning-rate schedule, token counts and rank, "
                "rotation, the conformity penalty, K last steps, clipping, init seed), for IPGO Optimize Prompt "
                "Tokens' 'options' input. Every default is the authors' prompt-wise setting.")

DESCRIPTION = ("IPGO: learns a few prefix and suffix tokens, injected around the prompt's encoded "
               "sequence, that raise a reward of the generated image. Each epoch generates every prompt "
               "with the same seed and back-propagates the reward through the VAE decode and the last "
               "K sampling steps. One prompt: prompt-wise (the authors' defaults). Several prompts (one "
               "per line): batch-wise, tokens that transfer to new prompts. The models are not changed.")


def _model_inputs() -> list:
    return [io.Model.Input("model", tooltip="The diffusion model (SD1.x, SD2.x, SDXL and derivatives, SD3/SD3.5, "
                                            "Flux.1). Not modified."),
            io.Clip.Input("clip", tooltip="The checkpoint's text encoder. It only encodes the prompts once."),
            io.Vae.Input("vae", tooltip="Decodes the generated latent for the reward (differentiably)."),
            RewardModel.Input("reward", tooltip="A differentiable reward (Load Reward Model).")]


class IpgoOptimize(io.ComfyNode):
    DISPLAY_NAME = OPTIMIZE_NODE

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="PromptOptim_IPGOOptimizeV2", display_name=OPTIMIZE_NODE, category=CATEGORY,
                         description=DESCRIPTION + " More settings on 'IPGO Options'.",
                         inputs=[*_model_inputs(), *OPTIONS.shown(), OPTIONS.socket_input()],
                         outputs=_optimize_outputs())

    @classmethod
    def execute(cls, model, clip, vae, reward, options=None, **shown) -> io.NodeOutput:
        return OPTIONS.call(OPTIMIZE_NODE, optimize, options, shown, OPTIMIZE_NODE, model, clip, vae, reward)


def _validate_token_counts(cls, prefix_tokens=None, suffix_tokens=None) -> bool | str:
    return queued_check(cls, cls.DISPLAY_NAME, {"prefix_tokens": prefix_tokens, "suffix_tokens": suffix_tokens},
                        _check_token_sum)


IpgoOptionsNode = OPTIONS.node("IpgoOptionsNode", validate_inputs=_validate_token_counts)


class IpgoOptimizeAllSettings(io.ComfyNode):
    """The first node, every setting shown: deprecated, kept so saved workflows load with their values."""
    DISPLAY_NAME = OPTIMIZE_NODE

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="PromptOptim_IPGOOptimize", display_name=OPTIMIZE_NODE, category=CATEGORY,
                         description=DESCRIPTION, inputs=[*_model_inputs(), *_optimize_settings_inputs()],
                         outputs=_optimize_outputs(), is_deprecated=True)

    @classmethod
    def validate_inputs(cls, steps=None, last_steps=None, prefix_tokens=None, suffix_tokens=None) -> bool | str:
        return queued_check(cls, OPTIMIZE_NODE, {"steps": steps, "last_steps": last_steps,
                                                 "prefix_tokens": prefix_tokens, "suffix_tokens": suffix_tokens},
                            _check_token_counts)

    @classmethod
    def execute(cls, model, clip, vae, reward, **settings) -> io.NodeOutput:
        return optimize(OPTIMIZE_NODE, model, clip, vae, reward, **settings)


def _report(result, label: str, prompts: int, grad_calls: int, constraint: dict, single_step: bool) -> str:
    mode = "prompt-wise" if prompts == 1 else f"batch-wise over {prompts} prompts"
    kept = "best" if single_step else "last: several optimizer steps per epoch"
    lines = [f"IPGO {mode}: {result.epochs_done} epochs, {result.optimizer_steps} optimizer steps"
             + (" (cancelled: returning the best so far)" if result.cancelled else ""),
             f"{label} per epoch: " + ", ".join(f"{v:.5g}" for v in result.curve),
             f"kept epoch {result.best_epoch + 1} ({kept}): {label} {result.best_reward:.5g}"]
    if result.skipped_steps:
        lines.append(f"{result.skipped_steps} steps skipped by the fp16 gradient scaler (non-finite gradients)")
    lines.append(f"after every epoch: max |W^T W - I| {constraint['orthonormality']:.2e}, coefficients and "
                 f"angles in range: {'yes' if constraint['in_range'] else 'NO'}")
    lines.append(f"diffusion-model calls with gradient: {grad_calls}")
    return "\n".join(lines)


class IpgoApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PromptOptim_IPGOApply",
            display_name=APPLY_NODE,
            category=CATEGORY,
            description="Encodes a prompt and wraps it with learned IPGO tokens: [prefix; prompt; suffix] in the "
                        "text encoder's output space, plus the matching negative (cut to the same length, as in "
                        "training). Works for prompts the tokens were not trained on.",
            inputs=[io.Clip.Input("clip", tooltip="The same family's text encoder as in training."),
                    IpgoTokens.Input("tokens", tooltip="From 'IPGO Optimize Prompt Tokens' or 'Load IPGO Tokens'."),
                    io.String.Input("text", multiline=True, dynamic_prompts=True, tooltip="Any prompt."),
                    io.String.Input("negative", default="", tooltip="Negative text (training used empty).")],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, clip, tokens, text, negative) -> io.NodeOutput:
        require_prompt(APPLY_NODE, "text", text)
        if clip is None:
            raise NodeInputError(APPLY_NODE, "clip", "no CLIP: the checkpoint has no text encoder.")
        family = clip_family(clip, APPLY_NODE, families=ENCODED_CLIP_FAMILIES)
        trained = tokens.info.get("family")
        if trained and trained != family:
            raise NodeInputError(APPLY_NODE, "tokens", f"these tokens were learned on {trained}; this CLIP is "
                                                       f"{family}.")
        added = tokens.prefix.shape[0] + tokens.suffix.shape[0]
        try:
            seq = encode_sequence(clip, text, negative, added, whole=family in SEQUENCE_CLIP_FAMILIES.values())
        except ValueError as e:
            raise NodeInputError(APPLY_NODE, "text", str(e) + ".") from None
        if seq.states.shape[-1] != tokens.width:
            raise NodeInputError(APPLY_NODE, "tokens", f"the tokens are {tokens.width} wide, this text encoder's "
                                                       f"output {seq.states.shape[-1]}.")
        return io.NodeOutput(seq.positive_conditioning(tokens), seq.negative_conditioning())


class SaveIpgoTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PromptOptim_SaveIPGOTokens",
            display_name=SAVE_NODE,
            category=CATEGORY,
            description=f"Saves learned IPGO tokens as safetensors in models/{TOKENS_FOLDER} (with the prompts, "
                        "reward and settings as metadata).",
            inputs=[IpgoTokens.Input("tokens", tooltip="From 'IPGO Optimize Prompt Tokens'."),
                    io.String.Input("name", default="ipgo_tokens",
                                    tooltip="File name without extension; if taken, _00001, _00002... is added.")],
            outputs=[io.String.Output(display_name="file")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, tokens, name) -> io.NodeOutput:
        name = (name or "").strip()
        if not name or any(c in name for c in '/\\:*?"<>|') or name.startswith("."):
            raise NodeInputError(SAVE_NODE, "name", f"{name!r} is not a plain file name.")
        folder = folder_paths.get_folder_paths(TOKENS_FOLDER)[0]
        os.makedirs(folder, exist_ok=True)
        candidate, n = name, 0
        while os.path.exists(os.path.join(folder, candidate + ".safetensors")):
            n += 1
            candidate = f"{name}_{n:05d}"
        path = os.path.join(folder, candidate + ".safetensors")
        metadata = {"prompt_optim": "IPGO", **{k: str(v) for k, v in tokens.info.items()}}
        safetensors.torch.save_file(tokens.tensors(), path, metadata=metadata)
        file = candidate + ".safetensors"
        return io.NodeOutput(file, ui=ui.PreviewText(f"saved {file} in {folder}"))


class LoadIpgoTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PromptOptim_LoadIPGOTokens",
            display_name=LOAD_NODE,
            category=CATEGORY,
            description=f"Loads IPGO tokens saved in models/{TOKENS_FOLDER}.",
            inputs=[io.Combo.Input("tokens_name", options=folder_paths.get_filename_list(TOKENS_FOLDER),
                                   tooltip=f"A .safetensors file in models/{TOKENS_FOLDER}.")],
            outputs=[IpgoTokens.Output(display_name="tokens")],
        )

    @classmethod
    def execute(cls, tokens_name) -> io.NodeOutput:
        path = folder_paths.get_full_path(TOKENS_FOLDER, tokens_name) if tokens_name else None
        if path is None:
            roots = ", ".join(folder_paths.get_folder_paths(TOKENS_FOLDER))
            raise NodeInputError(LOAD_NODE, "tokens_name", f"{tokens_name!r} not found in {roots}.")
        try:
            tensors = safetensors.torch.load_file(path)
            with safetensors.safe_open(path, framework="pt") as f:
                info = dict(f.metadata() or {})
            info.pop("prompt_optim", None)
            return io.NodeOutput(LearnedTokens.from_tensors(tensors, info))
        except Exception as e:  # a corrupt or foreign file: say which and why
            raise NodeInputError(LOAD_NODE, "tokens_name", f"cannot read {path}: {e}") from None


NODES = [IpgoOptimize, IpgoOptionsNode, IpgoApply, SaveIpgoTokens, LoadIpgoTokens, IpgoOptimizeAllSettings]
