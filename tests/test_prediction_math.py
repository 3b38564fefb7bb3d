"""core.shared.prediction's formulas equal ComfyUI's model_sampling for each prediction type."""
import pytest
import torch

from core.shared import prediction as P
from core.shared.prediction import PredictionType


@pytest.fixture(scope="module")
def samplings(comfy):
    import comfy.model_sampling as ms

    def make(base, kind):
        return type(f"{base.__name__}_{kind.__name__}", (base, kind), {})()

    return {
        PredictionType.EPS: make(ms.ModelSamplingDiscrete, ms.EPS),
        PredictionType.V: make(ms.ModelSamplingDiscrete, ms.V_PREDICTION),
        PredictionType.FLOW: make(ms.ModelSamplingDiscreteFlow, ms.CONST),
        PredictionType.X0: make(ms.ModelSamplingDiscrete, ms.X0),
    }


@pytest.mark.parametrize("kind", list(PredictionType))
def test_formulas_match_comfyui(samplings, kind):
    ms = samplings[kind]
    gen = torch.Generator().manual_seed(0)
    x0, noise, out = (torch.randn(2, 4, 8, 8, generator=gen) for _ in range(3))
    sigma = torch.tensor([0.7, 0.3] if kind is PredictionType.FLOW else [7.0, 0.4])
    x = P.renoise(kind, x0, sigma, noise)
    torch.testing.assert_close(x, ms.noise_scaling(sigma, noise, x0))
    torch.testing.assert_close(P.model_input(kind, x, sigma), ms.calculate_input(sigma, x))
    torch.testing.assert_close(P.x0_from_output(kind, out, x, sigma), ms.calculate_denoised(sigma, out, x))


def test_vp_sigmas_match_comfyui_schedule(samplings):
    ms = samplings[PredictionType.EPS]
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(P.vp_sigmas(torch.cumprod(1 - betas, 0)).float(), ms.sigmas)


def test_adapter_maps_comfy_prediction_types(pack, samplings):
    for kind, ms in samplings.items():
        assert pack.comfy_denoiser.prediction_type(ms).value == kind.value
