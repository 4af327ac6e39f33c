"""The reverse-KL gradient estimators against the closed-form ELBO gradient.

A Gaussian flow ``x = loc + D L u`` (``D = diag(scale)``, ``L`` unit lower-triangular) on a
Gaussian target ``N(m, S)``: ``q = N(loc, C)`` with ``C = D L L^T D``, and

    -ELBO = KL(q || p) - log Z = 0.5 [tr(S^-1 C) + (loc - m)^T S^-1 (loc - m) - d + log det S
            - log det C]   (log Z = 0: the target is normalised),

with ``log det C = 2 sum log scale``. Its gradient (autodiff of this formula, float64) is the
exact answer; the Monte Carlo gradients of `negative_elbo`, averaged over independent keys,
must match it within their standard errors, and STL's must vanish at the optimum.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowvi import flows
from flowvi.flows.base import positive_scale
from flowvi.objectives import negative_elbo

MEAN = np.array([1.0, -1.0])
COV = np.array([[2.0, 0.6], [0.6, 0.5]])
KEYS, DRAWS = 400, 8  # gradients averaged over 400 keys of 8 draws each


def _gaussian_log_density(mean, cov):
    prec, (_, logdet) = jnp.linalg.inv(cov), jnp.linalg.slogdet(cov)

    def log_density(x):
        r = x - mean
        return -0.5 * (r @ prec @ r + logdet + mean.shape[0] * jnp.log(2 * jnp.pi))
    return log_density


def _factor(params):
    """``D L``: the flow's linear map, built from the parameters as the docstring says (not by the flow)."""
    unit = jnp.eye(2)
    if "lower" in params:
        unit = unit + jnp.tril(params["lower"], -1)
    return positive_scale(params["affine"]["raw_scale"])[:, None] * unit


def _closed_form_negative_elbo(params, mean, cov):
    factor = _factor(params)
    c = factor @ factor.T
    prec = jnp.linalg.inv(cov)
    r = params["affine"]["loc"] - mean
    return 0.5 * (jnp.trace(prec @ c) + r @ prec @ r - 2 + jnp.linalg.slogdet(cov)[1] - jnp.linalg.slogdet(c)[1])


def _params(covariance):
    params = {"affine": {"loc": jnp.array([0.3, -0.2]), "raw_scale": jnp.array([-0.5, 0.5])}}
    if covariance == "full":
        params["lower"] = jnp.array([[0.7, -0.3], [0.5, 0.9]])  # only [1, 0] is used
    return params


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _monte_carlo(flow, estimator, log_density, params, keys):
    """Per key: the loss and its gradient (a pytree with a leading key axis)."""
    return jax.vmap(jax.value_and_grad(
        lambda p, k: negative_elbo(p, k, flow, log_density, DRAWS, estimator)), in_axes=(None, 0))(params, keys)


@pytest.mark.parametrize("covariance", ["diag", "full"])
@pytest.mark.parametrize("estimator", ["reparam", "stl"])
def test_gradient_matches_the_closed_form(x64, estimator, covariance):
    flow = flows.make_flow("gaussian", 2, covariance=covariance)
    params = _params(covariance)
    mean, cov = jnp.asarray(MEAN), jnp.asarray(COV)
    exact_loss, exact_grad = jax.value_and_grad(_closed_form_negative_elbo)(params, mean, cov)
    log_density = _gaussian_log_density(mean, cov)
    keys = jax.random.split(jax.random.key(0), KEYS)
    losses, grads = _monte_carlo(flow, estimator, log_density, params, keys)
    # The loss: mean of 400 x 8 draws, within 4 standard errors of -ELBO.
    assert abs(float(losses.mean()) - float(exact_loss)) < 4 * float(losses.std() / np.sqrt(KEYS))
    for path, got in jax.tree_util.tree_leaves_with_path(grads):
        want = np.asarray(functools.reduce(lambda t, k: t[k.key], path, exact_grad))
        got = np.asarray(got)
        mean_grad, se = got.mean(0), got.std(0, ddof=1) / np.sqrt(KEYS)
        where = jax.tree_util.keystr(path)
        # Entries the flow does not use (lower's diagonal and upper part) get exactly zero gradient.
        unused = se == 0
        np.testing.assert_array_equal(mean_grad[unused], want[unused], err_msg=where)
        # Each used entry within 4 standard errors of the exact gradient, and the test has power: the
        # standard error is under a tenth of the exact value (the smallest, lower[1, 0], is ~0.3).
        z = (mean_grad[~unused] - want[~unused]) / se[~unused]
        assert np.all(np.abs(z) < 4), (where, z, mean_grad, want)
        assert np.all(se[~unused] < 0.1 * np.abs(want[~unused])), (where, se, want)


def test_stl_gradient_vanishes_at_the_optimum_and_reparam_does_not(x64):
    # The target is the flow itself: q = p, every draw's STL gradient is 0 (Roeder et al. 2017),
    # while the plain reparameterisation gradient is 0 only on average (its score term is noise).
    flow = flows.make_flow("gaussian", 2, covariance="full")
    params = _params("full")
    factor = _factor(params)
    log_density = _gaussian_log_density(params["affine"]["loc"], factor @ factor.T)
    keys = jax.random.split(jax.random.key(1), KEYS)
    stl_losses, stl = _monte_carlo(flow, "stl", log_density, params, keys)
    reparam_losses, reparam = _monte_carlo(flow, "reparam", log_density, params, keys)
    # Both estimators report the same loss, here exactly KL = 0 at every draw.
    np.testing.assert_allclose(stl_losses, reparam_losses, atol=1e-12)
    np.testing.assert_allclose(stl_losses, 0.0, atol=1e-12)
    for s, r in zip(jax.tree.leaves(stl), jax.tree.leaves(reparam), strict=True):
        np.testing.assert_allclose(s, 0.0, atol=1e-10)
        np.testing.assert_allclose(r.mean(0), 0.0, atol=4 * float(r.std(0).max()) / np.sqrt(KEYS))
    assert max(float(np.abs(r).max()) for r in jax.tree.leaves(reparam)) > 0.1
