"""Unit tests for core/date/update.py (DATE: per-sample normalized gradient updates of a text embedding).

Plain PyTorch on the CPU; no ComfyUI, no checkpoints. Objectives are chosen so that the true gradient is
known in closed form, and expected values are computed from that formula, not from autograd.
"""
import math

import pytest
import torch

from core.date.update import (
    DateSettings,
    DateSettingsError,
    UpdateRecord,
    UpdateSchedule,
    date_update,
    guided_x0,
    normalized_per_sample,
)
from core.shared.pixels import pixels_from_decoder

B, T, W = 3, 7, 16  # batch, tokens, width: a small stand-in for (B, 77, 768)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype)


def _frob(x: torch.Tensor) -> torch.Tensor:
    """Per-sample Frobenius norm in float64."""
    return x.double().flatten(1).norm(dim=1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / _frob(x).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))


def linear_objective(w: torch.Tensor):
    """h_b(c) = sum(c[b] * w[b]); d h_b / d c[b] = w[b] exactly."""
    return lambda c: (c * w).flatten(1).sum(dim=1)


def concave_objective(target: torch.Tensor):
    """h_b(c) = -||c[b] - target[b]||^2; d h_b / d c[b] = -2 (c[b] - target[b])."""
    return lambda c: -((c - target) ** 2).flatten(1).sum(dim=1)


def _sigmas(n_steps: int) -> list[float]:
    """A descending schedule of n_steps steps (n_steps + 1 sigmas, ending at 0)."""
    return [float(n_steps - i) for i in range(n_steps + 1)]


# --------------------------------------------------------------------------------------------------
# UpdateSchedule
# --------------------------------------------------------------------------------------------------
class TestScheduleSteps:
    SIGMAS_50 = _sigmas(50)  # 51 values -> 50 steps

    def test_fixture_has_fifty_steps(self):
        assert len(self.SIGMAS_50) == 51

    def test_every_k_10(self):
        assert UpdateSchedule("every_k_steps", "10").steps(self.SIGMAS_50) == [0, 10, 20, 30, 40]

    def test_every_k_1_is_every_step(self):
        assert UpdateSchedule("every_k_steps", "1").steps(self.SIGMAS_50) == list(range(50))

    def test_every_k_larger_than_count_gives_only_first(self):
        assert UpdateSchedule("every_k_steps", "60").steps(self.SIGMAS_50) == [0]

    def test_every_k_accepts_whole_float_text(self):
        assert UpdateSchedule("every_k_steps", "10.0").steps(self.SIGMAS_50) == [0, 10, 20, 30, 40]

    def test_every_k_7_on_20_steps(self):
        assert UpdateSchedule("every_k_steps", "7").steps(_sigmas(20)) == [0, 7, 14]

    def test_percent_10_equals_every_k_10(self):
        percent = UpdateSchedule("percent_of_steps", "10").steps(self.SIGMAS_50)
        every = UpdateSchedule("every_k_steps", "10").steps(self.SIGMAS_50)
        assert percent == every == [0, 10, 20, 30, 40]

    def test_percent_100_is_every_step(self):
        assert UpdateSchedule("percent_of_steps", "100").steps(self.SIGMAS_50) == list(range(50))

    def test_percent_50_is_every_other_step(self):
        assert UpdateSchedule("percent_of_steps", "50").steps(_sigmas(10)) == [0, 2, 4, 6, 8]

    def test_percent_30_of_10(self):
        # 30% of 10 = 3 updates, at floor(j * 10 / 3) for j = 0, 1, 2 -> 0, 3, 6.
        assert UpdateSchedule("percent_of_steps", "30").steps(_sigmas(10)) == [0, 3, 6]

    def test_percent_25_of_10_rounds_half_up(self):
        # 25% of 10 steps = 2.5 updates; halves round up -> 3 updates at floor(j * 10 / 3) -> [0, 3, 6].
        assert UpdateSchedule("percent_of_steps", "25").steps(_sigmas(10)) == [0, 3, 6]

    def test_percent_35_of_10_rounds_half_up(self):
        # 3.5 -> 4 updates at floor(j * 10 / 4) -> 0, 2, 5, 7.
        assert UpdateSchedule("percent_of_steps", "35").steps(_sigmas(10)) == [0, 2, 5, 7]

    def test_percent_15_of_10_rounds_half_up(self):
        # 1.5 -> 2 updates at floor(j * 10 / 2) -> [0, 5].
        assert UpdateSchedule("percent_of_steps", "15").steps(_sigmas(10)) == [0, 5]

    def test_percent_tiny_share_gives_at_least_one_update(self):
        # 1% of 10 steps = 0.1 -> round 0 -> clamped to 1 update, at step 0.
        assert UpdateSchedule("percent_of_steps", "1").steps(_sigmas(10)) == [0]

    @pytest.mark.parametrize("percent", [1, 5, 10, 12.5, 20, 25, 33, 50, 66.6, 75, 99, 100])
    @pytest.mark.parametrize("count", [1, 3, 10, 28, 50])
    def test_percent_general_properties(self, percent, count):
        steps = UpdateSchedule("percent_of_steps", str(percent)).steps(_sigmas(count))
        raw = percent * count / 100
        assert steps[0] == 0
        assert steps == sorted(set(steps))
        assert all(0 <= s < count for s in steps)
        assert min(count, max(1, math.floor(raw))) <= len(steps) <= min(count, max(1, math.ceil(raw)))
        # evenly spaced: consecutive gaps differ by at most one step
        gaps = [b - a for a, b in zip(steps, steps[1:])]
        if gaps:
            assert max(gaps) - min(gaps) <= 1

    def test_step_list_with_range(self):
        assert UpdateSchedule("step_list", "0, 5, 20-22").steps(self.SIGMAS_50) == [0, 5, 20, 21, 22]

    def test_step_list_sorted_and_deduplicated(self):
        assert UpdateSchedule("step_list", "22 5 0,5 21-22").steps(self.SIGMAS_50) == [0, 5, 21, 22]

    def test_step_list_drops_indices_beyond_count(self):
        sched = UpdateSchedule("step_list", "0, 5, 9, 10, 11, 48-52")
        assert sched.steps(_sigmas(10)) == [0, 5, 9]  # 10 steps: valid indices 0..9
        assert sched.steps(self.SIGMAS_50) == [0, 5, 9, 10, 11, 48, 49]

    def test_sigma_range_selects_starting_sigmas_in_closed_interval(self):
        # step i goes sigmas[i] -> sigmas[i + 1]; the last sigma starts no step.
        sigmas = [14.6, 8.0, 6.0, 4.5, 2.5, 1.0, 0.5, 0.0]  # 7 steps
        assert UpdateSchedule("sigma_range", "1.0-6.0").steps(sigmas) == [2, 3, 4, 5]  # 6.0 and 1.0 inclusive

    def test_sigma_range_ignores_the_final_sigma(self):
        sigmas = [9.0, 5.0, 3.0, 2.0]  # 3 steps starting at 9, 5, 3; the final 2.0 starts nothing
        assert UpdateSchedule("sigma_range", "1.5-3.0").steps(sigmas) == [2]
        assert UpdateSchedule("sigma_range", "1.5-2.5").steps(sigmas) == []

    def test_sigma_range_lower_end_and_separators(self):
        sigmas = [14.6, 8.0, 6.0, 4.5, 2.5, 1.0, 0.5, 0.0]
        assert UpdateSchedule("sigma_range", "0-1").steps(sigmas) == [5, 6]
        assert UpdateSchedule("sigma_range", "0.5 , 4.5").steps(sigmas) == [3, 4, 5, 6]
        assert UpdateSchedule("sigma_range", "2.5 8").steps(sigmas) == [1, 2, 3, 4]
        assert UpdateSchedule("sigma_range", "1e1-2e1").steps(sigmas) == [0]

    def test_sigma_range_accepts_a_tensor(self):
        sigmas = torch.tensor([14.5, 8.0, 6.0, 4.5, 2.5, 1.0, 0.5, 0.0])  # all exact in float32
        assert UpdateSchedule("sigma_range", "1.0-6.0").steps(sigmas) == [2, 3, 4, 5]

    @pytest.mark.parametrize("kind,value", [("every_k_steps", "1"), ("percent_of_steps", "50"),
                                            ("step_list", "0"), ("sigma_range", "0-100")])
    def test_no_steps_when_schedule_is_empty(self, kind, value):
        assert UpdateSchedule(kind, value).steps([1.0]) == []
        assert UpdateSchedule(kind, value).steps([]) == []


class TestScheduleErrors:
    @pytest.mark.parametrize("kind,value,named", [
        ("every_k_steps", "0", "every_k_steps"),
        ("every_k_steps", "-3", "every_k_steps"),
        ("every_k_steps", "2.5", "every_k_steps"),
        ("every_k_steps", "abc", "every_k_steps"),
        ("every_k_steps", "10 20", "every_k_steps"),
        ("percent_of_steps", "0", "percent_of_steps"),
        ("percent_of_steps", "150", "percent_of_steps"),
        ("percent_of_steps", "-10", "percent_of_steps"),
        ("percent_of_steps", "nan", "percent_of_steps"),
        ("percent_of_steps", "x%", "percent_of_steps"),
        ("step_list", "5-2", "step_list"),
        ("step_list", "1.5", "step_list"),
        ("step_list", "a, 3", "step_list"),
        ("sigma_range", "6-1", "sigma_range"),
        ("sigma_range", "6.0-1.0", "sigma_range"),
        ("sigma_range", "1.0", "sigma_range"),
        ("sigma_range", "low-high", "sigma_range"),
        ("sigma_range", "1..0-2", "sigma_range"),
    ])
    def test_bad_value_names_setting(self, kind, value, named):
        with pytest.raises(DateSettingsError, match=named):
            UpdateSchedule(kind, value)

    @pytest.mark.parametrize("kind", ["every_k_steps", "percent_of_steps", "step_list", "sigma_range"])
    @pytest.mark.parametrize("value", ["", "   "])
    def test_empty_value(self, kind, value):
        with pytest.raises(DateSettingsError, match="empty") as info:
            UpdateSchedule(kind, value)
        assert kind in str(info.value)

    def test_unknown_kind(self):
        with pytest.raises(DateSettingsError, match="schedule must be one of") as info:
            UpdateSchedule("every_other_step", "2")
        assert "every_other_step" in str(info.value)

    def test_error_is_a_value_error(self):
        assert issubclass(DateSettingsError, ValueError)

    @pytest.mark.parametrize("value", ["nan", "inf"])
    def test_every_k_non_finite_is_a_settings_error(self, value):
        with pytest.raises(DateSettingsError, match="every_k_steps"):
            UpdateSchedule("every_k_steps", value)

    def test_step_list_negative_index_rejected(self):
        with pytest.raises(DateSettingsError, match="step_list"):
            UpdateSchedule("step_list", "-1")


# --------------------------------------------------------------------------------------------------
# DateSettings
# --------------------------------------------------------------------------------------------------
class TestDateSettings:
    def test_defaults(self):
        s = DateSettings()
        assert (s.rho, s.rule, s.prior_weight, s.iterations) == (0.5, "cumulative", 0.0, 1)

    def test_valid_values_accepted(self):
        s = DateSettings(rho=1e-3, rule="cumulative", prior_weight=2.0, iterations=4)
        assert (s.rho, s.rule, s.prior_weight, s.iterations) == (1e-3, "cumulative", 2.0, 4)
        assert DateSettings(iterations=3.0).iterations == 3.0  # a whole float passes

    @pytest.mark.parametrize("kwargs,named", [
        ({"rho": 0.0}, "rho"),
        ({"rho": -0.5}, "rho"),
        ({"rho": float("nan")}, "rho"),
        ({"rho": float("inf")}, "rho"),
        ({"rule": "adam"}, "rule"),
        ({"rule": "Paper"}, "rule"),
        ({"prior_weight": -1e-6}, "prior_weight"),
        ({"prior_weight": float("nan")}, "prior_weight"),
        ({"prior_weight": float("inf")}, "prior_weight"),
        ({"iterations": 0}, "iterations"),
        ({"iterations": -2}, "iterations"),
        ({"iterations": 1.5}, "iterations"),
    ])
    def test_invalid(self, kwargs, named):
        with pytest.raises(DateSettingsError, match=named):
            DateSettings(**kwargs)

    def test_frozen(self):
        s = DateSettings()
        with pytest.raises(Exception):
            s.rho = 2.0  # type: ignore[misc]

    @pytest.mark.parametrize("value", [float("nan"), float("inf")])
    def test_non_finite_iterations_is_a_settings_error(self, value):
        with pytest.raises(DateSettingsError, match="iterations"):
            DateSettings(iterations=value)


# --------------------------------------------------------------------------------------------------
# normalized_per_sample
# --------------------------------------------------------------------------------------------------
class TestNormalizedPerSample:
    def test_unit_norm_per_sample_full_size(self):
        g = _rand(3, 77, 768, seed=1) * torch.tensor([1e-3, 1.0, 1e3]).view(3, 1, 1)
        n = normalized_per_sample(g)
        assert n.shape == g.shape
        torch.testing.assert_close(_frob(n), torch.ones(3, dtype=torch.float64), rtol=1e-5, atol=1e-5)

    def test_direction_preserved(self):
        g = _rand(B, T, W, seed=2)
        n = normalized_per_sample(g)
        expected = g.double() / _frob(g).view(-1, 1, 1)
        torch.testing.assert_close(n.double(), expected, rtol=1e-5, atol=1e-7)
        # each sample is a positive multiple of its gradient: cosine == 1
        cos = (n.double().flatten(1) * g.double().flatten(1)).sum(1) / (_frob(n) * _frob(g))
        torch.testing.assert_close(cos, torch.ones(B, dtype=torch.float64))

    def test_zero_sample_stays_zero(self):
        g = _rand(B, T, W, seed=3)
        g[1] = 0
        n = normalized_per_sample(g)
        assert torch.isfinite(n).all()
        assert torch.equal(n[1], torch.zeros(T, W))
        torch.testing.assert_close(_frob(n[[0, 2]]), torch.ones(2, dtype=torch.float64))

    def test_samples_independent(self):
        g = _rand(B, T, W, seed=4)
        g2 = g.clone()
        g2[0] *= 1000
        g2[2] = _rand(T, W, seed=5)
        assert torch.equal(normalized_per_sample(g)[1], normalized_per_sample(g2)[1])

    def test_float16_normalized_in_float32(self):
        # 300^2 overflows float16 (max 65504); a float16 norm would be inf and the result 0.
        g = torch.full((2, 4, 8), 300.0, dtype=torch.float16)
        g[1] = 1e-4  # (1e-4)^2 underflows float16: a float16 norm would be 0
        n = normalized_per_sample(g)
        assert torch.isfinite(n).all()
        torch.testing.assert_close(n, torch.full((2, 4, 8), 1 / math.sqrt(32)), rtol=1e-4, atol=1e-6)

    def test_non_contiguous_input(self):
        g = _rand(T, B, W, seed=6).transpose(0, 1)  # (B, T, W), not contiguous
        assert not g.is_contiguous()
        n = normalized_per_sample(g)
        torch.testing.assert_close(n.double(), g.double() / _frob(g).view(-1, 1, 1), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# date_update
# --------------------------------------------------------------------------------------------------
class TestDateUpdateLinear:
    def setup_method(self):
        self.ref = _rand(B, T, W, seed=10)
        self.w = _rand(B, T, W, seed=11) * torch.tensor([0.01, 1.0, 50.0]).view(B, 1, 1)  # scales differ

    def test_paper_one_iteration_exact(self):
        rho = 0.7
        new, records = date_update(self.ref, self.ref.clone(), linear_objective(self.w), DateSettings(rho=rho))
        torch.testing.assert_close(new, self.ref + rho * _unit(self.w), rtol=1e-5, atol=1e-6)
        assert len(records) == 1 and isinstance(records[0], UpdateRecord)

    def test_cumulative_one_iteration_equals_paper_from_reference(self):
        obj = linear_objective(self.w)
        paper, _ = date_update(self.ref, self.ref, obj, DateSettings(rho=0.3, rule="paper"))
        cumul, _ = date_update(self.ref, self.ref, obj, DateSettings(rho=0.3, rule="cumulative"))
        torch.testing.assert_close(paper, cumul)

    def test_cumulative_n_iterations_move_n_rho(self):
        rho, n = 0.25, 5
        new, records = date_update(self.ref, self.ref, linear_objective(self.w),
                                   DateSettings(rho=rho, rule="cumulative", iterations=n))
        torch.testing.assert_close(new, self.ref + n * rho * _unit(self.w), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(_frob(new - self.ref), torch.full((B,), n * rho, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-5)
        assert len(records) == n

    def test_paper_n_iterations_linear_stays_at_one_step(self):
        # linear objective: the gradient never changes, so every paper iteration lands on the same point
        rho = 0.25
        new, records = date_update(self.ref, self.ref, linear_objective(self.w),
                                   DateSettings(rho=rho, rule="paper", iterations=4))
        torch.testing.assert_close(new, self.ref + rho * _unit(self.w), rtol=1e-5, atol=1e-6)
        assert len(records) == 4

    def test_from_current_paper_returns_to_reference(self):
        rho = 0.4
        current = self.ref + _rand(B, T, W, seed=12)
        new, _ = date_update(self.ref, current, linear_objective(self.w), DateSettings(rho=rho, rule="paper"))
        torch.testing.assert_close(new, self.ref + rho * _unit(self.w), rtol=1e-5, atol=1e-6)

    def test_from_current_cumulative_adds_to_current(self):
        rho = 0.4
        current = self.ref + _rand(B, T, W, seed=12)
        new, _ = date_update(self.ref, current, linear_objective(self.w), DateSettings(rho=rho, rule="cumulative"))
        torch.testing.assert_close(new, current + rho * _unit(self.w), rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("rule", ["paper", "cumulative"])
    def test_per_sample_independence(self, rule):
        settings = DateSettings(rho=0.5, rule=rule, iterations=2)
        current = self.ref + 0.1 * _rand(B, T, W, seed=13)
        new_a, rec_a = date_update(self.ref, current, linear_objective(self.w), settings)
        w2 = self.w.clone()
        w2[0] = -1000 * _rand(T, W, seed=14)
        w2[2] = 0.001 * _rand(T, W, seed=15)
        new_b, rec_b = date_update(self.ref, current, linear_objective(w2), settings)
        assert torch.equal(new_a[1], new_b[1])
        assert not torch.allclose(new_a[0], new_b[0]) and not torch.allclose(new_a[2], new_b[2])
        for ra, rb in zip(rec_a, rec_b):
            assert ra.rewards[1] == rb.rewards[1] and ra.grad_norms[1] == rb.grad_norms[1]

    def test_inputs_not_modified_and_result_detached(self):
        ref = self.ref.clone().requires_grad_(True)
        current = (self.ref + 1).requires_grad_(True)
        ref_copy, cur_copy = ref.detach().clone(), current.detach().clone()
        for rule in ("paper", "cumulative"):
            new, _ = date_update(ref, current, linear_objective(self.w), DateSettings(rule=rule, iterations=2))
            assert not new.requires_grad and new.grad_fn is None
        assert torch.equal(ref.detach(), ref_copy) and torch.equal(current.detach(), cur_copy)
        assert ref.grad is None and current.grad is None

    def test_linear_records(self):
        rho, n = 0.5, 3
        current = self.ref + 0.2 * _rand(B, T, W, seed=16)
        _, records = date_update(self.ref, current, linear_objective(self.w),
                                 DateSettings(rho=rho, rule="cumulative", iterations=n))
        for k, rec in enumerate(records):
            start = current.double() + k * rho * _unit(self.w.double())
            expected_rewards = (start * self.w.double()).flatten(1).sum(1)
            assert rec.rewards.shape == (B,) and rec.grad_norms.shape == (B,)
            assert rec.rewards.dtype == torch.float32 and rec.rewards.device.type == "cpu"
            torch.testing.assert_close(rec.rewards.double(), expected_rewards, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(rec.grad_norms.double(), _frob(self.w), rtol=1e-5, atol=1e-6)


class TestDateUpdatePrior:
    def setup_method(self):
        self.ref = _rand(B, T, W, seed=20)
        self.w = _rand(B, T, W, seed=21)
        self.delta = 3.0 * _rand(B, T, W, seed=22)
        self.current = self.ref + self.delta
        self.numel = T * W

    def _expected_grad(self, c, pw):
        # d/dc [ h - pw * mean((ref - c)^2) ] = w + 2 * pw * (ref - c) / numel
        return self.w.double() + 2 * pw * (self.ref.double() - c.double()) / self.numel

    @pytest.mark.parametrize("rule", ["paper", "cumulative"])
    def test_prior_changes_direction(self, rule):
        pw, rho = 20.0, 0.3
        g = self._expected_grad(self.current, pw)
        # the prior term is a sizeable part of the gradient here, so the test can tell it apart
        assert (_frob(g - self.w.double()) / _frob(self.w)).min() > 0.2
        new, records = date_update(self.ref, self.current, linear_objective(self.w),
                                   DateSettings(rho=rho, rule=rule, prior_weight=pw))
        base = self.ref if rule == "paper" else self.current
        torch.testing.assert_close(new.double(), base.double() + rho * _unit(g), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(records[0].grad_norms.double(), _frob(g), rtol=1e-5, atol=1e-5)
        # rewards exclude the prior term
        torch.testing.assert_close(records[0].rewards.double(),
                                   (self.current.double() * self.w.double()).flatten(1).sum(1), rtol=1e-5, atol=1e-4)

    def test_prior_pulls_toward_reference(self):
        # with a tiny reward gradient the prior dominates: the cumulative step heads back to the reference
        w_small = 1e-6 * self.w
        new, _ = date_update(self.ref, self.current, linear_objective(w_small),
                             DateSettings(rho=0.5, rule="cumulative", prior_weight=100.0))
        assert (_frob(new - self.ref) < _frob(self.current - self.ref) - 0.49).all()

    def test_prior_has_no_effect_at_reference(self):
        a, rec_a = date_update(self.ref, self.ref, linear_objective(self.w), DateSettings(prior_weight=0.0))
        b, rec_b = date_update(self.ref, self.ref, linear_objective(self.w), DateSettings(prior_weight=5.0))
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(rec_a[0].grad_norms, rec_b[0].grad_norms)

    def test_prior_only_objective_zero_gradient_stays_put(self):
        # h constant in c except through a zero-weight term; at the reference the prior gradient is zero too
        obj = lambda c: 0.0 * c.flatten(1).sum(1)  # noqa: E731
        new, records = date_update(self.ref, self.ref, obj, DateSettings(prior_weight=1.0))
        assert torch.equal(new, self.ref)
        assert torch.equal(records[0].grad_norms, torch.zeros(B))


class TestDateUpdateConcave:
    def setup_method(self):
        self.ref = _rand(B, T, W, seed=30)
        self.target = self.ref + 2.0 * _rand(B, T, W, seed=31)

    def test_paper_several_iterations_keep_radius_rho(self):
        rho = 0.6
        new, records = date_update(self.ref, self.ref, concave_objective(self.target),
                                   DateSettings(rho=rho, rule="paper", iterations=5))
        torch.testing.assert_close(_frob(new - self.ref), torch.full((B,), rho, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-6)
        assert len(records) == 5

    @pytest.mark.parametrize("rule", ["paper", "cumulative"])
    def test_records_match_analytic_iteration(self, rule):
        rho, n, pw = 0.4, 4, 3.0
        obj = concave_objective(self.target)
        current = self.ref + 0.5 * _rand(B, T, W, seed=32)
        new, records = date_update(self.ref, current, obj,
                                   DateSettings(rho=rho, rule=rule, prior_weight=pw, iterations=n))
        ref, tgt = self.ref.double(), self.target.double()
        c = current.double()
        assert len(records) == n
        for rec in records:
            reward = -((c - tgt) ** 2).flatten(1).sum(1)
            grad = -2 * (c - tgt) + 2 * pw * (ref - c) / (T * W)
            torch.testing.assert_close(rec.rewards.double(), reward, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(rec.grad_norms.double(), _frob(grad), rtol=1e-5, atol=1e-4)
            c = (ref if rule == "paper" else c) + rho * _unit(grad)
        torch.testing.assert_close(new.double(), c, rtol=1e-5, atol=1e-5)

    @pytest.mark.claim
    @pytest.mark.parametrize("rule", ["paper", "cumulative"])
    def test_reward_improves_for_small_rho(self, rule):
        obj = concave_objective(self.target)
        new, _ = date_update(self.ref, self.ref, obj, DateSettings(rho=0.05, rule=rule, iterations=3))
        before, after = obj(self.ref), obj(new)
        assert (after > before).all()
        # first-order check: the gain is close to rho * ||grad|| for one small step
        one, _ = date_update(self.ref, self.ref, obj, DateSettings(rho=0.05))
        grad_norm = _frob(-2 * (self.ref - self.target))
        torch.testing.assert_close((obj(one) - before).double(), 0.05 * grad_norm, rtol=0.02, atol=1e-3)

    def test_cumulative_converges_toward_target(self):
        obj = concave_objective(self.target)
        dist0 = _frob(self.ref - self.target)
        new, _ = date_update(self.ref, self.ref, obj, DateSettings(rho=0.5, rule="cumulative", iterations=4))
        # the step points straight at the target, so the distance shrinks by exactly 4 * rho
        torch.testing.assert_close(_frob(new - self.target), dist0 - 2.0, rtol=1e-5, atol=1e-5)


class TestDateUpdateErrors:
    def test_shape_mismatch(self):
        ref = torch.zeros(2, 4, 8)
        with pytest.raises(DateSettingsError, match="reference"):
            date_update(ref, torch.zeros(2, 4, 9), linear_objective(torch.ones(2, 4, 9)), DateSettings())
        with pytest.raises(DateSettingsError, match="reference"):
            date_update(ref, torch.zeros(1, 4, 8), linear_objective(torch.ones(1, 4, 8)), DateSettings())

    @pytest.mark.parametrize("bad", [
        lambda c: (c ** 2).sum(),  # scalar
        lambda c: (c ** 2).flatten(1).sum(1, keepdim=True),  # (B, 1)
        lambda c: (c ** 2).sum(dim=(0, 2)),  # (T,)
        lambda c: (c ** 2).sum(dim=2),  # (B, T)
    ])
    def test_objective_wrong_shape(self, bad):
        ref = _rand(2, 4, 8, seed=40)
        with pytest.raises(DateSettingsError, match="one reward per sample"):
            date_update(ref, ref, bad, DateSettings())

    def test_nan_gradient(self):
        ref = _rand(2, 4, 8, seed=41)
        w = torch.ones(2, 4, 8)
        w[1, 2, 3] = float("nan")
        with pytest.raises(FloatingPointError):
            date_update(ref, ref, linear_objective(w), DateSettings())

    def test_inf_gradient(self):
        ref = _rand(2, 4, 8, seed=42)
        w = torch.ones(2, 4, 8)
        w[0, 0, 0] = float("inf")
        with pytest.raises(FloatingPointError):
            date_update(ref, ref, linear_objective(w), DateSettings())

    def test_nan_in_later_iteration(self):
        # sqrt of a coordinate that the first step drives negative: finite at the start, NaN afterwards
        ref = torch.zeros(1, 1, 2)
        ref[0, 0, 0] = 0.1
        obj = lambda c: c[:, 0, 0].sqrt() - 10 * c[:, 0, 1] - 100 * c[:, 0, 0]  # noqa: E731
        date_update(ref, ref, obj, DateSettings(rho=1.0, rule="cumulative", iterations=1))  # fine
        with pytest.raises(FloatingPointError):
            date_update(ref, ref, obj, DateSettings(rho=1.0, rule="cumulative", iterations=2))


class TestDateUpdateDtype:
    def test_float16_stays_float16(self):
        ref = _rand(B, T, W, seed=50).half()
        w = _rand(B, T, W, seed=51)
        obj = lambda c: (c.float() * w).flatten(1).sum(1)  # noqa: E731
        for rule in ("paper", "cumulative"):
            new, records = date_update(ref, ref, obj, DateSettings(rho=0.5, rule=rule, iterations=2))
            assert new.dtype == torch.float16
            assert records[0].rewards.dtype == torch.float32 and records[0].grad_norms.dtype == torch.float32
            expected = ref.double() + (1 if rule == "paper" else 2) * 0.5 * _unit(w.double())
            torch.testing.assert_close(new.double(), expected, rtol=0, atol=5e-3)

    def test_float16_large_gradient_normalized_in_float32(self):
        # gradient entries of 400 in float16: their squared sum overflows float16 but not float32
        ref = torch.zeros(2, 4, 8, dtype=torch.float16)
        w = torch.full((2, 4, 8), 400.0)
        w[1] *= -1
        obj = lambda c: (c.float() * w).flatten(1).sum(1)  # noqa: E731
        new, records = date_update(ref, ref, obj, DateSettings(rho=1.0))
        assert new.dtype == torch.float16 and torch.isfinite(new).all()
        expected = torch.full((2, 4, 8), 1 / math.sqrt(32))
        expected[1] *= -1
        torch.testing.assert_close(new.float(), expected, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(records[0].grad_norms, torch.tensor([400 * math.sqrt(32)] * 2), rtol=1e-3, atol=0)

    def test_float64_stays_float64(self):
        ref = _rand(2, 4, 8, seed=52, dtype=torch.float64)
        w = _rand(2, 4, 8, seed=53, dtype=torch.float64)
        new, _ = date_update(ref, ref, linear_objective(w), DateSettings(rho=0.5))
        assert new.dtype == torch.float64
        torch.testing.assert_close(new, ref + 0.5 * _unit(w), rtol=1e-6, atol=1e-6)  # float32 normalization


# --------------------------------------------------------------------------------------------------
# guided_x0 and pixels_from_decoder
# --------------------------------------------------------------------------------------------------
class TestGuidanceAndPixels:
    def test_guided_x0_values(self):
        cond = torch.tensor([1.0, 2.0, -3.0])
        uncond = torch.tensor([0.5, 4.0, -3.0])
        torch.testing.assert_close(guided_x0(cond, uncond, 7.5), torch.tensor([4.25, -11.0, -3.0]))
        torch.testing.assert_close(guided_x0(cond, uncond, 1.0), cond)
        torch.testing.assert_close(guided_x0(cond, uncond, 0.0), uncond)

    def test_guided_x0_no_uncond_returns_cond(self):
        cond = _rand(2, 4, 8, 8, seed=60)
        assert guided_x0(cond, None, 7.5) is cond

    def test_guided_x0_keeps_gradient(self):
        cond = _rand(2, 3, seed=61).requires_grad_(True)
        uncond = _rand(2, 3, seed=62)
        guided_x0(cond, uncond, 5.0).sum().backward()
        torch.testing.assert_close(cond.grad, torch.full((2, 3), 5.0))

    def test_pixels_from_decoder(self):
        decoded = torch.tensor([-1.0, 0.0, 1.0, 1.5, -1.5])
        torch.testing.assert_close(pixels_from_decoder(decoded), torch.tensor([0.0, 0.5, 1.0, 1.25, -0.25]))

    def test_pixels_from_decoder_float32_and_differentiable(self):
        decoded = torch.tensor([[-1.0, 2.0]], dtype=torch.float16, requires_grad=True)
        px = pixels_from_decoder(decoded)
        assert px.dtype == torch.float32
        torch.testing.assert_close(px, torch.tensor([[0.0, 1.5]]))  # 2.0 -> 1.5: no clamp
        px.sum().backward()
        torch.testing.assert_close(decoded.grad.float(), torch.full((1, 2), 0.5))  # gradient is not cut


class TestScheduleSpelling:
    def test_step_range_with_spaces(self):
        assert UpdateSchedule("step_list", "20 - 22, 3").steps(_sigmas(50)) == [3, 20, 21, 22]

    @pytest.mark.parametrize("value", [",", " , ,"])
    def test_step_list_without_numbers_is_refused(self, value):
        with pytest.raises(DateSettingsError, match="step_list"):
            UpdateSchedule("step_list", value)

    def test_sigma_range_with_exponents(self):
        sigmas = [10.0, 5.0, 0.01, 0.0005, 0.0]
        assert UpdateSchedule("sigma_range", "1e-3-6").steps(sigmas) == [1, 2]
