"""core/ is plain PyTorch: no file under it may import ComfyUI."""
import ast
from pathlib import Path

COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes",
                 "node_helpers", "execution", "server", "latent_preview"}
CORE = Path(__file__).resolve().parent.parent / "core"


def comfy_imports(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [n for n in names if n.split(".")[0] in COMFY_MODULES]
    return found


def test_detector_catches_comfy_imports():
    assert comfy_imports("import comfy.sd\nfrom folder_paths import x\nimport torch") == ["comfy.sd", "folder_paths"]
    assert comfy_imports("from . import nodes\nimport comfyui_extra") == []


def test_core_never_imports_comfy():
    offenders = {str(p.relative_to(CORE.parent)): comfy_imports(p.read_text())
                 for p in CORE.rglob("*.py")}
    assert list(CORE.rglob("*.py")), "core/ has no python files?"
    assert {k: v for k, v in offenders.items() if v} == {}
