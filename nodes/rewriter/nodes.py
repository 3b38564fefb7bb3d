"""GFlowNet Prompt Rewriter node: N rewrites of a prompt from a rewriter policy, as a list of prompts.

The policy sits in a ModelPatcher (as the reward models do) so ComfyUI's memory manager loads it on
the compute device for generation and may offload it afterwards. Loaded policies are kept per folder
(and file time), so re-running a workflow does not read the weights again.
"""
from __future__ import annotations

from pathlib import Path

import torch
from comfy_api.latest import io, ui

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils

from ...core.gfn_rewriter import templates
from ...core.gfn_rewriter.policy_folder import LAYOUT, PolicyFolderError, load_policy, weights_file
from ...core.gfn_rewriter.rewrite import MODES, UNIQUE_TRIES, RewriteSettings, rewrite
from ...core.gfn_rewriter.trajectories import DEFAULT_TEMPLATE
from ...core.shared.settings_error import SettingsError
from ..comfy.errors import NodeInputError, require_prompt, settings_input_error
from ..comfy.module_holder import managed_patcher
from ..comfy.reward import compute_dtype
from ..comfy.method_options import MethodOptions
from ..comfy.socket_types import RewriterOptions
from ..comfy.validation import queued_check
from . import folder as rewriter_folder

CATEGORY = "prompt_optim/rewriter"

NODE = "GFlowNet Prompt Rewriter"
NO_ENTRIES = "(no folders in models/prompt_rewriters)"


_loaded: dict[tuple[str, float, str], tuple[comfy.model_patcher.ModelPatcher, object]] = {}


def load_rewriter(folder: Path, dtype_choice: str):
    """(ModelPatcher around the policy, tokenizer); cached per folder, weights file time and dtype."""
    weights = weights_file(folder)
    stamp = weights.stat().st_mtime if weights is not None else 0.0
    key = (str(folder.resolve()), stamp, dtype_choice)
    if key not in _loaded:
        load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
        with torch.inference_mode(False):
            model, tokenizer = load_policy(folder, offload_device, compute_dtype(dtype_choice, load_device))
        patcher = managed_patcher(model, load_device, offload_device)
        _loaded.clear()  # one policy at a time; the memory manager handles the rest
        _loaded[key] = (patcher, tokenizer)
    return _loaded[key]


def _settings(template_preset: str = templates.CUSTOM, **values) -> RewriteSettings:
    """RewriteSettings with the preset's template (the `template` input for custom) and rewrite text."""
    template, keep_prompt = templates.resolve(template_preset, values.pop("template", DEFAULT_TEMPLATE))
    return RewriteSettings(template=template, keep_prompt=keep_prompt, **values)


def _check_settings(**values) -> None:
    """The settings the core checks across fields (token counts) or by content (the template)."""
    try:
        _settings(**values)
    except SettingsError as e:
        raise settings_input_error(NODE, e) from None


DESCRIPTION = ("Rewrites a prompt N times with a GFlowNet-trained language model (Yun et al., CVPR 2025), "
               "which samples diverse, high-reward rewrites, or with a published GPT-2 rewriter (Promptist, "
               "MagicPrompt: see template_preset). The list output runs the downstream nodes once "
               "per rewrite (e.g. CLIP Text Encode -> KSampler), giving a batch of different images. "
               "Train a policy with `python -m core.gfn_rewriter.train` (see docs/gfn_rewriter.md).")


def _rewriter_inputs() -> list:
    """The rewriter's inputs, in the order the first node showed them."""
    entries = rewriter_folder.REWRITERS.list_entries() or [NO_ENTRIES]
    return [
        io.Combo.Input("policy", options=entries,
                       tooltip="A rewriter folder in ComfyUI/models/prompt_rewriters: " + LAYOUT + "."),
        io.String.Input("prompt", multiline=True, default="",
                        tooltip="The prompt to rewrite. One prompt per line gives count rewrites of each, "
                                "in order."),
        io.Int.Input("count", default=16, min=1, max=64,
                     tooltip="Rewrites per prompt (the authors' evaluation: 16)."),
        io.Combo.Input("mode", options=list(MODES), default="diverse_beam_search",
                       tooltip="diverse_beam_search (default, the authors' evaluation): count beams in count "
                               "groups with a diversity and a length penalty; deterministic, no seed. "
                               "sampling: seeded sampling (temperature, top_p)."),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=True,
                     tooltip="Sampling seed: rewrite i uses seed + i, so the same seed gives the same rewrites."),
        io.Float.Input("temperature", default=1.0, min=0.05, max=5.0, step=0.05,
                       tooltip="Sampling temperature (sampling mode)."),
        io.Float.Input("top_p", default=0.9, min=0.05, max=1.0, step=0.01,
                       tooltip="Nucleus sampling: keep the most likely tokens up to this probability mass "
                               "(1.0 = off)."),
        io.Int.Input("min_new_tokens", default=15, min=0, max=512,
                     tooltip="The rewrite cannot end before this many tokens (paper: 15)."),
        io.Int.Input("max_new_tokens", default=75, min=1, max=512,
                     tooltip="Longest rewrite in tokens (paper: 75)."),
        io.Float.Input("diversity_penalty", default=1.0, min=0.0, max=10.0, step=0.1,
                       tooltip="Diverse beam search: how strongly groups avoid tokens earlier groups "
                               "picked at the same step (authors and paper: 1.0)."),
        io.String.Input("template", default=DEFAULT_TEMPLATE, multiline=True,
                        tooltip="What the policy reads; {prompt} is replaced by the prompt. Use the "
                                "template the policy was trained with."),
        io.Combo.Input("dtype", options=["auto", "fp32", "fp16", "bf16"], default="fp32",
                       tooltip="Precision of the policy. fp32 (default) as the authors' evaluation; auto: "
                               "fp32 on CPU, half precision on GPU (less memory, rewrites may differ)."),
        io.Float.Input("length_penalty", default=-1.0, optional=True, min=-5.0, max=5.0, step=0.1,
                       tooltip="Diverse beam search: a finished rewrite scores (sum of log-probabilities) / "
                               "length ** length_penalty. The authors' evaluation: -1.0 (favours short "
                               "rewrites); 1.0 is the per-token average."),
        io.Boolean.Input("unique", default=False, optional=True,
                         tooltip="Off (the authors' evaluation): two rewrites can read the same (a policy "
                                 "that is sure of one rewrite repeats it). On: duplicates are dropped and "
                                 f"more drawn, up to {UNIQUE_TRIES} x count tries; the node says when fewer "
                                 "distinct rewrites exist."),
        io.Combo.Input("template_preset", options=list(templates.TEMPLATE_PRESETS), default=templates.CUSTOM,
                       optional=True,
                       tooltip="How the policy reads the prompt, by the rewriter it is: "
                               + "; ".join(f"{name}: {p.template!r} ({p.models})" if p.template is not None
                                           else f"{name} (default): {p.models}"
                                           for name, p in templates.TEMPLATE_PRESETS.items())
                               + ". A preset other than custom ignores the template input."),
    ]


def _rewriter_outputs() -> list:
    return [
        io.String.Output(display_name="rewrites", is_output_list=True,
                         tooltip="One prompt per rewrite, as a list: each downstream node runs once per item."),
        io.String.Output(display_name="text", tooltip="All rewrites, one per line (line breaks inside a rewrite "
                         "become spaces): e.g. into CLIP Text Encode, One Image per Line to sample them "
                         "in one batch."),
    ]


def run_rewriter(policy, prompt, count, mode, seed, temperature, top_p, min_new_tokens, max_new_tokens,
                 diversity_penalty, template, dtype, length_penalty=-1.0, unique=False,
                 template_preset=templates.CUSTOM) -> io.NodeOutput:
    """The rewriter's run, whichever node (compact or with every setting) holds the settings."""
    prompts = [line.strip() for line in require_prompt(NODE, "prompt", prompt).splitlines() if line.strip()]
    folder = rewriter_folder.REWRITERS.resolve(policy) if policy != NO_ENTRIES else None
    if folder is None:
        raise NodeInputError(NODE, "policy", f"'{policy}' was not found; put {LAYOUT} in "
                             f"{rewriter_folder.REWRITERS.expected_location()}.")
    try:
        settings = _settings(template_preset, count=count, mode=mode, seed=seed, temperature=temperature,
                             top_p=top_p, min_new_tokens=min_new_tokens, max_new_tokens=max_new_tokens,
                             diversity_penalty=diversity_penalty, length_penalty=length_penalty,
                             template=template, unique=unique)
    except SettingsError as e:
        raise settings_input_error(NODE, e) from None
    try:
        patcher, tokenizer = load_rewriter(folder, dtype)
    except PolicyFolderError as e:
        raise NodeInputError(NODE, "policy", str(e)) from e
    mm.load_models_gpu([patcher])
    model = patcher.model.module
    generations = len(prompts) * (1 if mode == "diverse_beam_search" else count)
    bar = comfy.utils.ProgressBar(generations)

    def between():
        bar.update(1)
        mm.throw_exception_if_processing_interrupted()

    rewrites, short = [], []
    for p in prompts:
        mm.throw_exception_if_processing_interrupted()
        found = rewrite(model, tokenizer, p, settings, between, mm.throw_exception_if_processing_interrupted)
        if len(found) < count:
            short.append(f"note: only {len(found)} distinct rewrites of {p!r} (asked for {count})")
        rewrites += found
    # one line per rewrite, so a line-per-prompt node downstream sees exactly `count` prompts per input line
    text = "\n".join(" ".join(r.split()) for r in rewrites)
    return io.NodeOutput(rewrites, text, ui=ui.PreviewText("\n".join([text, *short])))


OPTIONS = MethodOptions(
    socket=RewriterOptions, node_id="PromptOptim_RewriterOptions", display_name="Prompt Rewriter Options",
    category=CATEGORY, all_inputs=_rewriter_inputs,
    names=("temperature", "top_p", "min_new_tokens", "max_new_tokens", "diversity_penalty", "template", "dtype",
           "length_penalty", "unique"),
    description="The rewriter's generation settings users rarely change (sampling temperature and top_p, rewrite "
                "length, the diverse beam search penalties, the custom template, precision, duplicates), for the "
                "GFlowNet Prompt Rewriter's 'options' input. Every default is the authors' evaluation setting.")


class GFlowNetRewriter(io.ComfyNode):
    DISPLAY_NAME = NODE

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="PromptOptim_GFlowNetRewriterV2", display_name=NODE, category=CATEGORY,
                         description=DESCRIPTION + " More settings on 'Prompt Rewriter Options'.",
                         inputs=[*OPTIONS.shown(), OPTIONS.socket_input()], outputs=_rewriter_outputs(),
                         is_output_node=True)  # shows the rewrites on the node even when nothing reads them

    @classmethod
    def execute(cls, options=None, **shown) -> io.NodeOutput:
        return OPTIONS.call(NODE, run_rewriter, options, shown)


def _validate_lengths(cls, min_new_tokens=None, max_new_tokens=None) -> bool | str:
    """The options node's queue-time check: the token counts (the template is checked with its preset)."""
    return queued_check(cls, cls.DISPLAY_NAME, {"min_new_tokens": min_new_tokens, "max_new_tokens": max_new_tokens},
                        lambda **counts: _check_settings(**counts))


RewriterOptionsNode = OPTIONS.node("RewriterOptionsNode", validate_inputs=_validate_lengths)


class GFlowNetRewriterAllSettings(io.ComfyNode):
    """The first node, every setting shown: deprecated, kept so saved workflows load with their values."""
    DISPLAY_NAME = NODE

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="PromptOptim_GFlowNetRewriter", display_name=NODE, category=CATEGORY,
                         description=DESCRIPTION, inputs=_rewriter_inputs(), outputs=_rewriter_outputs(),
                         is_output_node=True, is_deprecated=True)

    @classmethod
    def validate_inputs(cls, min_new_tokens=None, max_new_tokens=None, template=None,
                        template_preset=templates.CUSTOM) -> bool | str:
        return queued_check(cls, NODE, {"min_new_tokens": min_new_tokens, "max_new_tokens": max_new_tokens,
                                        "template": template, "template_preset": template_preset}, _check_settings)

    @classmethod
    def execute(cls, **settings) -> io.NodeOutput:
        return run_rewriter(**settings)


NODES = [GFlowNetRewriter, RewriterOptionsNode, GFlowNetRewriterAllSettings]
