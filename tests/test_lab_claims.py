"""The fidelity lab's fast subset: each landed method against the baseline on the lab model inside ComfyUI.

lab/measure.py at scale 'ci' (few prompts, few images, 12 steps), through the real executor, judged by the
world's attribute extractor. The full run is a benchmark: benchmarks/lab_results.md. Only what holds in the
full run is asserted here. On the lab model the methods' claims do NOT hold, except IPGO's gain at the
seed it trained on (MinorityPrompt leaves every extracted attribute as the baseline's, DATE changes one
image in 32, IPGO does not carry over to unseen seeds or prompts): those are printed, not asserted;
DATE and IPGO are not re-run here (time), their full-run numbers are in the table. The GFlowNet
rewriter's claim holds in the full run and is asserted here on fewer prompts and rewrites.
Images are paired (same prompts and seeds for the baseline and the method).
"""
import numpy as np
import pytest

from lab import measure
from lab.world import Scene

pytestmark = pytest.mark.claim
SCALE = measure.SCALES["ci"]


def paired(base: list[float], method: list[float]) -> tuple[float, float]:
    """Mean paired difference (method - base) and its standard error."""
    d = np.asarray(method, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def log_probs(arm: measure.Arm) -> list[float]:
    """True log-probability of each image's attributes; an image with no shape counts as the rarest value."""
    floor = Scene("triangle", "yellow", "small", "left", "black").log_prob()
    return [Scene(**f).log_prob() if f["shape"] is not None else floor for f in arm.found]


@pytest.fixture(scope="module")
def minority(comfy, lab_checkpoint):
    return measure.minority_experiment(comfy, lab_checkpoint.name, SCALE, ablations=False)


def test_minority_prompt_keeps_the_prompted_attributes(minority):
    """Holds in the full run (benchmarks/lab_results.md): named accuracy within 0.1 of the baseline.
    The claim itself (rarer attributes, lower true log-probability, lower likelihood estimate) does NOT
    hold on the lab model: the appended token moves its samples too little to change an extracted
    attribute (benchmarks/lab_results.md). The numbers are printed here and recorded there, not asserted."""
    base, method = minority
    print(f"MinorityPrompt vs baseline (ci): log p {paired(log_probs(base), log_probs(method))}, rare share "
          f"{base.rare_share()[0]:.3f} -> {method.rare_share()[0]:.3f}, likelihood estimate "
          f"{paired(base.likelihood, method.likelihood)}")
    assert len(method.found) == len(base.found) == SCALE.prompts * SCALE.seeds * SCALE.batch
    assert method.named_accuracy()[0] >= base.named_accuracy()[0] - 0.1, (base.named_accuracy(), method.named_accuracy())
    assert all(np.isfinite(base.likelihood)) and len(base.likelihood) == len(base.found)


@pytest.fixture(scope="module")
def rewriter(comfy, lab_checkpoint, lab_reward):
    return measure.rewriter_experiment(comfy, lab_checkpoint.name, lab_reward.name, SCALE)


def test_gflownet_rewriter_is_more_diverse_than_reward_maximization_at_comparable_reward(rewriter):
    """The lab's rewriter policies (lab/rewriter.py) through the rewriter node, CLIP Text Encode and KSampler,
    every rewrite of a prompt drawn from the same seed. Margins: the GFlowNet's reward at most 0.05 below
    reward maximization's; its text diversity above by more than two standard errors of the per-prompt
    differences (prompts are paired). Image diversity is printed, not asserted: in the full run it is small
    for both (0.036 ± 0.013 vs 0.015 ± 0.006 of attribute pairs differ, 1.5 standard errors apart; the model
    ignores position and mostly background, so most words a rewrite adds do not change the extracted image),
    and at this scale its direction is a coin toss that other CPUs may turn."""
    by_name = {arm.name.split(" (")[0]: arm for arm in rewriter}
    gfn, rmax, ref = by_name["GFlowNet"], by_name["reward maximization"], by_name["reference policy p_ref"]
    assert len(gfn.found) == len(rmax.found) == SCALE.rewriter_prompts * SCALE.rewrites
    for arm in rewriter:
        d = measure.rewriter_diversity(arm)
        print(f"{arm.name}: reward {np.mean(arm.rewards):.3f}, text diversity {d['text'][0]:.3f}, "
              f"image diversity {d['image'][0]:.3f}, shape+color kept {arm.all_named_right()[0]:.3f}")
    assert np.mean(gfn.rewards) >= np.mean(rmax.rewards) - 0.05
    assert np.mean(gfn.rewards) > np.mean(ref.rewards), "fine-tuning raised the reward over p_ref"
    diff, se = paired(_text_diversities(rmax), _text_diversities(gfn))
    print(f"text diversity, GFlowNet - reward maximization, paired over prompts: {diff:.3f} ± {se:.3f}")
    assert diff > 2 * se and diff > 0.1, (diff, se)


def _text_diversities(arm: measure.Arm) -> list[float]:
    from core.gfn_rewriter.metrics import text_diversity

    return [text_diversity(rewrites) for _, rewrites, _ in arm.groups]
