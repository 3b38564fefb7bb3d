"""A guided method's two nodes, made in one place: its GUIDER node (CFGGuider's inputs plus the method's
settings) and its KSampler node (KSampler's inputs plus the same settings), both from a `GuidedMethodFace`.

The KSampler nodes are core KSampler with the method's guider in place of CFGGuider: the same inputs (so
a user swaps one for the other), the same noise for a seed (comfy.sample.prepare_noise, batch_index
honoured) and the same sigmas (comfy.samplers.KSampler with denoise), the latent's noise mask passed on,
and the output latent as KSampler returns it. A method supplies only what differs: its settings inputs,
how it builds its guider, its queue-time check, and how its KSampler reports (progress and outputs).

With `options` (method_options.MethodOptions) the nodes are compact: the rarely changed settings come from
the method's options node through an optional `options` input. `compact=False` makes the earlier nodes
that show every setting, kept deprecated for saved workflows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
from comfy_api.latest import io

from .method_options import MethodOptions, reads_only
from .step_guider import check_finite_latent

LATENT_HELP = "The latent to denoise (Empty Latent Image for txt2img)."
DENOISE_HELP = "As in KSampler: below 1 only the last part of the schedule runs."


def guider_inputs(*, model_help: str, cfg_default: float, cfg_help: str, positive_help: str,
                  negative_help: str) -> list:
    """A method guider's first inputs, as CFGGuider's: model, positive, negative, cfg."""
    return [io.Model.Input("model", tooltip=model_help),
            io.Conditioning.Input("positive", tooltip=positive_help),
            io.Conditioning.Input("negative", tooltip=negative_help),
            io.Float.Input("cfg", default=cfg_default, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=cfg_help)]


def ksampler_inputs(*, model_help: str, seed_help: str, steps_help: str, cfg_default: float, cfg_help: str,
                    positive_help: str, negative_help: str) -> list:
    """KSampler's inputs in KSampler's order, with the method's defaults and tooltips."""
    return [
        io.Model.Input("model", tooltip=model_help),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=seed_help),
        io.Int.Input("steps", default=50, min=1, max=10000, tooltip=steps_help),
        io.Float.Input("cfg", default=cfg_default, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=cfg_help),
        io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="ddim",
                       tooltip="Any ComfyUI sampler (paper: DDIM)."),
        io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="ddim_uniform",
                       tooltip="Any ComfyUI scheduler (DDIM's own spacing: ddim_uniform)."),
        io.Conditioning.Input("positive", tooltip=positive_help),
        io.Conditioning.Input("negative", tooltip=negative_help),
        io.Latent.Input("latent_image", tooltip=LATENT_HELP),
        io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, tooltip=DENOISE_HELP),
    ]


@dataclass(frozen=True)
class GuidedMethodFace:
    """What a method's guider node and its KSampler node share.

    build_guider(node, model, positive, negative, cfg, **settings) -> the method's guider, conds set;
    validate_inputs(cls, <the inputs it checks>=None, ...) -> True or a message: becomes both nodes'
    `validate_inputs` as it is, since ComfyUI reads that signature to know which widget values to pass;
    sample(guider, model, seed, sampler_name, sigmas, latent_image) -> the KSampler node's outputs.
    """

    category: str
    model_help: str
    cfg_default: float
    cfg_help: str
    positive_help: str
    negative_help: str
    settings_inputs: Callable[[], list]
    build_guider: Callable[..., Any]
    validate_inputs: Callable[..., bool | str]
    sample: Callable[..., tuple]
    options: MethodOptions | None = None

    def settings(self, compact: bool) -> list:
        """The settings inputs a node shows: all of them, or (compact) the shown ones and the options socket."""
        if not compact or self.options is None:
            return self.settings_inputs()
        return [*self.options.shown(), self.options.socket_input()]

    def guider_schema(self, *, node_id: str, display_name: str, description: str, compact: bool) -> io.Schema:
        return io.Schema(
            node_id=node_id, display_name=display_name, category=self.category, description=description,
            inputs=[*guider_inputs(model_help=self.model_help, cfg_default=self.cfg_default, cfg_help=self.cfg_help,
                                   positive_help=self.positive_help, negative_help=self.negative_help),
                    *self.settings(compact)],
            outputs=[io.Guider.Output()], is_deprecated=not compact and self.options is not None)

    def ksampler_schema(self, *, node_id: str, display_name: str, description: str, seed_help: str,
                        steps_help: str, outputs: list, compact: bool) -> io.Schema:
        return io.Schema(
            node_id=node_id, display_name=display_name, category=self.category, description=description,
            inputs=[*ksampler_inputs(model_help=self.model_help, seed_help=seed_help, steps_help=steps_help,
                                     cfg_default=self.cfg_default, cfg_help=self.cfg_help,
                                     positive_help=self.positive_help, negative_help=self.negative_help),
                    *self.settings(compact)],
            outputs=outputs, is_deprecated=not compact and self.options is not None)

    def build(self, node: str, model, positive, negative, cfg, settings: dict, compact: bool):
        """The guider, with a compact node's options merged over their defaults."""
        if not compact or self.options is None:
            return self.build_guider(node, model, positive, negative, cfg, **settings)
        shown = dict(settings)
        return self.options.call(node, self.build_guider, shown.pop("options", None), shown,
                                 node, model, positive, negative, cfg)


def ksampler_sigmas(model, steps: int, sampler_name: str, scheduler: str, denoise: float):
    """The sigmas KSampler would run for these settings."""
    return comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                   scheduler=scheduler, denoise=denoise, model_options=model.model_options).sigmas


def sample_like_ksampler(guider, model, seed: int, sampler_name: str, sigmas, latent_image: dict,
                         callback: Callable) -> dict:
    """Run `guider` on KSampler's noise for `seed`; the output latent as KSampler returns it."""
    latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
    noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
    samples = guider.sample(noise, latent, comfy.samplers.sampler_object(sampler_name), sigmas,
                            denoise_mask=latent_image.get("noise_mask"), callback=callback,
                            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    out = latent_image.copy()
    out["samples"] = samples.to(mm.intermediate_device())
    out.pop("downscale_ratio_spacial", None)
    return out


def _node_class(class_name: str, display_name: str, description: str, face: GuidedMethodFace, define_schema,
                execute, compact: bool) -> type:
    # DISPLAY_NAME: the name errors speak of (the face's validate_inputs reads it from the class); the class
    # lives in the method's own nodes module, as if written there
    attributes = {"__module__": face.build_guider.__module__, "__doc__": description, "DISPLAY_NAME": display_name,
                  "define_schema": classmethod(define_schema), "execute": classmethod(execute)}
    on_options_node = compact and face.options is not None and reads_only(face.validate_inputs, face.options.names)
    if not on_options_node:
        attributes["validate_inputs"] = classmethod(face.validate_inputs)
    return type(class_name, (io.ComfyNode,), attributes)


def guider_node(face: GuidedMethodFace, class_name: str, *, node_id: str, display_name: str,
                description: str, compact: bool = True) -> type:
    """The method's GUIDER node, for SamplerCustomAdvanced."""
    def define_schema(cls) -> io.Schema:
        return face.guider_schema(node_id=node_id, display_name=display_name, description=description,
                                  compact=compact)

    def execute(cls, model, positive, negative, cfg, **settings) -> io.NodeOutput:
        return io.NodeOutput(face.build(display_name, model, positive, negative, cfg, settings, compact))

    return _node_class(class_name, display_name, description, face, define_schema, execute, compact)


def ksampler_node(face: GuidedMethodFace, class_name: str, *, node_id: str, display_name: str, description: str,
                  seed_help: str, steps_help: str, outputs: Callable[[], list], compact: bool = True) -> type:
    """The method's KSampler node: KSampler's noise and sigmas, then the method's guider. `outputs` makes
    the node's outputs (fresh objects for each schema, as the inputs are)."""
    def define_schema(cls) -> io.Schema:
        return face.ksampler_schema(node_id=node_id, display_name=display_name, description=description,
                                    seed_help=seed_help, steps_help=steps_help, outputs=outputs(), compact=compact)

    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise,
                **settings) -> io.NodeOutput:
        guider = face.build(display_name, model, positive, negative, cfg, settings, compact)
        check_finite_latent(display_name, "input 'latent_image'", latent_image["samples"], guider.method.name)
        sigmas = ksampler_sigmas(model, steps, sampler_name, scheduler, denoise)
        return io.NodeOutput(*face.sample(guider, model, seed, sampler_name, sigmas, latent_image))

    return _node_class(class_name, display_name, description, face, define_schema, execute, compact)
