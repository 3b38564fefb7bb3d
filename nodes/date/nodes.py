"""DATE nodes: a GUIDER for SamplerCustomAdvanced and a KSampler-like node."""
from __future__ import annotations

import latent_preview
from comfy_api.latest import io

from ...core.date.update import RULES, SCHEDULES, DateSettings, DateSettingsError, UpdateSchedule
from ..comfy.errors import NodeInputError, settings_input_error
from ..comfy.guided_method import GuidedMethodFace, guider_node, ksampler_node, sample_like_ksampler
from ..comfy.model_family import CONDITIONING_FAMILIES, model_family
from ..comfy.method_options import MethodOptions
from ..comfy.socket_types import DateOptions, RewardModel
from ..comfy.step_guider import StepOptimizerGuider, single_positive
from ..comfy.validation import queued_check
from ..conditioning.keep_text import ENCODE_NODE, stored_prompt
from ..conditioning.prompt_words import plain_words
from .guider import date_guider

CATEGORY = "prompt_optim/date"

GUIDER_NODE = "DATE Guider"
SAMPLER_NODE = "DATE KSampler"

RULE_HELP = ("cumulative: c = c + rho * g/||g||, updates add up (the authors' released code, default). "
             "paper: c = c_original + rho * g/||g|| at every update (the paper's text), so the embedding stays "
             "at distance rho from the prompt's own however many updates run.")
SCHEDULE_HELP = ("Which steps update the embedding, read with schedule_value: every_k_steps '10' -> steps "
                 "0, 10, 20, ... ('1' = every step); percent_of_steps '10' -> 10% of the steps, evenly "
                 "spaced; step_list '0, 5, 20-24' (ranges inclusive, step 0 is the first); sigma_range "
                 "'1.0-6.0' -> steps starting at a sigma in that range. Paper: every 10th of 50 steps "
                 "('10% update') or every step.")

# core settings fields -> this node's inputs, where the names differ (UpdateSchedule's kind and value)
SETTINGS_INPUTS = {"kind": "schedule", "value": "schedule_value"}
MODEL_HELP = ("The diffusion model (SD1.x, SD2.x, SDXL and derivatives, SD3/SD3.5, Flux.1). It is not "
              "modified.")
POSITIVE_HELP = ("The prompt's conditioning; DATE updates a copy of its token states (concatenated ones "
                 "included). One entry, without area, mask or timestep range.")
NEGATIVE_HELP = "The negative/unconditional conditioning; DATE never changes it."
CFG_HELP = ("Classifier-free guidance scale (the authors' released commands: --w=8; their script's default: "
            "7.5). The reward sees the guided x0 estimate.")


def _date_inputs() -> list:
    return [
        io.Vae.Input("vae", tooltip="Decodes the x0 estimate for the reward. A TAESD (Load VAE -> taesd / "
                                   "taesdxl) is much cheaper and slightly less faithful; see decode_scale."),
        RewardModel.Input("reward", tooltip="The reward to raise (Load Reward Model, or Combine "
                                                          "Rewards for a weighted sum)."),
        io.Float.Input("rho", default=0.5, min=0.001, max=100.0, step=0.01,
                       tooltip="Update size: the Frobenius norm of each update of the token states "
                               "(the authors' README commands: 0.5; their script's default: 0.1)."),
        io.Combo.Input("rule", options=list(RULES), default="cumulative", tooltip=RULE_HELP),
        io.Combo.Input("schedule", options=list(SCHEDULES), default="every_k_steps", tooltip=SCHEDULE_HELP),
        io.String.Input("schedule_value", default="10", tooltip=SCHEDULE_HELP),
        io.Int.Input("iterations", default=1, min=1, max=20,
                     tooltip="Gradient steps per update step (authors: 1). Each costs one conditional "
                             "prediction, a VAE decode and a reward pass with backward."),
        io.Float.Input("prior_weight", default=0.0, min=0.0, max=1e6, step=0.01,
                       tooltip="Optional penalty w * mean((c_original - c)^2) that keeps the embedding near "
                               "the prompt's (authors' code, default 0 = off)."),
        io.Combo.Input("decode_scale", options=["1.0", "0.5", "0.25"], default="1.0",
                       tooltip="Decode a downscaled latent for the reward: 0.5 costs about a quarter of the "
                               "decode memory and time, and the reward sees a blurrier picture."),
        io.String.Input("reward_prompt", default="", optional=True,
                        tooltip="Text the reward scores against. Empty: the text stored by 'CLIP Text Encode, "
                                "keep text' in the positive conditioning. The reward reads plain words: ComfyUI's "
                                "weights, e.g. (red:1.3), become red, and embedding:name is left out."),
    ]


def _reward_prompt(node: str, positive, given: str | None) -> str:
    """The words the reward scores against: ComfyUI's weight syntax and embedding names removed."""
    if given and given.strip():
        text = given
    else:
        text = stored_prompt(positive)
        if text is None:
            raise NodeInputError(node, "reward_prompt", "empty, and the positive conditioning carries no text: type "
                                                        "the prompt here or encode it with '" + ENCODE_NODE + "'.")
    words = plain_words(text)
    if not words:
        raise NodeInputError(node, "reward_prompt", f"{text!r} has no words for the reward once ComfyUI's weights "
                                                    "and embedding names are removed; type the prompt's words here.")
    return words


def update_schedule(node: str, schedule: str, schedule_value: str) -> UpdateSchedule:
    try:
        return UpdateSchedule(schedule, schedule_value)
    except DateSettingsError as e:
        raise settings_input_error(node, e, SETTINGS_INPUTS, fallback="schedule_value") from None


def validate_schedule(cls, schedule=None, schedule_value=None) -> bool | str:
    """Both nodes' validate_inputs: the schedule is read when the graph is queued."""
    return queued_check(cls, cls.DISPLAY_NAME, {"schedule": schedule, "schedule_value": schedule_value},
                        lambda **values: update_schedule(cls.DISPLAY_NAME, **values))


def build_guider(node: str, model, positive, negative, cfg, vae, reward, rho, rule, schedule, schedule_value,
                 iterations, prior_weight, decode_scale, reward_prompt=None) -> StepOptimizerGuider:
    model_family(model, node, families=CONDITIONING_FAMILIES)  # refuses families whose gradients are unverified
    single_positive(node, positive, "DATE")
    if vae is None:
        raise NodeInputError(node, "vae", "no VAE connected; the reward needs decoded images.")
    try:
        settings = DateSettings(rho=rho, rule=rule, prior_weight=prior_weight, iterations=iterations)
    except DateSettingsError as e:
        raise settings_input_error(node, e, SETTINGS_INPUTS) from None
    plan = update_schedule(node, schedule, schedule_value)
    text = _reward_prompt(node, positive, reward_prompt)
    guider = date_guider(model, cfg, settings, plan, reward, vae, text, decode_scale=float(decode_scale), node=node)
    guider.set_conds(positive, negative)
    return guider


def sample(guider, model, seed, sampler_name, sigmas, latent_image) -> tuple:
    """DATE KSampler's run: the sampler's own progress and previews; the latent and the reward report."""
    callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
    out = sample_like_ksampler(guider, model, seed, sampler_name, sigmas, latent_image, callback)
    return out, guider.last_run.report(guider.method.reward.label)


OPTIONS = MethodOptions(
    socket=DateOptions, node_id="PromptOptim_DATEOptions", display_name="DATE Options", category=CATEGORY,
    all_inputs=_date_inputs,
    names=("rule", "schedule", "schedule_value", "iterations", "prior_weight", "decode_scale", "reward_prompt"),
    description="The DATE settings beyond the update size: which steps update (e.g. every step instead of every "
                "10th), the update rule, gradient steps per update, the prior penalty, the decode scale and the "
                "text the reward reads, for DATE Guider / KSampler's 'options' input. Every default is the "
                "authors' released setting.")

FACE = GuidedMethodFace(category=CATEGORY, model_help=MODEL_HELP, cfg_default=8.0, cfg_help=CFG_HELP,
                        positive_help=POSITIVE_HELP, negative_help=NEGATIVE_HELP, settings_inputs=_date_inputs,
                        build_guider=build_guider, validate_inputs=validate_schedule, sample=sample, options=OPTIONS)

GUIDER_DESCRIPTION = ("DATE (Diffusion Adaptive Text Embedding): classifier-free guidance whose positive text "
                      "embedding moves toward a higher reward at scheduled steps. At an update step the reward "
                      "is measured on the decoded CFG x0 estimate and the token states follow its normalized "
                      "gradient; the negative never changes. Use with SamplerCustomAdvanced and any sampler "
                      "and sigmas; the schedule and other settings on 'DATE Options'.")
SAMPLER_DESCRIPTION = ("KSampler with DATE: same inputs and the same noise as KSampler, plus the DATE settings (see "
                       "DATE Guider; the schedule and others on 'DATE Options'). Outputs the latent and a report "
                       "of the reward at every update.")


def _sampler_node(class_name: str, node_id: str, compact: bool) -> type:
    return ksampler_node(
        FACE, class_name, node_id=node_id, display_name=SAMPLER_NODE, description=SAMPLER_DESCRIPTION,
        seed_help="Noise seed (the same noise as KSampler with this seed).", steps_help="Sampling steps (paper: 50).",
        outputs=lambda: [io.Latent.Output(), io.String.Output(display_name="report")], compact=compact)


DateGuiderNode = guider_node(FACE, "DateGuiderNode", node_id="PromptOptim_DATEGuiderV2", display_name=GUIDER_NODE,
                             description=GUIDER_DESCRIPTION)
DateSamplerNode = _sampler_node("DateSamplerNode", "PromptOptim_DATESamplerV2", compact=True)
DateOptionsNode = OPTIONS.node("DateOptionsNode", validate_inputs=validate_schedule)
# the first nodes, every setting shown: deprecated, kept so saved workflows load with their values
DateGuiderAllSettings = guider_node(FACE, "DateGuiderAllSettings", node_id="PromptOptim_DATEGuider",
                                    display_name=GUIDER_NODE, description=GUIDER_DESCRIPTION, compact=False)
DateSamplerAllSettings = _sampler_node("DateSamplerAllSettings", "PromptOptim_DATESampler", compact=False)


NODES = [DateGuiderNode, DateSamplerNode, DateOptionsNode, DateGuiderAllSettings, DateSamplerAllSettings]
