"""The GFlowNet rewriter's FL-DB and TB losses equal the authors' (dbsxodud-11/PAG @ e37db9a,
`GFNTrainer.compute_db_loss` with loss "fl-db", and `compute_tb_loss`) on fixed trajectories: padding,
different lengths, the progressive reward decomposition, three (beta, gamma, tau) settings. The numbers
come from their code in an isolated environment (tests/fixtures/gfn_authors/make_fixture.py)."""
import json
from pathlib import Path

import pytest
import torch

from core.gfn_rewriter import objectives
from core.gfn_rewriter.objectives import LogReward

EXPECTED = json.loads((Path(__file__).parent / "fixtures" / "gfn_authors" / "expected.json").read_text())
T = {k: torch.tensor(v, dtype=torch.float64) for k, v in EXPECTED["trajectories"].items() if k != "lengths"}


def _after_the_end(values: torch.Tensor, mask: torch.Tensor, seed: int) -> torch.Tensor:
    """The authors' loop writes zeros after a rewrite's end; our flow head outputs something there (it sees
    every position), so ours gets arbitrary values there and must mask them itself."""
    junk = torch.randn(values.shape, generator=torch.Generator().manual_seed(seed), dtype=values.dtype) * 10
    return torch.where(mask.bool(), values, junk)


def ours(case: dict) -> dict[str, torch.Tensor]:
    mask = T["attn_mask"]
    steps = T["lm_log_reward_decom"][:, :mask.shape[1]]  # the pad column beyond the flows carries nothing
    # our trainer's inputs: log p_ref per action and the task reward c, as LogReward hands them out
    log_reward = LogReward(steps, T["c_log_reward"], case["beta"], case["gamma"])
    tau = case["tau"]
    log_flow, log_pf = _after_the_end(T["log_fs"], mask, 1), _after_the_end(T["log_pfs"], mask, 2)
    return {"fl-db": objectives.fl_db(log_flow, log_pf, log_reward.steps(tau), log_reward.terminal(tau), mask),
            "tb": objectives.tb(T["log_z"], log_pf, log_reward.total / tau, mask)}


@pytest.mark.parametrize("case", EXPECTED["cases"], ids=lambda c: f"beta{c['beta']}-gamma{c['gamma']}-tau{c['tau']}")
@pytest.mark.parametrize("loss", ["fl-db", "tb"])
def test_losses_equal_the_authors_on_fixed_trajectories(case, loss):
    got = ours(case)[loss]
    authors = torch.tensor(case[loss], dtype=torch.float64)
    print(f"{loss} beta {case['beta']} gamma {case['gamma']} tau {case['tau']}: ours {got.tolist()}, "
          f"authors {authors.tolist()}")
    torch.testing.assert_close(got, authors, rtol=0, atol=1e-6)


def test_the_trajectories_exercise_padding_and_the_terminal_reward():
    """What the fixture must contain for the comparison to mean something: rows of different lengths with
    zeros after the end (where the authors' loop writes them), nonzero flows and task rewards."""
    assert EXPECTED["trajectories"]["lengths"] == [2, 4, 5]
    mask = T["attn_mask"]
    assert (T["log_fs"][mask == 0] == 0).all() and (T["log_fs"][mask == 1] != 0).all()
    assert (T["c_log_reward"].abs() > 1e-3).all()
    # a loss that forgot the terminal reward differs by far more than the tolerance
    case = EXPECTED["cases"][0]
    log_reward = LogReward(T["lm_log_reward_decom"][:, :5], T["c_log_reward"], case["beta"], case["gamma"])
    authors = torch.tensor(case["fl-db"], dtype=torch.float64)
    no_terminal = objectives.fl_db(T["log_fs"], T["log_pfs"], log_reward.steps(case["tau"]),
                                   torch.zeros(3, dtype=torch.float64), mask)
    assert (no_terminal - authors).abs().max() > 1.0


# -- diverse beam search: the authors' evaluation call ---------------------------------------------------------
BEAM = json.loads((Path(__file__).parent / "fixtures" / "gfn_authors" / "expected_beam.json").read_text())
LAB_POLICY = Path(__file__).resolve().parents[1] / BEAM["policy"]["folder"]


@pytest.fixture(scope="module")
def lab_policy():
    import hashlib

    from core.gfn_rewriter.policy_folder import load_policy

    assert hashlib.sha256((LAB_POLICY / "model.safetensors").read_bytes()).hexdigest() == BEAM["policy"]["sha256"]
    return load_policy(LAB_POLICY)


def test_the_fixture_ran_the_authors_call():
    """make_beam_fixture.py read these from their eval.py; the node's defaults are the same numbers."""
    from core.gfn_rewriter.rewrite import RewriteSettings

    kwargs, s = BEAM["authors"]["kwargs"], RewriteSettings()
    assert kwargs["do_sample"] is False and kwargs["num_beams"] == kwargs["num_beam_groups"] == "args.num_samples"
    assert (s.mode, s.count, s.diversity_penalty, s.length_penalty, s.min_new_tokens, s.max_new_tokens) == \
        ("diverse_beam_search", 16, kwargs["diversity_penalty"], kwargs["length_penalty"], kwargs["min_new_tokens"],
         kwargs["max_new_tokens"])


@pytest.mark.parametrize("run", BEAM["runs"], ids=lambda r: f"{r['num_beams']}in{r['num_beam_groups']}-"
                                                          f"{r['prompt'].replace(' ', '_')}")
def test_diverse_beam_search_equals_the_authors_call(lab_policy, run):
    """Hugging Face's group beam search with their keyword arguments (transformers 4.48.3) and ours return the
    same rewrites in the same order; the fixture has duplicates and every group size the node uses."""
    from core.gfn_rewriter.rewrite import diverse_beam_search
    from core.gfn_rewriter.trajectories import encode_prompt

    model, tokenizer = lab_policy
    ids = encode_prompt(tokenizer, run["prompt"], BEAM["template"])
    assert ids == run["input_ids"]
    kwargs = BEAM["authors"]["kwargs"]
    got = diverse_beam_search(model, ids, tokenizer.eos_token_id, run["num_beams"], run["num_beam_groups"],
                              kwargs["diversity_penalty"], run["max_new_tokens"], run["min_new_tokens"],
                              kwargs["length_penalty"])
    assert got == run["rewrites"]


def test_seeded_changes_break_the_beam_equivalence(lab_policy):
    """The old loop's rules (length penalty +1, i.e. the per-token mean) and a diversity penalty that is not
    applied give other rewrites for the authors' 16 beams in 16 groups."""
    from core.gfn_rewriter.rewrite import diverse_beam_search

    model, tokenizer = lab_policy
    run = next(r for r in BEAM["runs"] if r["num_beams"] == 16 and r["prompt"] == "a blue square")
    common = dict(max_new_tokens=run["max_new_tokens"], min_new_tokens=run["min_new_tokens"])
    eos = tokenizer.eos_token_id
    mean_per_token = diverse_beam_search(model, run["input_ids"], eos, 16, 16, 1.0, length_penalty=1.0, **common)
    no_diversity = diverse_beam_search(model, run["input_ids"], eos, 16, 16, 0.0, length_penalty=-1.0, **common)
    assert mean_per_token != run["rewrites"] and no_diversity != run["rewrites"]
