"""Packaging rules a ComfyUI user's shared environment depends on, and the old-ComfyUI fallback."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = {"torch", "torchvision", "torchaudio", "numpy", "transformers", "diffusers", "safetensors",
          "tokenizers", "pillow", "scipy", "accelerate", "huggingface-hub", "timm", "open-clip-torch"}


def _names(lines):
    return [re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower() for line in lines
            if line.strip() and not line.strip().startswith("#")]


def test_requirements_agree_with_pyproject_and_pin_nothing_shared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = project["project"]["dependencies"]
    reqs = [l for l in (ROOT / "requirements.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert sorted(_names(reqs)) == sorted(_names(deps))
    for spec in deps + reqs + sum(project["project"].get("optional-dependencies", {}).values(), []):
        name = _names([spec])[0]
        assert name not in {"torch", "torchvision", "torchaudio"}, spec
        assert not (name in SHARED and re.search(r"==|<", spec)), f"pins a shared package: {spec}"
    comfy = project["tool"]["comfy"]
    assert comfy["requires-comfyui"] and comfy["DisplayName"] and "PublisherId" in comfy
    assert "comfyui" not in project["project"]["name"].lower()


def test_node_ids_carry_the_pack_prefix_and_never_say_pag_alone(object_info):
    ours = {k: v for k, v in object_info.items() if v["python_module"].endswith("prompt-optim")}
    assert ours, "the pack registered no nodes"
    for node_id, info in ours.items():
        assert node_id.startswith("PromptOptim_"), node_id
        assert not re.search(r"(?<![A-Za-z])PAG(?![A-Za-z])", node_id + info["display_name"]), node_id
        assert info["description"], f"{node_id} has no description"
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_old_comfyui_without_v3_api_logs_one_line_and_keeps_running(tmp_path):
    """Simulate a ComfyUI without comfy_api.latest: the pack must import, load nothing, log once."""
    script = f"""
import importlib.util, logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
sys.modules["comfy_api"] = None  # makes `import comfy_api...` raise ImportError
spec = importlib.util.spec_from_file_location("prompt_optim_pack", r"{ROOT / '__init__.py'}")
module = importlib.util.module_from_spec(spec)
sys.modules["prompt_optim_pack"] = module
spec.loader.exec_module(module)
print("MAPPINGS", module.NODE_CLASS_MAPPINGS, hasattr(module, "comfy_entrypoint"))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "MAPPINGS {} False" in run.stdout
    lines = [l for l in run.stderr.splitlines() if "prompt-optim" in l]
    assert len(lines) == 1 and "update ComfyUI" in lines[0], run.stderr


def test_lab_weights_are_compact_and_stay_out_of_the_registry_archive():
    """Issue 8: the committed lab weights (model, reward, rewriters) fit in 40 MB together, and the
    registry archive leaves lab/ out (.comfyignore), so users never download them."""
    weights = ROOT / "lab" / "weights"
    total = sum(p.stat().st_size for p in weights.rglob("*") if p.is_file())
    assert 1_000_000 < total <= 40 * 2**20, total
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".comfyignore").read_text().splitlines()}
    assert "lab" in ignored
