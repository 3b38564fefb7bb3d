"""The lab world (lab/world.py): known attribute probabilities and an extractor that reads them back."""
import itertools
import math

import numpy as np
import pytest

from lab.world import ATTRIBUTES, SIZE, Scene, attribute_accuracy, draw, extract, sample_scenes


def test_every_combination_is_drawn_and_read_back_exactly():
    jitter = np.random.default_rng(0)
    for values in itertools.product(*(list(d) for d in ATTRIBUTES.values())):
        scene = Scene(*values)
        for _ in range(2):  # with position/size jitter
            assert extract(draw(scene, jitter)) == scene.__dict__, scene


def test_extractor_reads_float_images_and_resized_images():
    scene = Scene("triangle", "yellow", "small", "right", "black")
    image = draw(scene)
    as_float = np.asarray(image, dtype=np.float32) / 255.0
    assert extract(as_float) == scene.__dict__
    assert extract(image.resize((2 * SIZE, 2 * SIZE))) == scene.__dict__


def test_stray_pixels_away_from_the_shape_are_ignored():
    """A decoder can leave single off-color pixels in the corners; they must not change the reading
    (without the largest-blob rule the bounding box spans the image and every shape reads 'triangle')."""
    for scene in (Scene("square", "red", "large", "center", "white"), Scene("circle", "blue", "small", "left", "black")):
        pixels = np.asarray(draw(scene)).copy()
        for y, x in ((0, 0), (0, SIZE - 1), (SIZE - 1, 0), (SIZE - 1, SIZE - 1)):
            pixels[y, x] = (128, 128, 128)
        assert extract(pixels) == scene.__dict__, scene


def test_an_empty_image_has_no_shape():
    from PIL import Image

    found = extract(Image.new("RGB", (SIZE, SIZE), (250, 250, 250)))
    assert found == dict(shape=None, color=None, size=None, position=None, background="white")


def test_probabilities_are_distributions_and_log_prob_sums_to_one():
    for dist in ATTRIBUTES.values():
        assert sum(dist.values()) == pytest.approx(1.0)
    total = sum(math.exp(Scene(*v).log_prob()) for v in itertools.product(*(list(d) for d in ATTRIBUTES.values())))
    assert total == pytest.approx(1.0)


@pytest.mark.claim
def test_sampled_frequencies_follow_the_distributions():
    scenes = sample_scenes(20000, seed=1)
    for attribute, dist in ATTRIBUTES.items():
        for value, p in dist.items():
            share = sum(getattr(s, attribute) == value for s in scenes) / len(scenes)
            # 4 standard errors of a binomial share: fails by chance with probability < 1e-4 per value
            assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / len(scenes)), (attribute, value, share, p)
    assert sample_scenes(5, seed=2) == sample_scenes(5, seed=2) != sample_scenes(5, seed=3)


def test_captions_name_what_was_asked():
    scene = Scene("circle", "red", "small", "left", "white")
    assert scene.caption() == "a small red circle on the left, white background"
    assert scene.caption(("color",)) == "a red circle"
    assert Scene("square", "blue", "large", "center", "black").caption(("position",)) == "a square in the center"


def test_attribute_accuracy_counts_matches_per_attribute():
    scenes = [Scene("circle", "red", "large", "left", "white"), Scene("square", "blue", "small", "right", "black")]
    images = [np.asarray(draw(s)) for s in scenes]
    assert attribute_accuracy(images, scenes) == {a: 1.0 for a in ATTRIBUTES}
    recolored = [Scene("circle", "green", "large", "left", "white"), scenes[1]]
    assert attribute_accuracy(images, recolored) == {a: 0.5 if a == "color" else 1.0 for a in ATTRIBUTES}
