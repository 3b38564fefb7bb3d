"""The fidelity lab's fast subset: each landed method's claim, in direction, on the lab model inside ComfyUI.

lab/measure.py at scale 'ci' (few prompts, few images, 12 steps), through the real executor, judged by the
world's attribute extractor. The full run is a benchmark: benchmarks/lab_results.md. Images are paired
(same prompts and seeds for the baseline and the method), so the differences below are paired too.
"""
import numpy as np
import pytest

from lab import measure
from lab.world import Scene

SCALE = measure.SCALES["ci"]


def paired(base: list[float], method: list[float]) -> tuple[float, float]:
    """Mean paired difference (method - base) and its standard error."""
    d = np.asarray(method, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def log_probs(arm: measure.Arm) -> list[float]:
    """True log-probability of each image's attributes; an image with no shape counts as the rarest value."""
    floor = min(Scene(s, c, z, p, b).log_prob() for s in ("triangle",) for c in ("yellow",) for z in ("small",)
                for p in ("left",) for b in ("black",))
    return [Scene(**f).log_prob() if f["shape"] is not None else floor for f in arm.found]


@pytest.fixture(scope="module")
def minority(comfy, lab_checkpoint):
    return measure.minority_experiment(comfy, lab_checkpoint.name, SCALE, ablations=False)


@pytest.fixture(scope="module")
def date(comfy, lab_checkpoint, lab_reward):
    return measure.date_experiment(comfy, lab_checkpoint.name, lab_reward.name, SCALE, ablations=False)
