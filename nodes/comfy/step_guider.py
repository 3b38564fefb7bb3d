"""StepOptimizerGuider: ComfyUI's CFGGuider that lets a method optimize the positive at scheduled steps.

The guider owns what every step-optimizing method shares: the step plan, the method's models as
additional models of a cloned ModelPatcher (ComfyUI loads them with the diffusion model and may offload
them afterwards), the autograd scope around inference-mode weights, the unconditional prediction and
guidance exactly as ComfyUI applies them, Cancel, progress text and the per-run record (closed in a
finally block, also after a cancel or an error). A method (MinorityPrompt, DATE) is a small object
implementing StepMethod: which steps it optimizes, what it does there, what the positive is between.

Works with every SAMPLER and SIGMAS: a step is recognised by its starting sigma in
`transformer_options["sample_sigmas"]`, and each scheduled step runs the method once, so the extra model
calls of second-order or SDE samplers (at sigmas in between, or at the next step's sigma) never add
method calls. (For Heun-type samplers the method of step i + 1 runs at the first call at sigma[i + 1],
which is step i's corrector evaluation on the predicted state.)
The guidance helpers below are functions of a guider, so IPGO's differentiable tail uses them too.
"""
from __future__ import annotations

import logging
import math
from contextlib import ExitStack
from dataclasses import dataclass

import torch

import comfy.conds
import comfy.model_management as mm
import comfy.samplers

from .errors import NodeInputError
from .recast import differentiable

log = logging.getLogger("prompt_optim.step_optimizer")


class GuiderError(ValueError):
    pass


def progress_text(text: str) -> None:
    """Show text under the executing node in the UI (ComfyUI's progress-text channel), if a server runs."""
    try:
        from comfy_execution.utils import get_executing_context
        from server import PromptServer

        context = get_executing_context()
        if context is not None and getattr(PromptServer, "instance", None) is not None:
            PromptServer.instance.send_progress_text(text, context.node_id)
    except Exception:  # the UI text is a courtesy; sampling must not fail for it
        pass


# -- the positive a method optimizes ------------------------------------------------------------------
def single_positive(node: str, positive, method: str):
    """The one entry [tensor, options] of a method's positive CONDITIONING, checked when the guider node runs:
    the method's objective is about the whole image at every step it optimizes, so an area, a mask or a
    timestep range (which make the positive act on part of the image or of the schedule) are refused, as are
    several entries (Conditioning Combine), rather than silently ignored or failing mid-run."""
    if not isinstance(positive, list) or len(positive) != 1:
        count = len(positive) if isinstance(positive, list) else 0
        raise NodeInputError(node, "positive", f"{method} changes one text conditioning; this one has {count} "
                                               "entries (from Conditioning Combine). Connect a single text encode.")
    entry = positive[0]
    options = entry[1]
    limits = [name for key, name in (("area", "an area"), ("mask", "a mask")) if options.get(key) is not None]
    start, end = options.get("start_percent", 0.0), options.get("end_percent", 1.0)
    if start > 0.0 or end < 1.0:
        limits.append(f"a timestep range ({start:g}-{end:g})")
    if limits:
        raise NodeInputError(node, "positive", f"the conditioning has {' and '.join(limits)}; {method} optimizes "
                             "the prompt for the whole image at each scheduled step, so it takes conditioning "
                             "without area, mask or timestep range (Conditioning Set Area / Mask / Timestep Range).")
    return entry


def check_finite_latent(node: str, where: str, latent: torch.Tensor, method: str) -> None:
    """A NaN or infinite latent makes every gradient NaN: say where it came in, before any work."""
    bad = int((~torch.isfinite(latent)).sum())
    if bad:
        raise GuiderError(f"[{node}] {where}: the latent has {bad} NaN or infinite values (of {latent.numel()}), "
                          f"so {method} has nothing to optimize from. Check the node that made it (e.g. Load Latent, "
                          "VAE Encode).")


# -- guidance, as comfy.samplers.sampling_function computes it -------------------------------------------
def positive_entry(guider: comfy.samplers.CFGGuider, method: str) -> dict:
    positive = guider.conds.get("positive") or []
    if len(positive) != 1:
        raise GuiderError(
            f"{method} changes one positive conditioning; this one has {len(positive)} entries (from "
            "Conditioning Combine, area or timestep ranges). Use a single text encode as positive.")
    entry = positive[0]
    if "c_crossattn" not in entry.get("model_conds", {}):
        raise GuiderError(f"this model family does not take its text as cross-attention tokens; "
                          f"{method} supports SD1.x, SD2.x and SDXL.")
    return entry


def positive_with(guider, method: str, c: torch.Tensor, clone_rest: bool = False) -> list[dict]:
    """The positive entry with `c` as its tokens; `clone_rest` re-creates its other inputs (e.g. SDXL's
    pooled/size vector) as ordinary tensors, which autograd may need to save."""
    entry = positive_entry(guider, method)
    model_conds = dict(entry["model_conds"])
    if clone_rest:
        for key, value in model_conds.items():
            if isinstance(getattr(value, "cond", None), torch.Tensor):
                model_conds[key] = value._copy_with(value.cond.clone())
    model_conds["c_crossattn"] = comfy.conds.CONDCrossAttn(c)
    return [dict(entry, model_conds=model_conds)]


def skips_uncond(guider, model_options) -> bool:
    """ComfyUI skips the unconditional branch at cfg 1 unless a patch disables that optimization."""
    return math.isclose(guider.cfg, 1.0) and not model_options.get("disable_cfg1_optimization", False)


def uncond_prediction(guider, x, timestep, model_options):
    """(negative conds or None, its prediction) as sampling_function computes them (zeros at cfg 1)."""
    uncond = None if skips_uncond(guider, model_options) else guider.conds.get("negative")
    if uncond is None:  # what calc_cond_batch returns for a skipped branch
        return None, torch.zeros_like(x)
    return uncond, comfy.samplers.calc_cond_batch(guider.inner_model, [uncond], x, timestep, model_options)[0]


def combine(guider, x, timestep, cond_pred, uncond_pred, positive, uncond, model_options):
    """Guidance exactly as comfy.samplers.sampling_function applies it (pre-CFG hooks, cfg, post-CFG)."""
    out = [cond_pred, uncond_pred]
    for fn in model_options.get("sampler_pre_cfg_function", []):
        out = fn({"conds": [positive, uncond], "conds_out": out, "cond_scale": guider.cfg, "timestep": timestep,
                  "input": x, "sigma": timestep, "model": guider.inner_model, "model_options": model_options})
    return comfy.samplers.cfg_function(guider.inner_model, out[0], out[1], guider.cfg, x, timestep,
                                       model_options=model_options, cond=positive, uncond=uncond)


def step_index(sigma: float, sigmas: list[float]) -> int | None:
    for i, s in enumerate(sigmas[:-1]):
        if abs(s - sigma) <= 1e-5 * max(abs(s), 1e-8):
            return i
    return None


# -- a method ------------------------------------------------------------------------------------------
@dataclass
class ScheduledStep:
    """What a method sees at a scheduled step: the sampler's state and the unconditional prediction."""

    guider: "StepOptimizerGuider"
    x: torch.Tensor
    timestep: torch.Tensor
    model_options: dict
    seed: int | None
    step: int
    sigmas: list[float]
    uncond: list[dict] | None
    uncond_pred: torch.Tensor

    @property
    def sigma(self) -> float:
        return float(self.timestep.reshape(-1)[0])


class StepMethod:
    """The part of a step-optimizing method the guider does not own. `run` is the method's run record."""

    name = "this method"  # in error messages and logs
    node = "this method's node"  # the node that made the guider, for errors raised while sampling
    additional_models_key = "prompt_optim"
    run = None

    def additional_models(self) -> list:
        """ModelPatchers ComfyUI should load with the diffusion model (VAE, reward, CLIP)."""
        return []

    def begin_run(self) -> None:
        """Reset per-run state before sampling starts."""

    def end_run(self) -> None:
        """Called after sampling returns or raises (cancel, error)."""

    def planned_steps(self, sigmas: list[float]) -> list[int]:
        raise NotImplementedError

    def before_prediction(self, guider: "StepOptimizerGuider", x: torch.Tensor) -> None:
        """Called at every model call before anything else (e.g. to take the prompt's embedding)."""

    def autograd_modules(self, guider: "StepOptimizerGuider") -> list[torch.nn.Module]:
        """Modules whose inference-mode weights must be usable by autograd during an optimized step."""
        return [guider.inner_model]

    def optimize(self, step: ScheduledStep) -> tuple[list[dict], str]:
        """Optimize at this step (autograd scope entered); return (the positive to take it with, a status line)."""
        raise NotImplementedError

    def positive_between(self, guider: "StepOptimizerGuider") -> list[dict] | None:
        """The positive for unscheduled steps; None = as given."""
        return None


class StepOptimizerGuider(comfy.samplers.CFGGuider):
    def __init__(self, model_patcher, cfg: float, method: StepMethod):
        model_patcher = model_patcher.clone()
        model_patcher.set_additional_models(method.additional_models_key, method.additional_models())
        super().__init__(model_patcher)
        self.set_cfg(cfg)
        self.method = method

    @property
    def last_run(self):
        return self.method.run

    # -- one run ---------------------------------------------------------------------------------
    def sample(self, noise, latent_image, *args, **kwargs):
        check_finite_latent(self.method.node, "the sampler's input 'latent_image'", latent_image, self.method.name)
        self.planned: list[int] = []
        self._sigmas_key = None
        self._done: set[int] = set()
        self.method.begin_run()
        try:
            return super().sample(noise, latent_image, *args, **kwargs)
        finally:  # also after a cancel or an error: the run record holds what was done
            self.method.end_run()

    def _plan(self, model_options) -> list[float]:
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        if sigmas is None:
            raise GuiderError("the sampler did not expose its sigma schedule (transformer_options.sample_sigmas).")
        values = [float(s) for s in sigmas]
        if values != self._sigmas_key:
            self._sigmas_key = values
            self.planned = self.method.planned_steps(values)
        return values

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        self.method.before_prediction(self, x)
        sigmas = self._plan(model_options)
        step = step_index(float(timestep.reshape(-1)[0]), sigmas)
        if step is not None and step in self.planned and step not in self._done:
            self._done.add(step)
            return self._optimized_step(x, timestep, model_options, seed, step, sigmas)
        positive = self.method.positive_between(self)
        if positive is None:
            positive = self.conds.get("positive")
        return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get("negative"), positive,
                                                self.cfg, model_options=model_options, seed=seed)

    def _optimized_step(self, x, timestep, model_options, seed, step: int, sigmas: list[float]):
        mm.throw_exception_if_processing_interrupted()
        uncond, uncond_pred = uncond_prediction(self, x, timestep, model_options)  # once, without gradient
        scheduled = ScheduledStep(self, x, timestep, model_options, seed, step, sigmas, uncond, uncond_pred)
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            for module in self.method.autograd_modules(self):
                stack.enter_context(differentiable(module))
            positive, status = self.method.optimize(scheduled)
        log.info(status)
        progress_text(status)
        # the step itself is taken with plain CFG and the optimized positive
        cond_pred = comfy.samplers.calc_cond_batch(self.inner_model, [positive], x, timestep, model_options)[0]
        return combine(self, x, timestep, cond_pred, uncond_pred, positive, uncond, model_options)

    # -- conditioning helpers for methods ----------------------------------------------------------
    def positive_entry(self) -> dict:
        return positive_entry(self, self.method.name)

    def positive_with(self, c: torch.Tensor, clone_rest: bool = False) -> list[dict]:
        return positive_with(self, self.method.name, c, clone_rest)
