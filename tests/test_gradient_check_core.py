"""core.diagnostics.gradient_check: the central difference and its Richardson extrapolation."""
import torch

from core.diagnostics.gradient_check import directional_check


def test_richardson_cancels_the_central_differences_h2_term():
    """f = sum(x^3): the central difference errs by h^2 * f'''/6 along v; Richardson's (4 D(h/2) - D(h)) / 3 is
    exact for a cubic (up to float64 round-off)."""
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    v = torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64)
    f = lambda t: (t ** 3).sum()  # noqa: E731
    exact = float((3 * x ** 2 * v).sum())
    plain = directional_check(f, x, v, step=0.1)
    extrapolated = directional_check(f, x, v, step=0.1, richardson=True)
    assert plain.autograd == exact == extrapolated.autograd
    assert abs(plain.finite_difference - exact) > 1e-3  # 0.01 * sum(v^3) = 0.00728
    assert abs(extrapolated.finite_difference - exact) < 1e-12
