"""core/metrics: CLIPScore, embedding diversity and FID, checked against values computed by hand."""
import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from core.metrics import (InceptionFeatures, clip_score, feature_statistics, fid, frechet_distance,  # noqa: E402
                          image_diversity, mean_pairwise_distance, prompt_diversity)
from core.rewards.clip_backbone import HFClipBackbone  # noqa: E402
from core.rewards.preprocess import ImageTransform  # noqa: E402

COMFYUI_PATH = Path(os.environ.get("COMFYUI_PATH", Path.home() / ".cache/prompt-optim/ComfyUI-0.3.75"))
PROMPTS = ["a red cube on a table", "a photo of a dog", "an oil painting of a lighthouse at night"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are small; on 2 OpenMP threads they run ~10x slower when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- CLIPScore


@pytest.fixture(scope="module")
def tiny_clip():
    """A random CLIPModel small enough for the CPU, with the real CLIP BPE tokenizer ComfyUI ships."""
    transformers = pytest.importorskip("transformers")
    tokenizer_dir = COMFYUI_PATH / "comfy" / "sd1_tokenizer"
    if not (tokenizer_dir / "vocab.json").is_file():
        pytest.skip(f"no CLIP tokenizer files in {tokenizer_dir} (set COMFYUI_PATH)")
    tokenizer = transformers.CLIPTokenizer(str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"))
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = transformers.CLIPConfig(
        text_config=dict(tower, vocab_size=49408, max_position_embeddings=77),
        vision_config=dict(tower, image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    return HFClipBackbone(model, tokenizer, ImageTransform(size=32))


def negated_text_projection(backbone: HFClipBackbone) -> HFClipBackbone:
    """The same CLIP with every text embedding negated: each cosine changes sign."""
    model = copy.deepcopy(backbone.model)
    with torch.no_grad():
        model.text_projection.weight.neg_()
    return HFClipBackbone(model, backbone.tokenizer, backbone.transform)


def test_clip_score_is_100_times_clamped_cosine(tiny_clip):
    torch.manual_seed(1)
    images = torch.rand(3, 3, 40, 48)
    tokens = tiny_clip.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    all_scores = []
    # a random CLIP may give cosines of one sign only; its negated twin covers the other sign
    for backbone in (tiny_clip, negated_text_projection(tiny_clip)):
        scores = clip_score(backbone, images, PROMPTS)
        with torch.no_grad():
            out = backbone.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                                 pixel_values=ImageTransform(size=32)(images))
        cosines = (out.image_embeds * out.text_embeds).sum(-1)  # CLIPModel returns unit embeddings
        assert scores.shape == (3,)
        assert not scores.requires_grad
        torch.testing.assert_close(scores, 100 * cosines.clamp(min=0), atol=1e-4, rtol=1e-4)
        assert ((scores >= 0) & (scores <= 100)).all()
        all_scores.append(scores)
    plain, negated = all_scores
    assert ((plain == 0) != (negated == 0)).all()  # exactly one of each pair was clipped
    assert (plain + negated).min() > 1.0  # and the other one was not


def test_clip_score_repeats_a_single_prompt(tiny_clip):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(clip_score(tiny_clip, images, "a cat"), clip_score(tiny_clip, images, ["a cat"] * 2))
    with pytest.raises(ValueError, match="2 prompts for 3 images"):
        clip_score(tiny_clip, torch.rand(3, 3, 32, 32), ["a", "b"])


# ---------------------------------------------------------------- diversity


def test_identical_embeddings_have_zero_distance():
    assert mean_pairwise_distance(torch.tensor([[1.0, 2.0, 3.0]] * 4)) == pytest.approx(0.0, abs=1e-12)


def test_orthonormal_embeddings_have_distance_one():
    assert mean_pairwise_distance(torch.eye(5)) == pytest.approx(1.0, abs=1e-12)
    assert mean_pairwise_distance(3.0 * torch.eye(4)[:3]) == pytest.approx(1.0, abs=1e-12)  # scale-free


def test_mean_pairwise_distance_by_hand():
    # pairs: (a, b) cos 0 -> 1; (a, c) cos 1/sqrt2 -> 1 - 1/sqrt2; (b, c) cos 1/sqrt2 -> 1 - 1/sqrt2
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    expected = (1 + 2 * (1 - 1 / np.sqrt(2))) / 3
    assert mean_pairwise_distance(embeddings) == pytest.approx(expected, abs=1e-9)
    # opposite vectors are at distance 2, the maximum
    assert mean_pairwise_distance(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2.0)


def test_mean_pairwise_distance_needs_two_rows():
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        mean_pairwise_distance(torch.ones(1, 8))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        mean_pairwise_distance(torch.ones(8))


def test_image_and_prompt_diversity_use_the_backbone_embeddings(tiny_clip):
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        image_embeddings = tiny_clip.encode_images(images)
        prompt_embeddings = tiny_clip.encode_prompts(PROMPTS)
    assert image_diversity(tiny_clip, images) == pytest.approx(mean_pairwise_distance(image_embeddings), abs=1e-9)
    assert prompt_diversity(tiny_clip, PROMPTS) == pytest.approx(mean_pairwise_distance(prompt_embeddings), abs=1e-9)
    assert prompt_diversity(tiny_clip, [PROMPTS[0]] * 3) == pytest.approx(0.0, abs=1e-6)
    assert prompt_diversity(tiny_clip, PROMPTS) > 1e-4
    with pytest.raises(ValueError, match="at least 2"):
        image_diversity(tiny_clip, images[:1])


# ---------------------------------------------------------------- Fréchet distance


def random_covariance(dim: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def test_frechet_distance_of_identical_statistics_is_zero():
    mu, sigma = np.random.default_rng(0).normal(size=16), random_covariance(16, 1)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    assert abs(frechet_distance(torch.from_numpy(mu), torch.from_numpy(sigma), mu, sigma)) < 1e-6


def test_frechet_distance_of_diagonal_gaussians_has_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3.0, size=6), rng.uniform(0.1, 3.0, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    # with equal covariances only the means count
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s1)) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9)


def test_frechet_distance_is_symmetric_and_positive():
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    sigma1, sigma2 = random_covariance(10, 4), random_covariance(10, 5)
    forward, backward = frechet_distance(mu1, sigma1, mu2, sigma2), frechet_distance(mu2, sigma2, mu1, sigma1)
    assert forward == pytest.approx(backward, rel=1e-9)
    assert forward > 0.1


def test_frechet_distance_without_scipy_matches(monkeypatch):
    import builtins

    rng = np.random.default_rng(6)
    args = (rng.normal(size=8), random_covariance(8, 7), rng.normal(size=8), random_covariance(8, 8))
    with_scipy = frechet_distance(*args)
    real_import = builtins.__import__

    def no_scipy(name, *rest, **kwargs):
        if name == "scipy" or name.startswith("scipy."):
            raise ImportError("scipy hidden by the test")
        return real_import(name, *rest, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    assert frechet_distance(*args) == pytest.approx(with_scipy, rel=1e-8)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="covariances must be 3 x 3"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


def test_feature_statistics_and_fid():
    rng = np.random.default_rng(9)
    features = rng.normal(size=(50, 4))
    mu, sigma = feature_statistics(torch.from_numpy(features))
    np.testing.assert_allclose(mu.numpy(), features.mean(0), atol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(features, rowvar=False), atol=1e-12)
    assert fid(features, features) == pytest.approx(0.0, abs=1e-6)
    shifted = fid(torch.from_numpy(features), torch.from_numpy(features + 2.0))
    assert shifted == pytest.approx(4 * 4.0, rel=1e-6)  # same covariance, means 2 apart in each of 4 dims
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(torch.ones(1, 4))


# ---------------------------------------------------------------- Inception features


@pytest.fixture(scope="module")
def inception_state():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True).state_dict()


@pytest.fixture(scope="module")
def inception_file(inception_state, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inception") / "inception_v3_random.pth"
    torch.save(inception_state, path)
    return path


def test_inception_features_shape_finite_deterministic(inception_file):
    extractor = InceptionFeatures(inception_file)
    images = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    first, second = extractor(images), extractor(images)
    assert first.shape == (2, 2048)
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)
    assert not torch.allclose(first[0], first[1])  # different images, different features
    extractor.train()
    assert not extractor.network.training
    # batching must not change the result
    extractor.batch_size = 1
    torch.testing.assert_close(extractor(images), first, atol=1e-5, rtol=1e-4)
    # [0, 1] maps to [-1, 1]: mid-gray of any size reaches the network as a 299 x 299 field of zeros
    with torch.no_grad():
        zeros_features = extractor.network(torch.zeros(1, 3, 299, 299))
    torch.testing.assert_close(extractor(torch.full((1, 3, 50, 70), 0.5)), zeros_features)


def test_inception_reads_safetensors(inception_state, tmp_path):
    save_file = pytest.importorskip("safetensors.torch").save_file
    path = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in inception_state.items()}, str(path))
    extractor = InceptionFeatures(path)
    torch.testing.assert_close(extractor.network.Mixed_7c.branch_pool.conv.weight,
                               inception_state["Mixed_7c.branch_pool.conv.weight"])


def test_inception_file_missing_a_key_is_named(inception_state, tmp_path):
    state = dict(inception_state)
    del state["Mixed_6a.branch3x3.conv.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken_inception.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="Mixed_6a.branch3x3.conv.weight") as error:
        InceptionFeatures(path)
    assert "broken_inception.pth" in str(error.value)
    assert "extra.weight" in str(error.value)


def test_inception_missing_file_is_named(tmp_path):
    path = tmp_path / "no_such_inception.pth"
    with pytest.raises(FileNotFoundError, match="no_such_inception.pth"):
        InceptionFeatures(path)
