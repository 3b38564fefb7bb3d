"""DATE, MinorityPrompt and IPGO on the SD3.5-style and Flux.1-dev test models in the real ComfyUI server, over
HTTP (/prompt, /history): one graph per family runs the three methods (each through its compact node and its
options node), as a user's workflow would. What each method computes is checked in-process in
test_sequence_families.py; here the server runs them end to end and reports what they did."""
import re

import pytest

from conftest import reward_entries
from devtools.base_dir import make_base_dir
from test_sequence_families import PROMPT, SIZE, common_nodes, date_options, ipgo_options, minority_options

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def family_server(tmp_path_factory, sd3_checkpoint, sd35_unet, flux_files, reward_models):
    """A ComfyUI server with the small SD3 / SD3.5-style / Flux files and the test-only reduced-T5 loader."""
    from devtools.server import ComfyServer
    from devtools.test_nodes_package import link_test_nodes

    base = make_base_dir(tmp_path_factory.mktemp("family_server"), checkpoints=[sd3_checkpoint],
                         diffusion_models=[sd35_unet, flux_files.unet_path], vae=[flux_files.vae_path],
                         text_encoders=[flux_files.clip_l_path, flux_files.t5_path],
                         rewards=reward_entries(reward_models))
    package = link_test_nodes(base)
    with ComfyServer(base, also_enable=(package,)) as server:
        yield server


def _loaders(family: str, sd3_name: str, files) -> tuple[dict, list, list, list]:
    if family == "sd35":  # the SD3.5-style MMDiT-X with the SD3 checkpoint's text encoders and VAE
        return ({"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd3_name}},
                 "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": files.sd35, "weight_dtype": "default"}}},
                ["unet", 0], ["ckpt", 1], ["ckpt", 2])
    return ({"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": files.unet, "weight_dtype": "default"}},
             "te": {"class_type": "PromptOptimTestReducedT5CLIPLoader",
                    "inputs": {"type": "flux", "t5_name": files.t5, "clip_l_name": files.clip_l}},
             "vae": {"class_type": "VAELoader", "inputs": {"vae_name": files.vae}}},
            ["unet", 0], ["te", 0], ["vae", 0])


def _graph(family: str, sd3_name: str, files) -> dict:
    loaders, model, clip, vae = _loaders(family, sd3_name, files)
    cfg = 1.0 if family == "flux" else 4.0
    sampling = {"model": model, "seed": 5, "steps": 2, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple",
                "negative": ["neg", 0], "latent_image": ["lat", 0], "denoise": 1.0}
    graph = {
        **loaders,
        "pos": {"class_type": "PromptOptim_TextEncodeKeepText", "inputs": {"clip": clip, "text": PROMPT}},
        "mp_pos": {"class_type": "PromptOptim_MinorityEncode",
                   "inputs": {"clip": clip, "text": PROMPT, "position": "end", "init": "word", "init_word": "cool",
                              "init_seed": 0}},
        **common_nodes(clip),
        "date_options": date_options("cumulative", 1),
        "date": {"class_type": "PromptOptim_DATESamplerV2",
                 "inputs": {**sampling, "positive": ["pos", 0], "vae": vae, "reward": ["rw", 0], "rho": 0.5,
                            "options": ["date_options", 0]}},
        "date_report": {"class_type": "PreviewAny", "inputs": {"source": ["date", 1]}},
        "mp_options": minority_options(False),
        "mp": {"class_type": "PromptOptim_MinoritySamplerV2",
               "inputs": {**sampling, "positive": ["mp_pos", 0], "iterations": 2, "lr": 0.01,
                          "options": ["mp_options", 0]}},
        "mp_report": {"class_type": "PreviewAny", "inputs": {"source": ["mp", 2]}},
        "ipgo_options": ipgo_options(),
        "ipgo": {"class_type": "PromptOptim_IPGOOptimizeV2",
                 "inputs": {"model": model, "clip": clip, "vae": vae, "reward": ["rw", 0], "prompts": PROMPT,
                            "negative": "", "sampling_seed": 3, "steps": 2, "cfg": cfg, "width": SIZE,
                            "height": SIZE, "epochs": 2, "options": ["ipgo_options", 0]}},
        "ipgo_report": {"class_type": "PreviewAny", "inputs": {"source": ["ipgo", 5]}},
    }
    if family == "flux":  # Flux.1-dev's guidance embedding, as a user sets it
        for name in ("pos", "mp_pos"):
            graph[f"{name}_guided"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": [name, 0],
                                                                                 "guidance": 3.5}}
        graph["date"]["inputs"]["positive"] = ["pos_guided", 0]
        graph["mp"]["inputs"]["positive"] = ["mp_pos_guided", 0]
    return graph


@pytest.mark.parametrize("family", ["sd35", "flux"])
def test_each_method_runs_over_http(family_server, sd3_checkpoint, sd35_unet, flux_files, family):
    import types

    files = types.SimpleNamespace(sd35=sd35_unet.name, unet=flux_files.unet, t5=flux_files.t5,
                                  clip_l=flux_files.clip_l, vae=flux_files.vae)
    entry = family_server.run(_graph(family, sd3_checkpoint.name, files))
    text = {name: entry["outputs"][name]["text"][0] for name in ("date_report", "mp_report", "ipgo_report")}
    assert "2 updates at steps [0, 1]" in text["date_report"], text["date_report"]
    rewards = [float(r) for r in re.findall(r"mean reward (\S+)", text["date_report"])]
    assert len(rewards) == 2 and all(r == r for r in rewards), text["date_report"]
    assert text["mp_report"].startswith("MinorityPrompt: 1 optimized steps [0]"), text["mp_report"]
    assert text["ipgo_report"].startswith("IPGO prompt-wise: 2 epochs"), text["ipgo_report"]
    curve = [float(v) for v in text["ipgo_report"].splitlines()[1].split(": ", 1)[1].split(", ")]
    assert len(curve) == 2 and len(set(curve)) == 2, text["ipgo_report"]
