"""Generated test assets are cached under a key of what builds them (devtools/asset_cache.py)."""
import json

import pytest

from devtools.asset_cache import build_inputs, build_key, cached


def test_key_follows_source_text_and_settings_not_the_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for folder in (a, b):
        (folder / "builder.py").write_text("SIZE = 4\n")
    key = build_key(build_inputs([a / "builder.py"], size=4))
    assert build_key(build_inputs([b / "builder.py"], size=4)) == key, "where the checkout lives does not matter"
    assert build_key(build_inputs([a / "builder.py"], size=5)) != key
    (a / "builder.py").write_text("SIZE = 8\n")
    assert build_key(build_inputs([a / "builder.py"], size=4)) != key, "a changed builder gets a new key"
    with pytest.raises(FileNotFoundError, match="missing.py"):
        build_inputs([a / "missing.py"])


def test_built_once_interrupted_build_redone_and_a_concurrent_finish_kept(tmp_path):
    inputs = {"settings": {"n": "1"}}
    calls = []

    def write(path):
        calls.append(path.name)
        path.write_text("asset")

    out = cached(tmp_path, "asset.txt", inputs, write)
    assert out.read_text() == "asset" and cached(tmp_path, "asset.txt", inputs, write) == out and len(calls) == 1
    assert json.loads((out.parent / "build.json").read_text()) == inputs

    def interrupted(path):
        path.write_text("half")
        raise KeyboardInterrupt

    other = {"settings": {"n": "2"}}
    with pytest.raises(KeyboardInterrupt):
        cached(tmp_path, "asset.txt", other, interrupted)
    assert not (tmp_path / build_key(other) / "asset.txt").exists(), "a half-built asset is never used"
    assert cached(tmp_path, "asset.txt", other, write).read_text() == "asset"

    def raced(path):  # another process completes the same build while this one writes
        (path.parent / "folder").mkdir()
        (path.parent / "folder" / "w").write_text("first")
        path.mkdir()
        (path / "w").write_text("second")

    third = {"settings": {"n": "3"}}
    folder = cached(tmp_path, "folder", third, raced)
    assert (folder / "w").read_text() == "first"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["build.json", "folder"], "no temporary left behind"
