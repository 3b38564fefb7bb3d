"""Unit tests for core/ipgo/optimize.py (plain PyTorch on the CPU, no ComfyUI).

Rewards here are closed-form functions of the conditioning, so the training loop's bookkeeping (best
epoch, learning-rate schedule, accumulation, cancel) can be checked exactly.
"""
import math

import pytest
import torch

from core.ipgo.optimize import (
    BoundaryTokens,
    IpgoSettings,
    IpgoSettingsError,
    LearnedTokens,
    TokenBlock,
    conformity,
    inject,
    rotate_pairs,
    rotate_tokens,
    train,
)

W = 16  # conditioning width (768 / 2048 at scale)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def paper_rotation(tokens: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """The paper's rotation written out coordinate by coordinate (float64): for token i and angle j,
    every pair (i + j + 2k, i + j + 2k + 1) mod width turns by angles[i, j], angle 0 first."""
    out = tokens.double().clone()
    width = out.shape[1]
    for i in range(out.shape[0]):
        for j in range(angles.shape[1]):
            theta = float(angles[i, j])
            row = out[i].clone()
            for k in range(width // 2):
                a, b = (i + j + 2 * k) % width, (i + j + 2 * k + 1) % width
                row[a] = out[i, a] * math.cos(theta) - out[i, b] * math.sin(theta)
                row[b] = out[i, a] * math.sin(theta) + out[i, b] * math.cos(theta)
            out[i] = row
    return out


# --------------------------------------------------------------------------------------------------
# parameterization
# --------------------------------------------------------------------------------------------------
class TestRotation:
    def test_matches_the_papers_coordinate_formula(self):
        tokens = torch.randn(4, W, generator=_gen(0), dtype=torch.float64)
        angles = (torch.rand(4, 2, generator=_gen(1), dtype=torch.float64) * 2 - 1) * math.pi
        torch.testing.assert_close(rotate_tokens(tokens, angles), paper_rotation(tokens, angles))

    def test_is_a_rotation_norm_kept_and_zero_angle_is_identity(self):
        tokens = torch.randn(5, W, generator=_gen(2), dtype=torch.float64)
        angles = torch.rand(5, 2, generator=_gen(3), dtype=torch.float64) * 6 - 3
        torch.testing.assert_close(rotate_tokens(tokens, angles).norm(dim=1), tokens.norm(dim=1))
        torch.testing.assert_close(rotate_tokens(tokens, torch.zeros(5, 2, dtype=torch.float64)), tokens)
        assert not torch.allclose(rotate_tokens(tokens, angles), tokens)

    def test_quarter_turn_of_the_first_pair(self):
        v = torch.zeros(W, dtype=torch.float64)
        v[0] = 1.0
        turned = rotate_pairs(v, torch.tensor(math.pi / 2, dtype=torch.float64), 0)
        expected = torch.zeros(W, dtype=torch.float64)
        expected[1] = 1.0
        torch.testing.assert_close(turned, expected, atol=1e-12, rtol=0)
        # offset 1 pairs (1, 2): the same vector's coordinate 0 belongs to the wrapped pair (15, 0)
        wrapped = rotate_pairs(v, torch.tensor(math.pi / 2, dtype=torch.float64), 1)
        expected = torch.zeros(W, dtype=torch.float64)
        expected[W - 1] = -1.0
        torch.testing.assert_close(wrapped, expected, atol=1e-12, rtol=0)


class TestTokenBlock:
    def test_tokens_are_rotated_orthonormal_projections_of_the_coefficients(self):
        torch.manual_seed(0)
        block = TokenBlock(count=3, rank=5, width=W, bound=1.0, rotation=True)
        weight, bias = block.basis.weight.detach().double(), block.basis.bias.detach().double()
        assert weight.shape == (W, 5)
        torch.testing.assert_close(weight.T @ weight, torch.eye(5, dtype=torch.float64), atol=1e-5, rtol=0)
        expected = paper_rotation(block.coefficients.detach().double() @ weight.T + bias, block.angles.detach())
        torch.testing.assert_close(block().detach().double(), expected, atol=1e-5, rtol=0)
        assert (block.coefficients.abs() <= 1).all() and (block.angles.abs() <= math.pi).all()

    def test_without_rotation_tokens_are_the_projection(self):
        torch.manual_seed(0)
        block = TokenBlock(count=2, rank=4, width=W, bound=0.5, rotation=False)
        torch.testing.assert_close(block(), block.coefficients @ block.basis.weight.T + block.basis.bias)
        assert (block.coefficients.abs() <= 0.5).all()

    def test_rank_above_width_and_odd_width_are_refused(self):
        with pytest.raises(IpgoSettingsError, match="rank must be at most"):
            TokenBlock(2, W + 1, W, 1.0, True)
        with pytest.raises(IpgoSettingsError, match="even conditioning width"):
            TokenBlock(2, 3, 15, 1.0, True)
        TokenBlock(2, 3, 15, 1.0, False)  # no rotation, no constraint

    def test_projection_clamps_into_range(self):
        torch.manual_seed(0)
        block = TokenBlock(2, 4, W, 0.5, True)
        with torch.no_grad():
            block.coefficients.mul_(10)
            block.angles.mul_(10)
        block.project_()
        assert float(block.coefficients.detach().abs().max()) == pytest.approx(0.5)
        assert float(block.angles.detach().abs().max()) == pytest.approx(math.pi)


class TestBoundaryTokens:
    def test_seeded_and_leaves_the_global_rng_alone(self):
        settings = IpgoSettings(prefix_tokens=2, suffix_tokens=3, rank=4)
        torch.manual_seed(123)
        expected_next = torch.rand(3)
        torch.manual_seed(123)
        a = BoundaryTokens(W, settings, seed=7)
        assert torch.equal(torch.rand(3), expected_next)
        b, c = BoundaryTokens(W, settings, seed=7), BoundaryTokens(W, settings, seed=8)
        pa, sa = a()
        assert pa.shape == (2, W) and sa.shape == (3, W)
        assert torch.equal(pa, b()[0]) and torch.equal(sa, b()[1])
        assert not torch.equal(pa, c()[0])

    def test_an_empty_prefix_is_allowed(self):
        tokens = BoundaryTokens(W, IpgoSettings(prefix_tokens=0, suffix_tokens=2, rank=4))
        assert tokens()[0].shape == (0, W) and tokens()[1].shape == (2, W)


@pytest.mark.parametrize("field,value", [
    ("prefix_tokens", -1), ("rank", 0), ("last_steps", 0), ("epochs", 0), ("lr", 0.0), ("lr", float("nan")),
    ("lr_gamma", 0.0), ("accumulation", 0), ("conformity_weight", -1.0), ("clip_norm", float("inf")),
    ("bound", 0.0), ("lr_step", 1.5),
])
def test_out_of_range_settings_are_refused_with_the_name(field, value):
    with pytest.raises(IpgoSettingsError, match=field):
        IpgoSettings(**{field: value})


def test_no_tokens_at_all_is_refused():
    with pytest.raises(IpgoSettingsError, match="prefix_tokens plus suffix_tokens"):
        IpgoSettings(prefix_tokens=0, suffix_tokens=0)


def test_authors_defaults():
    """The notebook's prompt-wise run (Demos750/IPGO @ 5d5d267): no rotation (its slicing leaves no angles)."""
    s = IpgoSettings()
    assert (s.prefix_tokens, s.suffix_tokens, s.rank, s.rotation, s.conformity_weight, s.last_steps, s.epochs,
            s.lr, s.lr_step, s.lr_gamma, s.clip_norm, s.accumulation) == \
        (10, 10, 300, False, 0.001, 2, 50, 1e-3, 10, 0.9, 1.0, 4)


# --------------------------------------------------------------------------------------------------
# injection, conformity, saved tokens
# --------------------------------------------------------------------------------------------------
def test_inject_puts_prefix_before_and_suffix_after_every_prompt():
    states = torch.randn(2, 5, W, generator=_gen(4))
    prefix, suffix = torch.randn(3, W, generator=_gen(5)), torch.randn(1, W, generator=_gen(6))
    out = inject(states, prefix, suffix)
    assert out.shape == (2, 9, W)
    for b in range(2):
        assert torch.equal(out[b, :3], prefix) and torch.equal(out[b, 3:8], states[b]) and torch.equal(out[b, 8:], suffix)
    with pytest.raises(ValueError, match="wide"):
        inject(states, torch.zeros(1, W + 2), torch.zeros(1, W + 2))


def test_conformity_is_the_mean_absolute_shift_of_the_token_mean():
    original = torch.zeros(1, 2, 4)
    new = torch.tensor([[[1.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, -3.0]]])
    # token means: (1/3, 0, 0, -1) vs 0 -> (1/3 + 1) / 4
    assert float(conformity(new, original)[0]) == pytest.approx((1 / 3 + 1) / 4)


def test_learned_tokens_from_tensors_checks_what_it_loads():
    good = {"prefix": torch.zeros(2, W), "suffix": torch.ones(3, W)}
    tokens = LearnedTokens.from_tensors(good, {"family": "SD1.x"})
    assert tokens.width == W and tokens.info["family"] == "SD1.x"
    assert {k: v.shape for k, v in tokens.tensors().items()} == {"prefix": (2, W), "suffix": (3, W)}
    with pytest.raises(ValueError, match="no \\['suffix'\\]"):
        LearnedTokens.from_tensors({"prefix": torch.zeros(2, W)})
    with pytest.raises(ValueError, match="one width"):
        LearnedTokens.from_tensors({"prefix": torch.zeros(2, W), "suffix": torch.zeros(2, W + 1)})
    with pytest.raises(ValueError, match="NaN"):
        LearnedTokens.from_tensors({"prefix": torch.full((1, W), float("nan")), "suffix": torch.zeros(1, W)})


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------
def _prompts(count, length=4, seed=10):
    return [torch.randn(1, length, W, generator=_gen(seed + i)) for i in range(count)]


def _target_reward(target):
    """reward = -||mean over tokens of the conditioning - target||^2: smooth, maximal at the target."""
    def evaluate(index, cond, backward):
        reward = -((cond.mean(dim=1) - target) ** 2).sum(dim=1)
        backward(reward)
        return cond.detach().clone()
    return evaluate


SMALL = dict(prefix_tokens=2, suffix_tokens=2, rank=6, lr=0.05, conformity_weight=0.0)


@pytest.mark.claim
def test_reward_rises_tokens_stay_orthonormal_and_in_range_throughout():
    settings = IpgoSettings(epochs=25, **SMALL)
    tokens = BoundaryTokens(W, settings, seed=0)
    target = torch.randn(1, W, generator=_gen(20)) * 0.5
    checks = []
    result = train(tokens, _prompts(1), _target_reward(target), settings,
                   on_epoch=lambda e, r, lr: checks.append((tokens.orthonormality_error(), tokens.in_range())))
    assert result.curve[-1] > result.curve[0] + 0.1 * abs(result.curve[0]), result.curve
    assert all(err < 1e-4 for err, _ in checks) and all(ok for _, ok in checks)
    assert result.optimizer_steps == 25 and result.epochs_done == 25 and not result.cancelled
    # the kept tokens are those the best epoch was generated with (before that epoch's update)
    assert result.best_reward == max(result.curve) and result.best_epoch == result.curve.index(max(result.curve))
    seen = result.best_outputs[0]
    assert torch.equal(result.tokens.prefix, seen[0, :2]) and torch.equal(result.tokens.suffix, seen[0, -2:])


def test_step_lr_schedule_per_optimizer_step():
    settings = IpgoSettings(epochs=7, lr_step=3, lr_gamma=0.5, **SMALL)
    result = train(BoundaryTokens(W, settings), _prompts(1), _target_reward(torch.zeros(1, W)), settings)
    assert result.lrs == pytest.approx([0.05 * 0.5 ** (e // 3) for e in range(7)])


def test_accumulation_groups_prompts_and_returns_the_last_tokens():
    settings = IpgoSettings(epochs=2, accumulation=2, **SMALL)
    tokens = BoundaryTokens(W, settings)
    visits = []

    def evaluate(index, cond, backward):
        visits.append(index)
        backward(-(cond ** 2).sum(dim=(1, 2)))
        return index

    result = train(tokens, _prompts(5), evaluate, settings)
    assert visits == [0, 1, 2, 3, 4] * 2
    assert result.optimizer_steps == 2 * 3  # groups {0, 1}, {2, 3}, {4} per epoch
    final = tokens()
    assert torch.equal(result.tokens.prefix, final[0].detach()) and torch.equal(result.tokens.suffix, final[1].detach())
    assert result.best_outputs == {i: i for i in range(5)}


def test_accumulated_gradient_is_the_mean_over_the_group():
    """One step over prompts {a, b} moves the tokens as one step on the average of their losses."""
    settings = IpgoSettings(epochs=1, accumulation=2, clip_norm=0.0, **SMALL)
    prompts = _prompts(2)
    targets = [torch.randn(1, W, generator=_gen(30)), torch.randn(1, W, generator=_gen(31))]

    def per_prompt(index, cond, backward):
        backward(-((cond.mean(dim=1) - targets[index]) ** 2).sum(dim=1))

    grouped = BoundaryTokens(W, settings, seed=3)
    train(grouped, prompts, per_prompt, settings)

    # the same step by hand: Adam on the mean loss
    manual = BoundaryTokens(W, settings, seed=3)
    optimizer = torch.optim.Adam(manual.parameters(), lr=settings.lr)
    loss = 0
    for index, states in enumerate(prompts):
        cond = inject(states, *manual())
        loss = loss + ((cond.mean(dim=1) - targets[index]) ** 2).sum() / 2
    loss.backward()
    optimizer.step()
    manual.project_()
    for a, b in zip(grouped.parameters(), manual.parameters()):
        torch.testing.assert_close(a, b)


class Cancel(Exception):
    pass


def test_cancel_after_an_epoch_returns_the_best_so_far():
    settings = IpgoSettings(epochs=10, **SMALL)
    calls = []
    inner = _target_reward(torch.ones(1, W))

    def evaluate(index, cond, backward):
        calls.append(1)
        if len(calls) == 4:
            raise Cancel()
        return inner(index, cond, backward)

    result = train(BoundaryTokens(W, settings), _prompts(1), evaluate, settings, is_cancel=lambda e: isinstance(e, Cancel))
    assert result.cancelled and result.epochs_done == 3 and len(result.curve) == 3
    assert result.best_reward == max(result.curve)


def test_cancel_before_any_epoch_and_other_errors_propagate():
    settings = IpgoSettings(epochs=3, **SMALL)

    def cancel_now(index, cond, backward):
        raise Cancel()

    with pytest.raises(Cancel):
        train(BoundaryTokens(W, settings), _prompts(1), cancel_now, settings, is_cancel=lambda e: isinstance(e, Cancel))

    def forgets_backward(index, cond, backward):
        return None

    with pytest.raises(RuntimeError, match="exactly once"):
        train(BoundaryTokens(W, settings), _prompts(1), forgets_backward, settings)

    def nan_reward(index, cond, backward):
        backward(cond.sum(dim=(1, 2)) * float("nan"))

    with pytest.raises(FloatingPointError, match="not finite"):
        train(BoundaryTokens(W, settings), _prompts(1), nan_reward, settings)
    with pytest.raises(IpgoSettingsError, match="no prompts"):
        train(BoundaryTokens(W, settings), [], nan_reward, settings)


def test_conformity_weight_pulls_the_sequence_mean_back():
    """With a reward that ignores the tokens' mean, the conformity term alone shrinks the shift."""
    prompts = _prompts(1)

    def flat(index, cond, backward):
        backward(cond.sum(dim=(1, 2)) * 0.0)

    def shift(weight):
        settings = IpgoSettings(epochs=15, **dict(SMALL, conformity_weight=weight))
        tokens = BoundaryTokens(W, settings, seed=1)
        train(tokens, prompts, flat, settings)
        with torch.no_grad():
            return float(conformity(inject(prompts[0], *tokens()), prompts[0])[0])

    assert shift(1.0) < 0.8 * shift(0.0)
