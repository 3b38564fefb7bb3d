"""open_clip rewards (HPSv2, CLIP similarity on open_clip checkpoints) from the users' file layouts.

A tiny random open_clip architecture stands in for ViT-H-14; its weights are saved the way users
have them and loaded back through core.rewards. Skipped where the optional open_clip extra is absent.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

open_clip = pytest.importorskip("open_clip")

from safetensors.torch import save_file  # noqa: E402

from core.rewards import RewardCheckpointError, RewardFileError, load_reward  # noqa: E402
from core.rewards.open_clip_backbone import (RewardDependencyError, load_hpsv2, load_open_clip,  # noqa: E402
                                             load_open_clip_similarity)

TINY = "prompt-optim-tiny"
TINY_WIDER = "prompt-optim-tiny-wider"  # same keys, other shapes: a wrong architecture
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
PROMPTS = ["a photo of a cat", "a red cube on a wooden table"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """The reference: a seeded tiny open_clip model in memory, registered under TINY."""
    config_file = tmp_path_factory.mktemp("open_clip_configs") / f"{TINY}.json"
    config_file.write_text(json.dumps(TINY_CONFIG))
    wider = json.loads(json.dumps(TINY_CONFIG))
    wider["vision_cfg"]["width"] = 48
    (config_file.parent / f"{TINY_WIDER}.json").write_text(json.dumps(wider))
    open_clip.add_model_config(config_file.parent)
    torch.manual_seed(0)
    return open_clip.create_model(TINY, pretrained=None).eval()


@pytest.fixture(scope="module")
def files(tiny_model, tmp_path_factory):
    """The tiny model's weights in each layout users have."""
    root = tmp_path_factory.mktemp("open_clip_files")
    state = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    hps = root / "HPS_v2_compressed.pt"
    torch.save({"state_dict": state}, hps)  # the HPSv2 release's layout
    folder = root / "laion-style"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG, "preprocess_cfg": {
        "mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}}))
    save_file(state, str(folder / "open_clip_model.safetensors"))
    bare = root / "tiny.safetensors"
    save_file(state, str(bare))
    return {"hps": hps, "folder": folder, "bare": bare, "root": root, "state": state}


def _images(size=(32, 32), n=2, seed=0):
    return torch.rand((n, 3, *size), generator=torch.Generator().manual_seed(seed))


def _reference_cosine(model, images, prompts):
    """Cosine computed by hand with open_clip's own pieces (32 x 32 input: no resize needed)."""
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        image = model.encode_image((images - mean) / std)
        text = model.encode_text(open_clip.get_tokenizer(TINY)(prompts))
    return F.cosine_similarity(image, text, dim=-1)


@pytest.fixture(scope="module")
def loaded(files):
    return {
        "hps": load_hpsv2(files["hps"], architecture=TINY),
        "folder": load_open_clip_similarity(files["folder"]),
        "bare": load_open_clip_similarity(files["bare"], architecture=TINY),
    }


@pytest.mark.parametrize("layout", ["hps", "folder", "bare"])
def test_scores_equal_the_models_own_cosine(loaded, tiny_model, layout):
    images = _images()
    scores = loaded[layout](images, PROMPTS)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    torch.testing.assert_close(scores, _reference_cosine(tiny_model, images, PROMPTS), atol=1e-5, rtol=0)
    assert torch.equal(scores, loaded[layout](images, PROMPTS))  # deterministic


def test_families_and_frozen_weights(loaded):
    assert loaded["hps"].family == "hpsv2" and loaded["folder"].family == "clip"
    assert all(not p.requires_grad for r in loaded.values() for p in r.parameters())
    assert loaded["bare"].backbone.embed_dim == 16


def test_gradient_reaches_images_of_any_size(loaded):
    images = _images(size=(48, 40)).requires_grad_(True)
    loaded["hps"](images, PROMPTS).sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_loaded_inside_inference_mode_still_backpropagates(files):
    with torch.inference_mode():  # ComfyUI executes nodes like this
        reward = load_hpsv2(files["hps"], architecture=TINY)
    images = _images().requires_grad_(True)
    reward(images, PROMPTS).sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_float64_loads_for_exact_checks(files, tiny_model):
    reward = load_open_clip_similarity(files["bare"], architecture=TINY, dtype=torch.float64)
    images = _images()
    scores = reward(images, PROMPTS)
    assert scores.dtype == torch.float64
    torch.testing.assert_close(scores.float(), _reference_cosine(tiny_model, images, PROMPTS), atol=1e-5, rtol=0)


def test_registry_loads_hpsv2_and_open_clip_folders(files, loaded):
    images = _images()
    hps = load_reward("hpsv2", files["hps"], architecture=TINY)
    clip = load_reward("clip", files["folder"])
    assert hps.family == "hpsv2"
    torch.testing.assert_close(hps(images, PROMPTS), loaded["hps"](images, PROMPTS))
    torch.testing.assert_close(clip(images, PROMPTS), loaded["folder"](images, PROMPTS))


def _save_hps_variant(files, name, state):
    path = files["root"] / name
    torch.save({"state_dict": state}, path)
    return path


def test_missing_key_is_reported_with_the_file(files):
    state = dict(files["state"])
    del state["visual.proj"]
    path = _save_hps_variant(files, "missing_key.pt", state)
    with pytest.raises(ValueError, match=r"missing_key\.pt.*missing: visual\.proj"):
        load_hpsv2(path, architecture=TINY)


def test_unexpected_key_is_reported_with_the_file(files):
    state = dict(files["state"], **{"score_head.weight": torch.zeros(1, 16)})
    path = _save_hps_variant(files, "extra_key.pt", state)
    with pytest.raises(ValueError, match=r"extra_key\.pt.*unexpected: score_head\.weight"):
        load_hpsv2(path, architecture=TINY)


def test_module_prefix_from_data_parallel_is_stripped(files, loaded):
    path = _save_hps_variant(files, "ddp.pt", {f"module.{k}": v for k, v in files["state"].items()})
    images = _images()
    torch.testing.assert_close(load_hpsv2(path, architecture=TINY)(images, PROMPTS), loaded["hps"](images, PROMPTS))


def test_wrong_architecture_is_a_key_mismatch_not_a_silent_load(files):
    with pytest.raises(RewardCheckpointError, match=rf"HPS_v2_compressed\.pt.*wrong shape.*'{TINY_WIDER}'"):
        load_hpsv2(files["hps"], architecture=TINY_WIDER)


def test_missing_files_name_what_is_expected(files, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"HPS_v2_compressed\.pt.*HPSv2 release"):
        load_hpsv2(tmp_path / "HPS_v2_compressed.pt")
    with pytest.raises(RewardFileError, match="open_clip_config.json"):
        load_open_clip(tmp_path)  # a folder without the config
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))
    with pytest.raises(RewardFileError, match="open_clip_model.safetensors"):
        load_open_clip(tmp_path)  # config but no weights


def test_bare_file_needs_a_known_architecture(files):
    with pytest.raises(ValueError, match="architecture"):
        load_open_clip(files["bare"])
    with pytest.raises(ValueError, match="not an open_clip architecture"):
        load_open_clip(files["bare"], architecture="no-such-arch")
    with pytest.raises(ValueError, match="hub id"):
        load_open_clip(files["bare"], architecture="hf-hub:laion/CLIP-ViT-H-14-laion2B-s32B-b79K")


def test_hub_text_towers_are_refused_before_any_download(tmp_path, files):
    config = json.loads(json.dumps(TINY_CONFIG))
    config["text_cfg"].update(hf_model_name="xlm-roberta-base", hf_tokenizer_name="xlm-roberta-base")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    save_file(files["state"], str(tmp_path / "open_clip_model.safetensors"))
    with pytest.raises(RewardCheckpointError, match="xlm-roberta-base"):
        load_open_clip(tmp_path)


def test_missing_open_clip_names_the_package(files, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip now raises ImportError
    with pytest.raises(RewardDependencyError, match="pip install open_clip_torch") as caught:
        load_hpsv2(files["hps"], architecture=TINY)
    assert isinstance(caught.value, ImportError) and "HPSv2" in str(caught.value)


def test_squash_preprocessing_is_followed_and_unknown_modes_refused(tmp_path, files, tiny_model):
    def folder_with(preprocess_cfg, name):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG,
                                                                 "preprocess_cfg": preprocess_cfg}))
        save_file(files["state"], str(folder / "open_clip_model.safetensors"))
        return folder

    reward = load_open_clip_similarity(folder_with({"resize_mode": "squash"}, "squash"))
    images = _images(size=(48, 40))
    stretched = F.interpolate(images, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(reward(images, PROMPTS), _reference_cosine(tiny_model, stretched, PROMPTS),
                               atol=1e-5, rtol=0)
    with pytest.raises(RewardCheckpointError, match="bilinear"):
        load_open_clip(folder_with({"interpolation": "bilinear"}, "bilinear"))
