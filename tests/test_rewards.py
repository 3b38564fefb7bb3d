"""Reward models from local files in the users' layouts (tiny random weights): loading, scores,
gradients, preprocessing and clear failures. Plain core/, no ComfyUI runtime needed."""
import os
import shutil

import pytest
import torch

from core.diagnostics.gradient_check import directional_check
from core.rewards import (FAMILIES, ImageTransform, RewardCheckpointError, RewardFileError, RewardInputError,
                          WeightedReward, load_reward)
from core.rewards.local_files import read_state_dict
from devtools.comfy_path import comfyui_root
from devtools.reward_models import NAMES

BUNDLED_TOKENIZER = comfyui_root() / "comfy" / "sd1_tokenizer"
PROMPTS = ["a photo of a cat", "a red cube on a wooden table"]


def _load(reward_models, family, **kw):
    if family == "laion_aesthetic":
        kw.setdefault("backbone_path", reward_models / NAMES["clip"])
    return load_reward(family, reward_models / NAMES[family], fallback_tokenizer_dir=BUNDLED_TOKENIZER, **kw)


@pytest.fixture(scope="module")
def rewards(reward_models):
    return {family: _load(reward_models, family) for family in NAMES}


def _images(seed=0, size=(96, 80), n=2):
    return torch.rand((n, 3, *size), generator=torch.Generator().manual_seed(seed))


def test_every_family_is_tested():
    # hpsv2 (open_clip, an optional extra): tests/test_open_clip_rewards.py and the node test
    assert set(NAMES) | {"hpsv2"} == set(FAMILIES)


@pytest.mark.parametrize("family", list(NAMES))
def test_scores_are_finite_deterministic_and_reload_identically(rewards, reward_models, family):
    images = _images()
    first = rewards[family](images, PROMPTS)
    assert first.shape == (2,) and first.dtype == torch.float32
    assert torch.isfinite(first).all()
    assert torch.equal(first, rewards[family](images, PROMPTS))
    assert torch.equal(first, _load(reward_models, family)(images, PROMPTS))
    assert not torch.equal(first, rewards[family](_images(seed=1), PROMPTS)), "the score ignores the image"


@pytest.mark.parametrize("family", ["clip", "pickscore", "image_reward"])
def test_score_depends_on_the_prompt(rewards, family):
    images = _images()
    assert not torch.allclose(rewards[family](images, "a photo of a cat"), rewards[family](images, "a red cube"))


@pytest.mark.parametrize("family", list(NAMES))
def test_gradient_reaches_the_image_and_matches_finite_differences(reward_models, family):
    reward = _load(reward_models, family, dtype=torch.float64)  # float64: finite differences free of round-off
    images = _images(seed=2, size=(72, 100)).double()
    images.requires_grad_(True)
    reward(images, PROMPTS).sum().backward()
    grad = images.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert not any(p.requires_grad for p in reward.parameters()), "reward weights must stay frozen"
    direction = torch.randn(images.shape, generator=torch.Generator().manual_seed(3))
    check = directional_check(lambda x: reward(x, PROMPTS).sum(), images.detach(), direction / direction.norm(),
                              step=1e-3)
    assert check.relative_error < 1e-4, check


def test_gradient_works_for_a_model_loaded_inside_inference_mode(reward_models):
    with torch.inference_mode():  # ComfyUI executes nodes like this
        reward = _load(reward_models, "image_reward")
    images = _images().requires_grad_(True)
    reward(images, PROMPTS).sum().backward()
    assert images.grad.abs().sum() > 0


def test_weighted_reward_is_the_weighted_sum(rewards):
    images = _images(seed=4)
    combined = WeightedReward([(rewards["image_reward"], 0.7), (rewards["clip"], 0.3), (rewards["laion_aesthetic"], -2)])
    expected = (0.7 * rewards["image_reward"](images, PROMPTS) + 0.3 * rewards["clip"](images, PROMPTS)
                - 2 * rewards["laion_aesthetic"](images, PROMPTS))
    torch.testing.assert_close(combined(images, PROMPTS), expected, rtol=0, atol=1e-6)
    assert combined.label == "0.7*image_reward + 0.3*clip + -2*laion_aesthetic"
    nested = WeightedReward([(combined, 2.0), (rewards["pickscore"], 1.0)])
    torch.testing.assert_close(nested(images, PROMPTS), 2 * expected + rewards["pickscore"](images, PROMPTS),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(224, 224), (300, 200), (181, 240), (100, 64), (64, 64), (500, 224)])
def test_preprocessing_equals_torchvision(size):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    images = _images(seed=5, size=size)
    transform = ImageTransform(size=64 if min(size) == 64 else 224)
    reference = TF.resize(images, transform.size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    reference = TF.center_crop(reference, [transform.size, transform.size])
    reference = TF.normalize(reference, transform.mean, transform.std)
    ours = transform(images)
    assert ours.shape == (2, 3, transform.size, transform.size)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_bad_images_and_prompts_are_refused(rewards):
    reward = rewards["clip"]
    with pytest.raises(RewardInputError, match="B x 3 x H x W"):
        reward(torch.rand(2, 4, 32, 32), PROMPTS)
    with pytest.raises(RewardInputError, match="NaN"):
        reward(torch.full((1, 3, 32, 32), float("nan")), "a cat")
    with pytest.raises(RewardInputError, match="3 prompts for 2 images"):
        reward(_images(), ["a", "b", "c"])


# ------------------------------------------------------------------------------------------ failures
def test_missing_folder_names_the_path_and_the_layout(tmp_path):
    with pytest.raises(RewardFileError, match="ImageReward.pt and med_config.json"):
        load_reward("image_reward", tmp_path / "nowhere")


def test_incomplete_image_reward_folder_names_the_missing_file(reward_models, tmp_path):
    folder = shutil.copytree(reward_models / NAMES["image_reward"], tmp_path / "ir")
    (folder / "med_config.json").unlink()
    with pytest.raises(RewardFileError, match="lacks med_config.json"):
        load_reward("image_reward", folder)


def test_missing_and_unexpected_checkpoint_keys_are_reported(reward_models, tmp_path):
    folder = shutil.copytree(reward_models / NAMES["image_reward"], tmp_path / "ir")
    state = read_state_dict(folder / "ImageReward.pt")
    del state["blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"]
    state["blip.itm_head.weight"] = torch.zeros(2, 64)
    torch.save(state, folder / "ImageReward.pt")
    with pytest.raises(RewardCheckpointError) as error:
        load_reward("image_reward", folder)
    assert "missing: blip.text_encoder.encoder.layer.1.crossattention.self.key.weight" in str(error.value)
    assert "unexpected: blip.itm_head.weight" in str(error.value)


@pytest.mark.parametrize("key, shape, message", [
    ("layers.2.weight", (128, 1000), "layer 0 outputs 1024 features but layer 2 takes 1000"),  # broken chain
    ("layers.0.weight", (1024, 768), "takes 768-d CLIP embeddings but the CLIP model gives 64-d"),  # wrong CLIP
])
def test_aesthetic_head_that_does_not_fit_is_refused(reward_models, tmp_path, key, shape, message):
    state = read_state_dict(reward_models / NAMES["laion_aesthetic"])
    state[key] = torch.zeros(shape)
    torch.save(state, tmp_path / "head.pth")
    with pytest.raises(RewardCheckpointError, match=message):
        load_reward("laion_aesthetic", tmp_path / "head.pth", backbone_path=reward_models / NAMES["clip"])


def test_a_tokenizer_that_came_back_tiny_is_detected(reward_models, tmp_path):
    folder = shutil.copytree(reward_models / NAMES["image_reward"], tmp_path / "ir")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    with pytest.raises(RewardFileError, match="has only 7 tokens"):
        load_reward("image_reward", folder)


def test_clip_folder_without_tokenizer_and_no_fallback_says_what_is_missing(reward_models):
    with pytest.raises(RewardFileError, match="no CLIP tokenizer"):
        load_reward("pickscore", reward_models / NAMES["pickscore"])


def test_clip_folder_without_weights_and_non_clip_config_are_refused(reward_models, tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    shutil.copy(reward_models / NAMES["clip"] / "config.json", folder)
    with pytest.raises(RewardFileError, match="no model.safetensors or pytorch_model.bin"):
        load_reward("pickscore", folder, fallback_tokenizer_dir=BUNDLED_TOKENIZER)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(RewardCheckpointError, match="not a CLIPModel"):
        load_reward("pickscore", folder, fallback_tokenizer_dir=BUNDLED_TOKENIZER)


def test_truncated_clip_weights_are_reported_not_randomly_initialized(reward_models, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(reward_models / NAMES["clip"], tmp_path / "clip")
    state = load_file(str(folder / "model.safetensors"))
    del state["visual_projection.weight"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(RewardCheckpointError, match="visual_projection.weight"):
        load_reward("clip", folder)


def test_unexpected_clip_weights_are_reported(reward_models, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(reward_models / NAMES["clip"], tmp_path / "clip")
    state = load_file(str(folder / "model.safetensors"))
    state["vision_model.extra_head.weight"] = torch.zeros(2, 2)
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]  # harmless in old exports
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(RewardCheckpointError) as error:
        load_reward("clip", folder)
    assert "vision_model.extra_head.weight" in str(error.value) and "position_ids" not in str(error.value)


def test_unknown_family_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="choose one of clip, pickscore, hpsv2, laion_aesthetic, image_reward"):
        load_reward("pag", tmp_path)


def test_missing_vocabulary_falls_back_to_the_local_cache_only(reward_models, tmp_path, monkeypatch):
    """No vocab.txt and no cached bert-base-uncased (transformers then returns a stub without raising):
    one error naming the file expected, never a download attempt."""
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    folder = shutil.copytree(reward_models / NAMES["image_reward"], tmp_path / "ir")
    (folder / "vocab.txt").unlink()
    for variable in ("HF_HOME", "HF_HUB_CACHE"):
        monkeypatch.setenv(variable, str(tmp_path / "empty_hf_cache"))
    with pytest.raises(RewardFileError, match="no bert-base-uncased vocab.txt in .* local Hugging Face cache"):
        load_reward("image_reward", folder)


def test_errors_say_whether_the_backbone_or_the_reward_weights_are_at_fault(reward_models, tmp_path):
    from core.rewards import BACKBONE, error_part

    with pytest.raises(RewardFileError) as error:  # the aesthetic head is fine, its backbone is missing
        _load(reward_models, "laion_aesthetic", backbone_path=tmp_path / "no_clip_here")
    assert error_part(error.value) == BACKBONE and "no_clip_here" in str(error.value)
    with pytest.raises(RewardFileError) as error:  # the head itself is missing
        load_reward("laion_aesthetic", tmp_path / "missing.pth", backbone_path=reward_models / NAMES["clip"])
    assert error_part(error.value) == "weights"
