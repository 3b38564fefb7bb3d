"""Unit tests for core/minority/optimize.py and core/diagnostics/likelihood.py (plain PyTorch on the CPU, no ComfyUI).

The denoisers here are small closed-form stand-ins for a UNet: a Gaussian-data denoiser whose optimal
x0 estimate is known exactly, plus a smooth text-dependent term so a token can move the estimate.
Expected values come from formulas written out in the tests, never from a previous run.
"""
import math

import pytest
import torch

from core.shared.conditioning import TextConditioning
from core.shared.denoiser import Denoiser
from core.diagnostics.likelihood import denoising_loss, level_fractions, noise_error_scale
from core.minority.optimize import (
    MinoritySettings,
    MinoritySettingsError,
    initial_tokens,
    optimize_step,
    pairwise_diversity,
    split_objective,
    whole_embedding_encoder,
    whole_embedding_start,
)
from core.shared.prediction import PredictionType, renoise, x0_from_output

SIGMA_MIN, SIGMA_MAX = 0.03, 14.6
DATA_STD = 0.8


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class GaussianDenoiser(Denoiser):
    """Bayes-optimal x0 for data ~ N(shift(cond), DATA_STD^2 I), sampled as x = x0 + sigma * noise.

    x0_hat = shift + (x - shift) * s^2 / (s^2 + sigma^2), shift = tanh(cond mean over tokens) @ mix.
    Sigmas are linear in the schedule fraction, so sigma_at / fraction_of are exact inverses.
    """

    prediction = PredictionType.EPS

    def __init__(self, width: int, channels: int = 2, text_gain: float = 1.0, seed: int = 0):
        self.mix = torch.randn(width, channels, generator=_gen(seed)) * text_gain
        self.calls = 0

    def predict_x0(self, x, sigma, cond):
        self.calls += 1
        sigma = torch.as_tensor(sigma, dtype=x.dtype)
        shift = torch.tanh(cond.cross_attn.mean(dim=1)) @ self.mix  # (B, channels)
        shift = shift.view(*shift.shape, 1, 1).to(x.dtype)
        keep = DATA_STD**2 / (DATA_STD**2 + sigma**2)
        return shift + (x - shift) * keep

    def sigma_at(self, fraction):
        return SIGMA_MIN + fraction * (SIGMA_MAX - SIGMA_MIN)

    def fraction_of(self, sigma):
        return (float(sigma) - SIGMA_MIN) / (SIGMA_MAX - SIGMA_MIN)


B, TOKENS, WIDTH, C, H = 3, 5, 8, 2, 4


def _prompt(batch=B):
    return torch.randn(batch, TOKENS, WIDTH, generator=_gen(1))


def _encoder(prompt):
    """Appends the learnable token (through a fixed nonlinearity, like a text encoder) to the prompt."""
    def encode(tokens):
        token = torch.sin(tokens["l"]).unsqueeze(1)  # (B, 1, W)
        return TextConditioning(torch.cat([prompt, token.to(prompt.dtype)], dim=1))
    return encode


def _original(prompt):
    return TextConditioning(torch.cat([prompt, prompt[:, -1:]], dim=1))


def _noise(batch=B, seed=7):
    draws = {}

    def noise(k):
        if k not in draws:
            draws[k] = torch.randn(batch, C, H, H, generator=_gen(seed * 1000 + k))
        return draws[k]
    return noise


def _step(settings=None, batch=B, start=None, denoiser=None, sigma=10.0, sigma_next=None, **kwargs):
    prompt = _prompt(batch)
    denoiser = denoiser or GaussianDenoiser(WIDTH)
    x = torch.randn(batch, C, H, H, generator=_gen(3)) * sigma
    start = start if start is not None else {"l": torch.randn(batch, WIDTH, generator=_gen(4)) * 0.3}
    sigma_next = 0.8 * sigma if sigma_next is None else sigma_next
    return optimize_step(denoiser, _encoder(prompt), _original(prompt), x, sigma, sigma_next, start,
                         settings or MinoritySettings(), kwargs.pop("noise", _noise(batch)), **kwargs)


# --------------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------------
class TestSettings:
    def test_defaults_are_the_authors_code(self):
        s = MinoritySettings()
        assert (s.iterations, s.lr, s.sg_lambda, s.norm, s.anneal, s.anneal_level, s.fraction, s.every,
                s.between_steps) == (10, 0.01, 1.0, "plain", True, "next_step", 0.1, 1, "keep")

    @pytest.mark.parametrize("field,value", [
        ("iterations", 0), ("iterations", 2.5), ("lr", 0.0), ("lr", -1e-3), ("lr", float("nan")),
        ("sg_lambda", -1.0), ("sg_lambda", float("inf")), ("fraction", 1.5), ("fraction", -0.1),
        ("fixed_level", 1.01), ("every", 0), ("norm", "l1"), ("between_steps", "revert"), ("anneal_level", "T-t"),
        ("diversity", -0.5), ("target", "prompt"),
    ])
    def test_out_of_range_settings_are_refused_with_the_name(self, field, value):
        with pytest.raises(MinoritySettingsError, match=field):
            MinoritySettings(**{field: value})

    @pytest.mark.parametrize("fraction,every,n,expected", [
        (0.1, 1, 50, [0, 1, 2, 3, 4]),
        (0.1, 2, 50, [0, 2, 4]),
        (0.1, 1, 8, [0]),  # ceil(0.8) = 1: a short schedule still gets its first step optimized
        (0.3, 1, 10, [0, 1, 2]),  # 0.3 * 10 is 3.0000000000000004 in floats: still three steps
        (0.0, 1, 50, []),
        (1.0, 3, 7, [0, 3, 6]),
        (0.5, 1, 1, [0]),
    ])
    def test_optimized_steps(self, fraction, every, n, expected):
        assert MinoritySettings(fraction=fraction, every=every).steps(n) == expected

    def test_renoise_level_is_T_minus_t_next_or_T_minus_t_or_fixed(self):
        code = MinoritySettings()  # the authors' code: the next step's level
        assert code.renoise_fraction(0.9, 0.8) == pytest.approx(0.2)
        assert code.renoise_fraction(1.0, 0.75) == pytest.approx(0.25)  # a step starting at t = T
        assert code.renoise_fraction(0.1, 0.0) == 1.0  # the last step
        assert code.renoise_fraction(1.0, 1.2) == 0.0 and code.renoise_fraction(0.2, -0.1) == 1.0
        paper = MinoritySettings(anneal_level="this_step")
        assert paper.renoise_fraction(0.9, 0.8) == pytest.approx(0.1)
        assert paper.renoise_fraction(1.0, 0.75) == 0.0
        assert MinoritySettings(anneal=False, fixed_level=0.6).renoise_fraction(0.9, 0.8) == 0.6


# --------------------------------------------------------------------------------------------------
# objective
# --------------------------------------------------------------------------------------------------
class TestSplitObjective:
    def _pair(self):
        a = torch.randn(2, 3, 4, generator=_gen(10), requires_grad=True)
        b = torch.randn(2, 3, 4, generator=_gen(11), requires_grad=True)
        return a, b

    @pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 2.0])
    def test_squared_value_and_gradients_follow_the_stop_gradient_split(self, lam):
        a, b = self._pair()
        j = split_objective(a, b, MinoritySettings(norm="squared", sg_lambda=lam))
        d = (a - b).detach().double().flatten(1)
        torch.testing.assert_close(j, (1 + lam) * d.pow(2).sum(dim=1))
        j.sum().backward()
        # the x0_t side gets only the lambda term, the re-noised side only the first term
        torch.testing.assert_close(a.grad.double(), (2 * lam * d).view_as(a), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(b.grad.double(), (-2 * d).view_as(b), rtol=1e-6, atol=1e-6)

    def test_plain_norm_value_and_gradient(self):
        a, b = self._pair()
        j = split_objective(a, b, MinoritySettings(norm="plain", sg_lambda=0.5))
        d = (a - b).detach().double().flatten(1)
        norm = d.norm(dim=1)
        torch.testing.assert_close(j, 1.5 * norm)
        j.sum().backward()
        torch.testing.assert_close(a.grad.double(), (0.5 * d / norm[:, None]).view_as(a), rtol=1e-6, atol=1e-6)

    def test_float64_keeps_a_tiny_change_float32_would_lose(self):
        a = torch.full((1, 64, 64), 100.0)
        b = torch.zeros(1, 64, 64)
        b2 = b.clone()
        b2[0, 0, 0] = 1e-3  # changes ||a - b||^2 by about 0.2 out of 4.1e7, below float32's step of 4
        settings = MinoritySettings(norm="squared", sg_lambda=0.0)
        assert split_objective(a, b, settings) > split_objective(a, b2, settings)


class TestPairwiseDiversity:
    def test_single_sample_is_zero(self):
        assert float(pairwise_diversity(torch.randn(1, 2, 3))) == 0.0

    def test_mean_distance_over_ordered_pairs(self):
        x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
        # distances 5, 10, 5; each unordered pair counted twice over 3 * 2 ordered pairs
        assert float(pairwise_diversity(x)) == pytest.approx((5 + 10 + 5) * 2 / 6)


# --------------------------------------------------------------------------------------------------
# optimize_step
# --------------------------------------------------------------------------------------------------
class TestOptimizeStep:
    @pytest.mark.claim
    def test_objective_rises_on_the_same_noise_for_every_sample(self):
        result = _step(MinoritySettings(iterations=8, lr=0.05), probe=True)
        assert result.before.shape == result.after.shape == (B,)
        assert (result.after > result.before).all(), (result.before, result.after)
        assert all(g > 0 for g in result.predicted_gains), result.predicted_gains
        assert len(result.objectives) == 8

    def test_first_adam_step_moves_every_coordinate_by_lr_up_the_gradient(self):
        settings = MinoritySettings(iterations=1, lr=0.02)
        prompt, denoiser, sigma = _prompt(), GaussianDenoiser(WIDTH), 10.0
        x = torch.randn(B, C, H, H, generator=_gen(3)) * sigma
        start = {"l": torch.randn(B, WIDTH, generator=_gen(4)) * 0.3}
        noise = _noise()
        result = optimize_step(denoiser, _encoder(prompt), _original(prompt), x, sigma, 0.8 * sigma, start, settings,
                               noise)
        # the gradient of J at the start, computed here without the optimizer
        v = start["l"].clone().requires_grad_(True)
        x0_t = denoiser.predict_x0(x, sigma, _encoder(prompt)({"l": v}))
        x0_s = denoiser.predict_x0(denoiser.renoise(x0_t, result.renoise_sigma, noise(0)), result.renoise_sigma,
                                   _original(prompt))
        split_objective(x0_t, x0_s, settings).sum().backward()
        moved = result.tokens["l"] - start["l"]
        # Adam's first step is lr * g / (|g| + eps): +-lr where the gradient is not tiny
        big = v.grad.abs() > 1e-4
        assert big.sum() > B * WIDTH // 2
        torch.testing.assert_close(moved[big], settings.lr * v.grad[big].sign(), rtol=1e-3, atol=1e-6)

    def test_start_tokens_are_not_modified_and_results_are_detached(self):
        start = {"l": torch.randn(B, WIDTH, generator=_gen(4))}
        copy = start["l"].clone()
        result = _step(MinoritySettings(iterations=2), start=start)
        assert torch.equal(start["l"], copy)
        assert not result.tokens["l"].requires_grad
        assert not torch.equal(result.tokens["l"], copy)

    @pytest.mark.parametrize("anneal,level_at,sigma,sigma_next", [
        (True, "next_step", 10.0, 7.0), (True, "next_step", 3.0, 0.0), (True, "this_step", 10.0, 7.0),
        (False, "next_step", 10.0, 7.0)])
    def test_renoise_sigma_through_the_models_schedule(self, anneal, level_at, sigma, sigma_next):
        denoiser = GaussianDenoiser(WIDTH)
        settings = MinoritySettings(iterations=1, anneal=anneal, anneal_level=level_at, fixed_level=0.4)
        result = _step(settings, denoiser=denoiser, sigma=sigma, sigma_next=sigma_next)
        t = (sigma - SIGMA_MIN) / (SIGMA_MAX - SIGMA_MIN)
        t_next = max((sigma_next - SIGMA_MIN) / (SIGMA_MAX - SIGMA_MIN), 0.0) if sigma_next > 0 else 0.0
        level = (1 - (t_next if level_at == "next_step" else t)) if anneal else 0.4
        assert result.renoise_sigma == pytest.approx(SIGMA_MIN + level * (SIGMA_MAX - SIGMA_MIN))

    def test_hooks_noise_draws_and_denoiser_calls(self):
        seen, ends, asked = [], [], []
        base = _noise()

        def noise(k):
            asked.append(k)
            return base(k)
        denoiser = GaussianDenoiser(WIDTH)
        result = _step(MinoritySettings(iterations=3), denoiser=denoiser, noise=noise, probe=True,
                       before_iteration=seen.append, after_iteration=lambda k, j: ends.append((k, j)))
        assert seen == [0, 1, 2]
        assert [k for k, _ in ends] == [0, 1, 2] and [j for _, j in ends] == result.objectives
        # the probes reuse the iterations' draws: before (0, 1, 2), iterations (0, 1, 2), after (0, 1, 2)
        assert asked == [0, 1, 2] * 3
        assert denoiser.calls == 2 * 3 * 3  # two denoiser passes per evaluation

    def test_non_finite_gradient_is_an_error_naming_the_token(self):
        prompt = _prompt()

        def encode(tokens):
            token = (tokens["l"] * float("nan")).unsqueeze(1)
            return TextConditioning(torch.cat([prompt, token], dim=1))
        with pytest.raises(FloatingPointError, match="text encoder l"):
            optimize_step(GaussianDenoiser(WIDTH), encode, _original(prompt), torch.randn(B, C, H, H), 5.0, 4.0,
                          {"l": torch.zeros(B, WIDTH)}, MinoritySettings(iterations=1), _noise())

    def test_checkpointing_gives_the_same_tokens(self):
        plain = _step(MinoritySettings(iterations=4, lr=0.05))
        checkpointed = _step(MinoritySettings(iterations=4, lr=0.05, checkpointing=True))
        torch.testing.assert_close(checkpointed.tokens["l"], plain.tokens["l"], rtol=1e-5, atol=1e-6)
        assert checkpointed.objectives == pytest.approx(plain.objectives, rel=1e-6)

    @pytest.mark.claim
    def test_diversity_term_spreads_the_estimates_apart(self):
        prompt, sigma = _prompt(), 10.0
        x = torch.randn(B, C, H, H, generator=_gen(3)) * sigma
        start = {"l": torch.randn(B, WIDTH, generator=_gen(4)) * 0.3}
        denoiser = GaussianDenoiser(WIDTH, text_gain=3.0)

        def spread(diversity):
            result = optimize_step(denoiser, _encoder(prompt), _original(prompt), x, sigma, 0.8 * sigma, start,
                                   MinoritySettings(iterations=10, lr=0.05, diversity=diversity), _noise())
            with torch.no_grad():
                return float(pairwise_diversity(denoiser.predict_x0(x, sigma, _encoder(prompt)(result.tokens))))
        assert spread(50.0) > spread(0.0) + 1e-3

    def test_sdxl_like_two_encoders_are_optimized_together(self):
        prompt = _prompt()
        start = {"l": torch.randn(B, WIDTH, generator=_gen(4)) * 0.3,
                 "g": torch.randn(B, WIDTH, generator=_gen(5)) * 0.3}

        def encode(tokens):
            token = (torch.sin(tokens["l"]) + torch.cos(tokens["g"])).unsqueeze(1)
            return TextConditioning(torch.cat([prompt, token], dim=1))
        result = optimize_step(GaussianDenoiser(WIDTH), encode, _original(prompt),
                               torch.randn(B, C, H, H, generator=_gen(3)) * 10, 10.0, 8.0, start,
                               MinoritySettings(iterations=3), _noise(), probe=True)
        assert set(result.tokens) == {"l", "g"}
        assert all(not torch.equal(result.tokens[k], start[k]) for k in start)
        assert (result.after > result.before).all()


    def test_whole_embedding_ablation_optimizes_every_token_state(self):
        """The ablation's parameter is C itself: it starts at the prompt's C (one copy per image), every
        token position moves, the objective rises on the same noise, and the pooled vector is kept."""
        prompt, sigma = _prompt(batch=1), 10.0  # one prompt, as a conditioning node gives it
        pooled = torch.randn(1, 3, generator=_gen(6))
        original = TextConditioning(prompt, pooled)
        start = whole_embedding_start(original, B)
        assert start["cross_attn"].shape == (B, *prompt.shape[1:])
        assert torch.equal(start["cross_attn"][1], prompt[0])
        encode = whole_embedding_encoder(original, B)
        assert encode(start).pooled.shape == (B, 3)
        x = torch.randn(B, C, H, H, generator=_gen(3)) * sigma
        result = optimize_step(GaussianDenoiser(WIDTH), encode, original, x, sigma, 0.8 * sigma, start,
                               MinoritySettings(iterations=4, lr=0.05), _noise(), probe=True)
        assert (result.after > result.before).all()
        moved = (result.tokens["cross_attn"] - prompt).abs().amax(dim=-1)
        assert (moved > 1e-3).all(), "every token position of every image moves"
        shared = whole_embedding_encoder(original, B)(whole_embedding_start(original, 1))
        assert shared.cross_attn.shape[0] == B and torch.equal(shared.cross_attn[0], shared.cross_attn[1])

# --------------------------------------------------------------------------------------------------
# initialization
# --------------------------------------------------------------------------------------------------
class TestInitialTokens:
    def _table(self, vocab=40000, width=4):
        # correlated rows with a non-zero mean, like a real embedding table
        mixing = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.8, 0.6, 0.0, 0.0],
                               [0.0, 0.5, 0.3, 0.0], [0.2, 0.0, 0.0, 0.1]], dtype=torch.float64)[:width, :width]
        z = torch.randn(vocab, width, generator=_gen(20), dtype=torch.float64)
        return (z @ mixing.T + torch.tensor([0.5, -1.0, 0.25, 2.0], dtype=torch.float64)[:width]).float()

    def test_word_copies_the_word(self):
        word = torch.arange(4.0).view(1, 4)
        out = initial_tokens(self._table(10), "word", 3, _gen(0), word=word)
        assert torch.equal(out, word.expand(3, 4))
        with pytest.raises(MinoritySettingsError, match="exactly one token"):
            initial_tokens(self._table(10), "word", 3, _gen(0), word=torch.zeros(2, 4))

    def test_random_vocabulary_takes_rows_of_the_table(self):
        table = self._table(50)
        out = initial_tokens(table, "random_vocabulary", 4, _gen(3))
        rows = torch.randint(0, 50, (4,), generator=_gen(3))
        assert torch.equal(out, table[rows])
        given = torch.tensor([7, 7, 1])
        assert torch.equal(initial_tokens(table, "random_vocabulary", 3, _gen(0), rows=given), table[given])

    def test_gaussian_matches_the_tables_mean_and_covariance(self):
        table = self._table()
        out = initial_tokens(table, "gaussian", 40000, _gen(1)).double()
        t = table.double()
        torch.testing.assert_close(out.mean(0), t.mean(0), atol=0.03, rtol=0)
        torch.testing.assert_close(torch.cov(out.T), torch.cov(t.T), atol=0.03, rtol=0)

    def test_gaussian_diagonal_matches_variances_but_not_correlations(self):
        table = self._table()
        out = initial_tokens(table, "gaussian_diagonal", 40000, _gen(1)).double()
        t = table.double()
        torch.testing.assert_close(out.mean(0), t.mean(0), atol=0.03, rtol=0)
        torch.testing.assert_close(out.var(0), t.var(0), atol=0.03, rtol=0.03)
        assert torch.cov(t.T)[0, 1] > 0.5  # the table's first two columns are correlated ...
        assert abs(float(torch.cov(out.T)[0, 1])) < 0.03  # ... the diagonal fit is not

    def test_same_generator_seed_same_tokens_and_unknown_kind_refused(self):
        table = self._table(100)
        assert torch.equal(initial_tokens(table, "gaussian", 2, _gen(5)), initial_tokens(table, "gaussian", 2, _gen(5)))
        assert not torch.equal(initial_tokens(table, "gaussian", 2, _gen(5)),
                               initial_tokens(table, "gaussian", 2, _gen(6)))
        with pytest.raises(MinoritySettingsError, match="init must be one of"):
            initial_tokens(table, "uniform", 1, _gen(0))


# --------------------------------------------------------------------------------------------------
# likelihood
# --------------------------------------------------------------------------------------------------
class TestLikelihood:
    def test_level_fractions_are_bin_midpoints(self):
        assert level_fractions(4) == [0.125, 0.375, 0.625, 0.875]
        with pytest.raises(ValueError, match="levels"):
            level_fractions(0)

    @pytest.mark.parametrize("prediction", [PredictionType.EPS, PredictionType.FLOW])
    @pytest.mark.parametrize("sigma", [0.1, 0.5, 0.9])
    def test_noise_error_scale_turns_x0_error_into_noise_error(self, prediction, sigma):
        x0, noise, x0_hat = (torch.randn(2, 3, generator=_gen(s)).double() for s in (30, 31, 32))
        x = renoise(prediction, x0, sigma, noise)
        # the model output that yields x0_hat, and the noise it implies
        if prediction is PredictionType.EPS:
            implied_noise = (x - x0_hat) / sigma
        else:
            velocity = (x - x0_hat) / sigma  # flow: output = noise - x0
            torch.testing.assert_close(x0_from_output(prediction, velocity, x, sigma), x0_hat)
            implied_noise = velocity + x0_hat
        torch.testing.assert_close(noise - implied_noise, noise_error_scale(prediction, sigma) * (x0_hat - x0))

    def test_loss_equals_the_closed_form_for_the_gaussian_denoiser(self):
        denoiser, levels, seed = GaussianDenoiser(WIDTH, text_gain=0.0), 5, 9
        x0 = torch.randn(2, C, H, H, generator=_gen(40)) * DATA_STD
        cond = _original(_prompt(2))
        generator, expected = _gen(seed), torch.zeros(2, dtype=torch.float64)
        for j in range(levels):
            sigma = SIGMA_MIN + (j + 0.5) / levels * (SIGMA_MAX - SIGMA_MIN)
            n = torch.randn(x0.shape, generator=generator).double()
            # x0_hat - x0 = (sigma n s^2 - sigma^2 x0) / (s^2 + sigma^2); noise error = that / sigma
            error = (n * DATA_STD**2 - sigma * x0.double()) / (DATA_STD**2 + sigma**2)
            expected += error.pow(2).flatten(1).mean(dim=1)
        got = denoising_loss(denoiser, x0, cond, levels=levels, seed=seed)
        torch.testing.assert_close(got, expected / levels, rtol=1e-4, atol=0)

    @pytest.mark.claim
    def test_typical_samples_score_as_more_likely_than_far_ones(self):
        denoiser = GaussianDenoiser(WIDTH, text_gain=0.0)
        typical = torch.randn(4, C, H, H, generator=_gen(41)) * DATA_STD
        cond = _original(_prompt(4))
        loss_typical = denoising_loss(denoiser, typical, cond, levels=10, seed=0)
        loss_far = denoising_loss(denoiser, typical * 4, cond, levels=10, seed=0)
        assert (loss_far > loss_typical).all(), (loss_typical, loss_far)

    def test_seed_reproduces_and_samples_are_scored_independently(self):
        denoiser = GaussianDenoiser(WIDTH, text_gain=0.0)
        x0 = torch.randn(3, C, H, H, generator=_gen(42))
        cond = _original(_prompt(3))
        a = denoising_loss(denoiser, x0, cond, levels=4, seed=1)
        assert torch.equal(a, denoising_loss(denoiser, x0, cond, levels=4, seed=1))
        assert not torch.equal(a, denoising_loss(denoiser, x0, cond, levels=4, seed=2))
        changed = x0.clone()
        changed[2] *= 3
        b = denoising_loss(denoiser, changed, cond, levels=4, seed=1)
        assert torch.equal(a[:2], b[:2]) and b[2] != a[2]

    def test_more_levels_average_more_noise_levels(self):
        denoiser = GaussianDenoiser(WIDTH, text_gain=0.0)
        x0 = torch.randn(1, C, H, H, generator=_gen(43))
        cond = _original(_prompt(1))
        one = float(denoising_loss(denoiser, x0, cond, levels=1, seed=0)[0])
        assert math.isfinite(one)
        # one level sits at the schedule's midpoint; the loss at exactly that sigma, recomputed:
        sigma = SIGMA_MIN + 0.5 * (SIGMA_MAX - SIGMA_MIN)
        n = torch.randn(x0.shape, generator=_gen(0))
        error = (n * DATA_STD**2 - sigma * x0) / (DATA_STD**2 + sigma**2)
        assert one == pytest.approx(float(error.pow(2).mean()), rel=1e-4)
