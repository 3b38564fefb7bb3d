"""SteppedGuider: ComfyUI's CFGGuider with a method hook at scheduled sampling steps.

Works with every SAMPLER and SIGMAS: a step is recognised by its starting sigma in
`transformer_options["sample_sigmas"]`, and each scheduled step runs the hook once, so the extra model
calls of second-order or SDE samplers (at sigmas in between, or at the next step's sigma) never add
hook calls. (For Heun-type samplers the hook of step i + 1 runs at the first call at sigma[i + 1],
which is step i's corrector evaluation on the predicted state.)
Subclasses decide which steps are scheduled, what happens there, and what the positive is between them.
"""
from __future__ import annotations

import math

import torch

import comfy.conds
import comfy.samplers


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


class SteppedGuider(comfy.samplers.CFGGuider):
    method = "this method"  # named in error messages

    # -- what subclasses define ------------------------------------------------------------------
    def planned_steps(self, sigmas: list[float]) -> list[int]:
        raise NotImplementedError

    def begin_run(self) -> None:
        """Called before sampling starts (reset per-run state)."""

    def end_run(self) -> None:
        """Called after sampling returns or raises (cancel, error)."""

    def scheduled_step(self, x, timestep, model_options, seed, step: int, sigmas: list[float]):
        """The prediction at a scheduled step (run the method first)."""
        raise NotImplementedError

    def positive_between(self) -> list[dict] | None:
        """The positive for unscheduled steps; None = as given."""
        return None

    # -- one run ---------------------------------------------------------------------------------
    def sample(self, *args, **kwargs):
        self.planned: list[int] = []
        self._sigmas_key = None
        self._done: set[int] = set()
        self.begin_run()
        try:
            return super().sample(*args, **kwargs)
        finally:  # also after a cancel or an error: the run record holds what was done
            self.end_run()

    def _plan(self, model_options) -> list[float]:
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        if sigmas is None:
            raise GuiderError("the sampler did not expose its sigma schedule (transformer_options.sample_sigmas).")
        values = [float(s) for s in sigmas]
        if values != self._sigmas_key:
            self._sigmas_key = values
            self.planned = self.planned_steps(values)
        return values

    @staticmethod
    def step_index(sigma: float, sigmas: list[float]) -> int | None:
        for i, s in enumerate(sigmas[:-1]):
            if abs(s - sigma) <= 1e-5 * max(abs(s), 1e-8):
                return i
        return None

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        sigmas = self._plan(model_options)
        step = self.step_index(float(timestep.reshape(-1)[0]), sigmas)
        if step is not None and step in self.planned and step not in self._done:
            self._done.add(step)
            return self.scheduled_step(x, timestep, model_options, seed, step, sigmas)
        positive = self.positive_between()
        if positive is None:
            positive = self.conds.get("positive")
        return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get("negative"), positive,
                                                self.cfg, model_options=model_options, seed=seed)

    # -- conditioning ----------------------------------------------------------------------------
    def positive_entry(self) -> dict:
        positive = self.conds.get("positive") or []
        if len(positive) != 1:
            raise GuiderError(
                f"{self.method} changes one positive conditioning; this one has {len(positive)} entries (from "
                "Conditioning Combine, area or timestep ranges). Use a single text encode as positive.")
        entry = positive[0]
        if "c_crossattn" not in entry.get("model_conds", {}):
            raise GuiderError(f"this model family does not take its text as cross-attention tokens; "
                              f"{self.method} supports SD1.x, SD2.x and SDXL.")
        return entry

    def positive_with(self, c: torch.Tensor, clone_rest: bool = False) -> list[dict]:
        """The positive entry with `c` as its tokens; `clone_rest` re-creates its other inputs (e.g. SDXL's
        pooled/size vector) as ordinary tensors, which autograd may need to save."""
        entry = self.positive_entry()
        model_conds = dict(entry["model_conds"])
        if clone_rest:
            for key, value in model_conds.items():
                if isinstance(getattr(value, "cond", None), torch.Tensor):
                    model_conds[key] = value._copy_with(value.cond.clone())
        model_conds["c_crossattn"] = comfy.conds.CONDCrossAttn(c)
        return [dict(entry, model_conds=model_conds)]

    # -- guidance --------------------------------------------------------------------------------
    def uncond_prediction(self, x, timestep, model_options):
        """(negative conds or None, its prediction) as sampling_function computes them (zeros at cfg 1)."""
        cfg1 = math.isclose(self.cfg, 1.0) and not model_options.get("disable_cfg1_optimization", False)
        uncond = None if cfg1 else self.conds.get("negative")
        if uncond is None:  # what calc_cond_batch returns for a skipped branch
            return None, torch.zeros_like(x)
        return uncond, comfy.samplers.calc_cond_batch(self.inner_model, [uncond], x, timestep, model_options)[0]

    def combine(self, x, timestep, cond_pred, uncond_pred, positive, uncond, model_options):
        """Guidance exactly as comfy.samplers.sampling_function applies it (pre-CFG hooks, cfg, post-CFG)."""
        out = [cond_pred, uncond_pred]
        for fn in model_options.get("sampler_pre_cfg_function", []):
            out = fn({"conds": [positive, uncond], "conds_out": out, "cond_scale": self.cfg, "timestep": timestep,
                      "input": x, "sigma": timestep, "model": self.inner_model, "model_options": model_options})
        return comfy.samplers.cfg_function(self.inner_model, out[0], out[1], self.cfg, x, timestep,
                                           model_options=model_options, cond=positive, uncond=uncond)

    def guided(self, x, timestep, model_options, positive, uncond, uncond_pred):
        cond_pred = comfy.samplers.calc_cond_batch(self.inner_model, [positive], x, timestep, model_options)[0]
        return self.combine(x, timestep, cond_pred, uncond_pred, positive, uncond, model_options)
