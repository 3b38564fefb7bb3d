"""Shared fixtures: a real ComfyUI in this process and test checkpoints.

Tests run on the CPU, offline (HF_HUB_OFFLINE=1), against ComfyUI 0.3.75 from
scripts/setup_runtime.sh or the one in $COMFYUI_PATH.
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from devtools.base_dir import link_models, make_base_dir  # noqa: E402
from devtools.checkpoints import checkpoint_path  # noqa: E402


def pytest_configure(config):
    # scripts/test_claims_everywhere.sh runs the claim tests at other thread counts, as other CPUs would
    threads = os.environ.get("PROMPT_OPTIM_TORCH_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))


@pytest.fixture(scope="session")
def sd1_checkpoint() -> Path:
    return checkpoint_path("sd1")


@pytest.fixture(scope="session")
def sdxl_checkpoint(base_dir) -> Path:
    """~2 GB, generated once into the cache, and only for a session that runs an SDXL test; linked into the
    in-process ComfyUI's checkpoints then (ComfyUI re-lists a folder whose modification time changed)."""
    path = checkpoint_path("sdxl")
    link_models(base_dir, checkpoints=[path])
    return path


@pytest.fixture(scope="session")
def vega_checkpoint(base_dir) -> Path:
    """An SDXL derivative (ComfyUI detects Segmind Vega): SDXL's text encoders, fewer UNet blocks; ~2 GB,
    generated once into the cache, linked in only for a session that runs it."""
    path = checkpoint_path("vega")
    link_models(base_dir, checkpoints=[path])
    return path


@pytest.fixture(scope="session")
def ip2p_unet(base_dir) -> Path:
    """A UNet-only file of a family the pack does not support (InstructPix2Pix)."""
    from devtools.checkpoints import unet_only_path

    path = unet_only_path("sd1_ip2p")
    link_models(base_dir, diffusion_models=[path])
    return path


@pytest.fixture(scope="session")
def sd3_checkpoint(base_dir) -> Path:
    """A small SD3 (MMDiT) single-file checkpoint with CLIP-L, CLIP-G and a 16-channel TAESD, no T5 (1.6 GB;
    devtools/family_checkpoints.py), linked into the in-process ComfyUI's checkpoints."""
    from devtools.family_checkpoints import asset_path

    path = asset_path("sd3")
    link_models(base_dir, checkpoints=[path])
    return path


@pytest.fixture(scope="session")
def sd35_unet(base_dir) -> Path:
    """A small SD3.5-style MMDiT-X diffusion model (RMS q/k norms, a second self-attention; 4 MB), linked
    into the in-process ComfyUI's diffusion_models; it takes the SD3 checkpoint's text encoders and VAE."""
    from devtools.family_checkpoints import asset_path

    path = asset_path("sd35_unet")
    link_models(base_dir, diffusion_models=[path])
    return path


@pytest.fixture(scope="session")
def flux_files(base_dir):
    """A small Flux.1-dev diffusion model (1.1 GB), a 16-channel TAESD, CLIP-L and the reduced T5-XXL as
    separate files in ComfyUI's diffusion_models, vae and text_encoders folders: names by role (and the
    T5 file's path)."""
    import types

    from devtools.family_checkpoints import asset_path

    paths = {what: asset_path(what) for what in ("flux_unet", "flux_vae", "clip_l", "t5_reduced")}
    link_models(base_dir, diffusion_models=[paths["flux_unet"]], vae=[paths["flux_vae"]],
                text_encoders=[paths["clip_l"], paths["t5_reduced"]])
    return types.SimpleNamespace(unet=paths["flux_unet"].name, vae=paths["flux_vae"].name,
                                 clip_l=paths["clip_l"].name, t5=paths["t5_reduced"].name, t5_path=paths["t5_reduced"],
                                 unet_path=paths["flux_unet"], vae_path=paths["flux_vae"], clip_l_path=paths["clip_l"])


@pytest.fixture(scope="session")
def reduced_t5_loader(comfy) -> str:
    """The test-only node that builds a CLIP with the reduced T5 (no ComfyUI loader node can), registered
    in the in-process ComfyUI for the session; its class_type."""
    from devtools.family_checkpoints import TEST_NODES, register_test_nodes

    register_test_nodes(comfy.nodes)
    yield next(iter(TEST_NODES))
    for name in TEST_NODES:
        comfy.nodes.NODE_CLASS_MAPPINGS.pop(name, None)
        comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS.pop(name, None)


@pytest.fixture(scope="session")
def reward_models() -> Path:
    """Tiny random reward models in the users' file layouts (see devtools/reward_models.py)."""
    from devtools.reward_models import reward_models_dir

    return reward_models_dir()


@pytest.fixture(scope="session")
def prompt_rewriters() -> Path:
    """A tiny GPT-2 rewriter policy and bad folders (see devtools/prompt_rewriters.py)."""
    from devtools.prompt_rewriters import prompt_rewriters_dir

    return prompt_rewriters_dir()


def reward_entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="session")
def lab_checkpoint() -> Path:
    """The lab's trained text-to-image model, expanded into SD1.x's single-file layout (lab/checkpoint.py)."""
    from lab.checkpoint import lab_checkpoint_path

    return lab_checkpoint_path()


@pytest.fixture(scope="session")
def lab_reward() -> Path:
    """The lab's trained image-caption reward, as a Hugging Face CLIPModel folder."""
    from lab.checkpoint import lab_reward_folder

    return lab_reward_folder()


@pytest.fixture(scope="session")
def lab_rewriters() -> list[Path]:
    """The lab's rewriter policies (reference, GFlowNet, reward maximization), committed as HF folders."""
    from lab.checkpoint import lab_rewriter_folders

    return lab_rewriter_folders()


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory, sd1_checkpoint, reward_models, prompt_rewriters, lab_checkpoint, lab_reward,
             lab_rewriters) -> Path:
    return make_base_dir(tmp_path_factory.mktemp("comfy_base"), checkpoints=[sd1_checkpoint, lab_checkpoint],
                         rewards=reward_entries(reward_models) + [lab_reward],
                         prompt_rewriters=reward_entries(prompt_rewriters) + lab_rewriters)


@pytest.fixture(scope="session")
def comfy(base_dir):
    """ComfyUI's executor in this process with only this pack loaded (one per test session)."""
    from devtools.inprocess import InProcessComfy

    return InProcessComfy(base_dir)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, sd1_checkpoint, reward_models, prompt_rewriters, lab_checkpoint, lab_reward,
                 lab_rewriters):
    """The real ComfyUI main.py, headless on a free loopback port, with only this pack enabled."""
    from devtools.server import ComfyServer

    base = make_base_dir(tmp_path_factory.mktemp("server_base"), checkpoints=[sd1_checkpoint, lab_checkpoint],
                         rewards=reward_entries(reward_models) + [lab_reward],
                         prompt_rewriters=reward_entries(prompt_rewriters) + lab_rewriters)
    with ComfyServer(base) as server:
        yield server


@pytest.fixture(scope="session")
def object_info(comfy_server) -> dict:
    return comfy_server.object_info()


WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))


@pytest.fixture(scope="session")
def pack(comfy):
    """The pack's modules as ComfyUI loaded them (package 'prompt-optim')."""
    import importlib
    import types

    from devtools.inprocess import pack_package  # ComfyUI names the pack's package by its folder path

    package = pack_package()
    # attribute -> module: the names the tests use
    modules = {"prediction": "core.shared.prediction", "text_encoder": "core.shared.text_encoder",
               "conditioning": "core.shared.conditioning", "comfy_text_encoder": "nodes.comfy.text_encoder",
               "comfy_denoiser": "nodes.comfy.denoiser", "errors": "nodes.comfy.errors", "core_rewards": "core.rewards",
               "comfy_reward": "nodes.comfy.reward", "reward_nodes": "nodes.rewards.nodes",
               "likelihood_node": "nodes.diagnostics.likelihood", "model_family": "nodes.comfy.model_family"}
    loaded = {attr: importlib.import_module(f"{package}.{name}") for attr, name in modules.items()}
    return types.SimpleNamespace(package=package, **loaded)
