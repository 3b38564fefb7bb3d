"""The lab's world: procedurally drawn shapes with captions, where every image's true probability is known.

An image shows one shape on a plain background. Its attributes are drawn independently from the
categorical distributions in `ATTRIBUTES` (set on purpose: common and rare values), so the probability of
any attribute combination is the product of its values' probabilities. Captions name some or all of
the attributes from fixed templates. `extract` reads the attributes back from any RGB image by plain
image analysis (no neural network), so it can judge images a model generated.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64  # image side in pixels

# attribute -> {value: probability}; the rare values are what MinorityPrompt should find more often
ATTRIBUTES: dict[str, dict[str, float]] = {
    "shape": {"circle": 0.5, "square": 0.35, "triangle": 0.15},
    "color": {"red": 0.45, "blue": 0.3, "green": 0.2, "yellow": 0.05},
    "size": {"large": 0.7, "small": 0.3},
    "position": {"center": 0.6, "left": 0.2, "right": 0.2},
    "background": {"white": 0.8, "black": 0.2},
}
COLORS = {"red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 170, 60), "yellow": (235, 210, 40)}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15)}
CENTERS = {"left": 0.27, "center": 0.5, "right": 0.73}  # x of the shape's center, as a fraction of SIZE
RADII = {"large": 0.2, "small": 0.1}  # half-extent, as a fraction of SIZE


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    size: str
    position: str
    background: str

    def caption(self, named: tuple[str, ...] = ("size", "color", "shape", "position", "background")) -> str:
        """A caption naming the attributes in `named` (shape always), e.g. 'a small red circle on the left,
        white background'."""
        words = [getattr(self, a) for a in ("size", "color") if a in named] + [self.shape]
        text = "a " + " ".join(words)
        if "position" in named:
            text += " in the center" if self.position == "center" else f" on the {self.position}"
        if "background" in named:
            text += f", {self.background} background"
        return text

    def log_prob(self) -> float:
        return sum(math.log(ATTRIBUTES[a][v]) for a, v in asdict(self).items())


def sample_scenes(count: int, seed: int) -> list[Scene]:
    rng = np.random.default_rng(seed)
    columns = {}
    for attribute, dist in ATTRIBUTES.items():
        values = list(dist)
        columns[attribute] = rng.choice(len(values), size=count, p=np.array([dist[v] for v in values]))
    return [Scene(**{a: list(ATTRIBUTES[a])[int(columns[a][i])] for a in ATTRIBUTES}) for i in range(count)]


def draw(scene: Scene, jitter: np.random.Generator | None = None) -> Image.Image:
    """The scene as a SIZE x SIZE RGB image (small random jitter of position and size when given)."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[scene.background])
    pen = ImageDraw.Draw(image)
    dx, dy, dr = (0.0, 0.0, 0.0) if jitter is None else (*jitter.uniform(-0.03, 0.03, 2), jitter.uniform(-0.015, 0.015))
    cx, cy = (CENTERS[scene.position] + dx) * SIZE, (0.5 + dy) * SIZE
    r = (RADII[scene.size] + dr) * SIZE
    fill = COLORS[scene.color]
    if scene.shape == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif scene.shape == "square":
        pen.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


# -- reading attributes back ------------------------------------------------------------------------
def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    distances = [float(np.sum((rgb - np.array(palette[n], dtype=np.float64)) ** 2)) for n in names]
    return names[int(np.argmin(distances))]


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest connected region of the mask: the world has one shape, so stray pixels elsewhere (a
    decoder's corner artifacts, speckles) are not part of it and must not stretch its bounding box."""
    from scipy import ndimage  # a ComfyUI requirement

    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == 1 + int(np.argmax(sizes))


def extract(image: Image.Image | np.ndarray) -> dict[str, str | None]:
    """Attributes read from an RGB image (any size; values in 0..255 or 0..1 floats). None where the
    image shows no shape (then only the background is read)."""
    pixels = np.asarray(image, dtype=np.float64)
    if pixels.max() <= 1.0:
        pixels = pixels * 255.0
    pixels = pixels[..., :3]
    height, width = pixels.shape[:2]
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background_rgb = np.median(border, axis=0)
    background = _nearest(background_rgb, BACKGROUNDS)
    distance = np.sqrt(((pixels - background_rgb) ** 2).sum(axis=-1))
    mask = _largest_blob(distance > 80)
    area = mask.mean()
    if area < 0.004:
        return dict(shape=None, color=None, size=None, position=None, background=background)
    shape_rgb = np.median(pixels[mask], axis=0)
    color = _nearest(shape_rgb, COLORS)
    # the outline at half contrast: a blurred edge (a decoder's) then keeps the drawn shape's extent and
    # corners, where a fixed low threshold would take in the blur and round every shape
    mask = _largest_blob(distance > 0.5 * np.sqrt(((shape_rgb - background_rgb) ** 2).sum()))
    ys, xs = np.nonzero(mask)
    box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    fill = mask.sum() / box  # square ~1, circle ~pi/4, triangle ~1/2
    shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
    extent = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / max(height, width)
    size = "large" if extent > 0.3 else "small"
    center = xs.mean() / width
    position = "left" if center < 0.385 else "right" if center > 0.615 else "center"
    return dict(shape=shape, color=color, size=size, position=position, background=background)


def attribute_accuracy(images, scenes: list[Scene]) -> dict[str, float]:
    """Per attribute, the share of images (H x W x 3, as `extract` reads them) showing their scene's value."""
    found = [extract(image) for image in images]
    return {a: round(sum(f[a] == getattr(s, a) for f, s in zip(found, scenes)) / len(scenes), 3) for a in ATTRIBUTES}
