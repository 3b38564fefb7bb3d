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

from devtools.base_dir import make_base_dir  # noqa: E402
from devtools.checkpoints import checkpoint_path  # noqa: E402


@pytest.fixture(scope="session")
def sd1_checkpoint() -> Path:
    return checkpoint_path("sd1")


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory, sd1_checkpoint) -> Path:
    return make_base_dir(tmp_path_factory.mktemp("comfy_base"), checkpoints=[sd1_checkpoint])


@pytest.fixture(scope="session")
def comfy(base_dir):
    """ComfyUI's executor in this process with only this pack loaded (one per test session)."""
    from devtools.inprocess import InProcessComfy

    return InProcessComfy(base_dir)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, sd1_checkpoint):
    """The real ComfyUI main.py, headless on a free loopback port, with only this pack enabled."""
    from devtools.server import ComfyServer

    base = make_base_dir(tmp_path_factory.mktemp("server_base"), checkpoints=[sd1_checkpoint])
    with ComfyServer(base) as server:
        yield server


@pytest.fixture(scope="session")
def object_info(comfy_server) -> dict:
    return comfy_server.object_info()


WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
