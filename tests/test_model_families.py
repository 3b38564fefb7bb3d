"""Which model families the methods accept: by what they need (a UNet reading the prompt through
cross-attention from its CLIP encoders), so SDXL derivatives run as SDXL; image-conditioned variants are
refused by name."""
import types

import pytest
import torch

from test_date_nodes import date_graph
from test_ipgo_nodes import optimize_graph
from test_minority_nodes import minority_graph


def _config_holder(config_class):
    """What model_family reads: ComfyUI's own model-config object, built from the class's unet_config."""
    config = config_class(dict(config_class.unet_config))
    return types.SimpleNamespace(model=types.SimpleNamespace(model_config=config))


def test_families_follow_comfyui_classes(pack):
    import comfy.supported_models as supported

    family = pack.model_family.model_family
    accepted = {"SD15": "SD1.x", "SD20": "SD2.x", "SDXL": "SDXL", "SSD1B": "SDXL", "Segmind_Vega": "SDXL",
                "KOALA_700M": "SDXL", "KOALA_1B": "SDXL"}
    for name, expected in accepted.items():
        assert family(_config_holder(getattr(supported, name)), "node") == expected, name
    for name in ("SD15_instructpix2pix", "SDXL_instructpix2pix", "SD21UnclipL", "SD_X4Upscaler", "SDXLRefiner",
                 "SD3", "Flux", "AuraFlow"):
        with pytest.raises(ValueError, match=rf"\[node\] input 'model': model family '{name}' is not supported"):
            family(_config_holder(getattr(supported, name)), "node")


@pytest.mark.slow
def test_sdxl_derivative_runs_each_method(comfy, vega_checkpoint):
    """A Segmind-Vega-like checkpoint (ComfyUI's SDXL subclass) through DATE, MinorityPrompt and IPGO, each
    doing its work: DATE's updates at distance rho, the placeholder optimized, IPGO's reward curve."""
    comfy.run(date_graph(vega_checkpoint.name, steps=4, batch=1, schedule_value="2", iterations=1))
    guider = comfy.node_outputs("guider")[0][0]
    assert type(guider.model_patcher.model.model_config).__name__ == "Segmind_Vega"
    run = guider.last_run
    assert [u[0] for u in run.updates] == [0, 2]
    distance = (run.final - run.reference).flatten(1).norm(dim=1)  # the paper rule: rho from the prompt's
    torch.testing.assert_close(distance, torch.full_like(distance, 0.5), rtol=1e-4, atol=1e-5)

    comfy.run(minority_graph(vega_checkpoint.name, cfg=1.0, steps=2, optimize_fraction=0.5, every_n_steps=1,
                             iterations=2, batch=1))
    run = comfy.node_outputs("guider")[0][0].last_run
    assert [s[0] for s in run.steps] == [0]
    assert {k: v.shape[-1] for k, v in run.token.vectors.items()} == {"l": 768, "g": 1280}
    assert all(g > 0 for _, _, result in run.steps for g in result.predicted_gains)

    comfy.run(optimize_graph(vega_checkpoint.name, epochs=2, steps=4, prefix_tokens=1, suffix_tokens=1, rank=8))
    tokens, report = (comfy.node_outputs("opt")[i][0] for i in (0, 5))
    assert tokens.prefix.shape == (1, 2048) and tokens.info["family"] == "SDXL"
    assert report.startswith("IPGO prompt-wise: 2 epochs"), report
