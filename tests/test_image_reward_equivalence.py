"""Our ImageReward equals the official `image-reward` 1.5 package, at full v1.0 size.

tests/fixtures/image_reward/make_fixture.py ran the package (in an isolated environment: it cannot be
installed beside current transformers) with every weight a pure function of its key and shape
(fill_rule.py), and recorded the state-dict keys and shapes, the token ids and the scores. Here our
model is built from the same key list by the same rule; it must accept exactly the official keys and
reproduce the token ids and the scores within 1e-4.
"""
import json
from pathlib import Path

import pytest
import torch

from core.rewards.image_reward import (UNUSED_PREFIXES, ImageReward, build_image_reward_model,
                                       load_image_reward_tokenizer)

FIXTURE = Path(__file__).parent / "fixtures" / "image_reward"


@pytest.fixture(scope="module")
def fill_rule():
    import importlib.util

    spec = importlib.util.spec_from_file_location("image_reward_fill_rule", FIXTURE / "fill_rule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def expected():
    return json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture(scope="module")
def official_state(fill_rule):
    keys = json.loads((FIXTURE / "keys.json").read_text())
    state = {}
    for entry in keys:
        value = fill_rule.fill_value(entry["key"], entry["shape"])
        # the fill rule must reproduce the package side's tensors (same torch RNG stream)
        assert fill_rule.checksum(value) == pytest.approx(entry["checksum"], rel=1e-6, abs=1e-6), entry["key"]
        state[entry["key"]] = value
    return state


def test_official_key_list_is_exactly_ours_plus_the_unused_projections(official_state, expected):
    with torch.device("meta"):
        model = build_image_reward_model({k: v.to("meta") for k, v in official_state.items()},
                                         expected["med_config"], "official keys")
    ours = set(model.state_dict())
    unused = {k for k in official_state if k.startswith(UNUSED_PREFIXES)}
    assert ours == set(official_state) - unused
    assert unused == {"blip.vision_proj.weight", "blip.vision_proj.bias", "blip.text_proj.weight", "blip.text_proj.bias"}
    assert sum(v.numel() for v in model.state_dict().values() if v.is_floating_point()) > 440e6  # full ViT-L + BERT


def test_scores_match_the_official_package(official_state, expected, fill_rule):
    tokenizer = load_image_reward_tokenizer(FIXTURE, int(expected["med_config"]["vocab_size"]))
    assert len(tokenizer) == expected["vocab_size_after_special_tokens"]
    model = build_image_reward_model(official_state, expected["med_config"], "official keys").eval()
    reward = ImageReward(model, tokenizer)
    ids, mask = reward.tokenize(fill_rule.PROMPTS)
    assert ids.tolist() == expected["input_ids"]
    assert mask.tolist() == expected["attention_mask"]
    with torch.no_grad():
        scores = reward(fill_rule.images(), fill_rule.PROMPTS)
    reference = torch.tensor(expected["scores"])
    assert float(reference.max() - reference.min()) > 0.05, "degenerate fixture: scores barely differ"
    torch.testing.assert_close(scores, reference, rtol=0, atol=1e-4)
