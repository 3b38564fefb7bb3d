"""The test-only nodes (devtools/family_checkpoints.py: the reduced-T5 CLIP loader) as a custom-node package for
a ComfyUI server process; the in-process executor registers them directly (register_test_nodes). Kept apart
from family_checkpoints.py, whose source is part of its assets' cache key."""
from __future__ import annotations

from pathlib import Path

TEST_PACKAGE = "prompt_optim_test_nodes"


def link_test_nodes(base: Path) -> str:
    """Put the test-only nodes into BASE/custom_nodes as a package of their own, for a ComfyUI server process
    (the in-process executor uses register_test_nodes). The repository goes at the END of the server's
    sys.path: its `nodes/` package must not shadow ComfyUI's own `nodes` module. Returns the folder name."""
    folder = Path(base) / "custom_nodes" / TEST_PACKAGE
    folder.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    (folder / "__init__.py").write_text(
        "# Test-only nodes of prompt-optim's suite (devtools/family_checkpoints.py); never shipped.\n"
        "import sys\n"
        f"if {str(root)!r} not in sys.path:\n"
        f"    sys.path.append({str(root)!r})\n"
        "from devtools.family_checkpoints import TEST_NODES as NODE_CLASS_MAPPINGS  # noqa: E402\n"
        "NODE_DISPLAY_NAME_MAPPINGS = {k: 'Reduced-T5 CLIP loader (tests)' for k in NODE_CLASS_MAPPINGS}\n")
    return TEST_PACKAGE
