"""Issue 24: the Comfy Registry archive, built the way `comfy node publish` builds it.

comfy-cli 1.23.0 runs `comfy node validate` and `comfy node pack` on a clean copy of the repository's
tracked files (in a temporary folder, never in the repository), offline, and the test reads the archive.
comfy-cli lives in a virtual environment of its own (scripts/setup_comfy_cli.sh; scripts/test.sh
exports its `comfy` as PROMPT_OPTIM_COMFY_CLI), never in the test venv, which stands for ComfyUI's
shared environment.

What comfy-cli 1.23.0 packs (comfy_cli/file_utils.py, zip_files): the files `git ls-files` lists,
minus the gitwildmatch patterns in .comfyignore, plus whatever [tool.comfy] includes names (which
overrides .comfyignore). .gitignore plays no part beyond keeping files out of git; outside a git
checkout comfy-cli would pack the whole tree, so the copy here is made a git checkout.
"""
import ast
import os
import shutil
import struct
import subprocess
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_ARCHIVE_BYTES = 1 * 2**20  # the archive every user downloads: code, docs, workflows and their previews
# Unreachable proxy: any HTTP(S) request comfy-cli tried would fail rather than quietly go out.
NO_NETWORK = "http://127.0.0.1:9"
# Development-only folders (.comfyignore) that must never ship, and modules the nodes may not import.
DEV_ONLY = ("lab", "tests", "benchmarks", "devtools", "scripts", ".ci")


def _git_env():
    # Drop GIT_DIR & co. (set when pytest runs from a git hook) so git answers about the folder given.
    return {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}


@pytest.fixture(scope="module")
def registry_build(tmp_path_factory):
    comfy = os.environ.get("PROMPT_OPTIM_COMFY_CLI", "")
    if not comfy or not Path(comfy).is_file():
        pytest.fail("comfy-cli not found: run through `bash scripts/test.sh`, which installs it into its own venv "
                    "(scripts/setup_comfy_cli.sh) and exports PROMPT_OPTIM_COMFY_CLI=/path/to/that/venv/bin/comfy "
                    f"(got {comfy!r})")
    work = tmp_path_factory.mktemp("registry")
    copy, home = work / "prompt-optim", work / "home"
    home.mkdir()
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True,
                             env=_git_env()).stdout.decode().split("\0")
    tracked = [rel for rel in tracked if rel and (ROOT / rel).is_file()]  # working-tree versions, as committed
    for rel in tracked:
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, copy / rel)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8", "DO_NOT_TRACK": "1",
           "COMFY_NO_TELEMETRY": "1", "HTTP_PROXY": NO_NETWORK, "HTTPS_PROXY": NO_NETWORK,
           "ALL_PROXY": NO_NETWORK, "http_proxy": NO_NETWORK, "https_proxy": NO_NETWORK, "NO_COLOR": "1"}
    subprocess.run(["git", "init", "-q"], cwd=copy, env=env, check=True)
    subprocess.run(["git", "add", "-A"], cwd=copy, env=env, check=True)

    def comfy_node(command):
        run = subprocess.run([comfy, "node", command], cwd=copy, env=env, capture_output=True, text=True,
                             timeout=120)
        return run.returncode, run.stdout + run.stderr

    validate, pack = comfy_node("validate"), comfy_node("pack")
    archive = copy / "node.zip"
    return {"tracked": set(tracked), "validate": validate, "pack": pack, "archive": archive}


@pytest.fixture(scope="module")
def names(registry_build):
    rc, out = registry_build["pack"]
    assert rc == 0 and "Created zip file: node.zip" in out, out
    with zipfile.ZipFile(registry_build["archive"]) as z:
        assert z.testzip() is None
        return set(z.namelist())


def test_comfy_node_validate_passes_with_no_warning(registry_build):
    rc, out = registry_build["validate"]
    assert rc == 0, out
    assert "All validation checks passed successfully" in out, out
    # comfy-cli reports a bad classifier, license, version or requires-comfyui as a "Warning:" line and
    # then drops that field from what it would publish.
    assert "warning" not in out.lower(), out


def test_archive_holds_what_comfyui_loads_and_the_publisher_files(registry_build, names):
    for required in ("__init__.py", "LICENSE", "README.md", "pyproject.toml", "requirements.txt",
                     "web/results.js", "docs/icon.png"):
        assert required in names, required
    tracked = registry_build["tracked"]
    for folder in ("nodes/", "core/", "web/", "workflows/"):
        shipped = {t for t in tracked if t.startswith(folder) and "__pycache__" not in t}
        assert shipped and shipped <= names, sorted(shipped - names)
    graphs = {n[:-5] for n in names if n.startswith("workflows/") and n.endswith(".json")}
    assert len(graphs) >= 7 and {n[:-4] for n in names if n.startswith("workflows/") and n.endswith(".jpg")} == graphs


def test_archive_leaves_out_development_files_and_anything_untracked(registry_build, names):
    ignored = [l.strip() for l in (ROOT / ".comfyignore").read_text().splitlines() if l.strip()]
    for folder in DEV_ONLY:
        assert not [n for n in names if n.startswith(f"{folder}/")], folder
        assert f"{folder}/" in ignored, folder
    assert "pytest.ini" not in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    # Only tracked files: not node.zip itself, nor .ruff_cache/ that `validate` leaves in the copy.
    assert names <= registry_build["tracked"], sorted(names - registry_build["tracked"])


def test_archive_is_small_and_needs_nothing_it_leaves_out(registry_build, names):
    size = registry_build["archive"].stat().st_size
    assert size <= MAX_ARCHIVE_BYTES, f"{size} bytes, {len(names)} files"
    with zipfile.ZipFile(registry_build["archive"]) as z:
        for name in (n for n in names if n.endswith(".py")):
            for node in ast.walk(ast.parse(z.read(name), name)):
                if isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    modules = [node.module]
                    if node.level:  # relative: resolve against the file's package inside the pack
                        base = PurePosixPath(name).parents[node.level - 1]
                        modules = [".".join((*base.parts, node.module))]
                else:
                    continue
                for module in modules:
                    assert module.split(".")[0] not in DEV_ONLY, f"{name} imports {module}, left out of the archive"


def test_icon_is_a_url_to_the_shipped_png_under_the_repository_address(names):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    urls, icon = project["project"]["urls"], project["tool"]["comfy"]["Icon"]
    repository = urls["Repository"].rstrip("/")
    # One address to replace before publishing (README): every URL hangs off the repository's.
    for url in [*urls.values(), icon]:
        assert url.startswith(repository), url
    assert icon.startswith(f"{repository}/raw/"), icon
    path = "docs/icon.png"
    assert icon.endswith("/" + path) and path in names
    head = (ROOT / path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert width == height and width <= 400, (width, height)  # registry limit: 800 x 400
