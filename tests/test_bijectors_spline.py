"""flowvi's rational-quadratic spline against distrax's: same map, same log-det, same gradients."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowvi.bijectors import RationalQuadraticSpline

BINS, LO, HI = 6, -3.0, 3.0


def _pair(params):
    ours = RationalQuadraticSpline(params, LO, HI)
    theirs = distrax.RationalQuadraticSpline(params, range_min=LO, range_max=HI, boundary_slopes="identity",
                                             min_bin_size=1e-3, min_knot_slope=1e-3)
    return ours, theirs


# Compiled, one program each rather than op by op (the same float64 arithmetic, in far less time).
_forward_and_log_det = jax.jit(lambda params, x, which: _pair(params)[which].forward_and_log_det(x),
                               static_argnums=2)


def _inputs(params, n):
    """Points inside and outside the interval, on both boundaries and on every knot."""
    x = jax.random.uniform(jax.random.key(3), (n, params.shape[0]), jnp.float64, -4.0, 4.0)
    knots = np.asarray(_pair(params)[1].x_pos)  # (dim, bins + 1)
    return jnp.concatenate([x, jnp.asarray(knots.T), jnp.full((2, params.shape[0]), LO),
                            jnp.full((1, params.shape[0]), HI)])


@pytest.mark.parametrize("scale", [0.0, 0.5, 3.0])
def test_forward_and_log_det_match_distrax(x64, scale):
    params = scale * jax.random.normal(jax.random.key(1), (4, 3 * BINS + 1), jnp.float64)
    x = _inputs(params, 200)  # (n, 4): broadcasts against the params' batch shape (4,)
    y, ld = _forward_and_log_det(params, x, 0)
    y_ref, ld_ref = _forward_and_log_det(params, x, 1)
    np.testing.assert_allclose(y, y_ref, atol=1e-10)
    np.testing.assert_allclose(ld, ld_ref, atol=1e-9)
    if scale == 0.0:
        np.testing.assert_allclose(y, x, atol=1e-12)  # zero params: the identity


def test_log_det_matches_jacfwd_and_inverse_round_trips(x64):
    params = jax.random.normal(jax.random.key(2), (5, 3 * BINS + 1), jnp.float64)
    x = jax.random.uniform(jax.random.key(4), (5,), jnp.float64, -3.5, 3.5)

    @jax.jit
    def check(params, x):
        ours = RationalQuadraticSpline(params, LO, HI)
        exact = jnp.log(jnp.diag(jax.jacfwd(ours.forward)(x)))
        return ours.forward_and_log_det(x)[1], exact, ours.inverse(ours.forward(x))

    ld, exact, back = check(params, x)
    np.testing.assert_allclose(ld, exact, atol=1e-10)
    np.testing.assert_allclose(back, x, atol=1e-9)


def test_parameter_gradients_match_distrax(x64):
    params = jax.random.normal(jax.random.key(5), (3, 3 * BINS + 1), jnp.float64)
    x = jax.random.uniform(jax.random.key(6), (50, 3), jnp.float64, -3.5, 3.5)

    def loss(p, which):
        y, ld = _pair(p)[which].forward_and_log_det(x)
        return jnp.sum(jnp.sin(y)) + jnp.sum(ld)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    np.testing.assert_allclose(grad(params, 0), grad(params, 1), atol=1e-8)


def test_wrong_parameter_length_is_refused():
    with pytest.raises(ValueError, match="3 \\* bins \\+ 1"):
        RationalQuadraticSpline(jnp.zeros((2, 3 * BINS)), LO, HI)
