"""Control variates for the subsampled likelihood (`flowvi.control_variates`, ``fit(control_variates=)``)."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import randomize
from test_data_target import logistic_rows, numpyro_logistic, paired_gradient_differences, plain_logistic, z_scores

import flowvi
from flowvi.control_variates import MAX_SECOND_ORDER_DIM, choose_order, with_control_variates
from flowvi.data_target import DataSpec
from flowvi.objectives import target_values


def logistic_target(kind, n):
    return plain_logistic(n) if kind == "plain" else flowvi.Target.from_numpyro(numpyro_logistic,
                                                                             *logistic_rows(n))


def mode_and_sd(log_density, dim):
    """The mode (Newton's method from 0: the logistic log density is concave) and the Laplace sds."""
    grad, hess = jax.jit(jax.grad(log_density)), jax.jit(jax.hessian(log_density))
    x = jnp.zeros(dim)
    for _ in range(8):
        x = x - jnp.linalg.solve(hess(x), grad(x))
    return x, np.sqrt(np.diag(np.linalg.inv(-np.asarray(hess(x), np.float64))))


def controlled(target, batch, order=2):
    """The plain minibatch spec, the controlled one (around the mode, as the warm start's centre), the mode, the sds."""
    sub, full = target.data_spec(batch), target.data_spec()
    center, sd = mode_and_sd(target.log_density, target.dim)
    data = jax.device_put(sub.data)
    density, cv_data = with_control_variates(sub.log_density, full.log_density, data, center, order)
    return sub._replace(data=data), DataSpec(density, cv_data, None, sub.num_data), center, sd


@functools.partial(jax.jit, static_argnums=0)
def _values_and_grads(log_density, data, x, keys):
    return jax.vmap(lambda k: jax.value_and_grad(log_density)(x, data, k))(keys)


def values_and_grads(spec, x, num_keys=2000):
    """``(values: (num_keys,), grads: (num_keys, dim))`` of the spec's log density at ``x`` over minibatch keys."""
    return _values_and_grads(spec.log_density, spec.data, x, jax.random.split(jax.random.key(7), num_keys))


@pytest.mark.parametrize("kind", ["plain", "numpyro"])
def test_controlled_estimate_is_unbiased(kind):
    target = logistic_target(kind, 200)
    sub, cv, center, sd = controlled(target, 10)
    # At a point 3 posterior sds from the centre, where the Taylor expansion is no longer exact: the
    # estimate's mean over minibatch keys is the full-data value and gradient. z = mean / its s.e.
    # over 2000 keys; |z| < 4 on each of the 4 numbers fails by chance with probability 2.5e-4.
    x = center + 3.0 * jnp.asarray(sd) * jnp.array([1.0, -1.0, 1.0])
    full_value, full_grad = jax.value_and_grad(target.log_density)(x)
    values, grads = values_and_grads(cv, x)
    diffs = np.column_stack([values - full_value, grads - full_grad])
    assert np.all(diffs.std(0) > 1e-4)  # the remainder's minibatch noise is real (not float rounding) ...
    assert np.max(np.abs(z_scores(diffs))) < 4.0  # ... and averages out
    # The ELBO gradient of a flow far from the centre (the existing subsampling test's check): the same
    # draws with the controlled minibatch against the full data.
    flow = flowvi.flows.make_flow("gaussian", 3)
    params = randomize(flow.init(jax.random.key(0)), jax.random.key(1))
    full = target.data_spec()
    d = np.asarray(paired_gradient_differences(cv, full, flow, params))
    assert np.all(d.std(0) > 0.1)
    assert np.max(np.abs(z_scores(d))) < 4.0
    if kind == "plain":
        # The check has power: with the full data's Hessian 10% off, the estimate is biased (measured
        # |z| 16-33 on the four numbers).
        rows, expansion = cv.data
        biased = cv._replace(data=(rows, expansion._replace(hess=1.1 * expansion.hess)))
        values, grads = values_and_grads(biased, x)
        assert np.max(np.abs(z_scores(np.column_stack([values - full_value, grads - full_grad])))) > 8


def test_controlled_variance_is_far_below_the_plain_estimators_near_the_centre():
    sub, cv, center, sd = controlled(plain_logistic(2000), 50)
    first = controlled(plain_logistic(2000), 50, order=1)[1]
    direction = jnp.asarray(sd) * jnp.array([1.0, -1.0, 1.0])
    ratios = {}
    for name, spec in (("cv", cv), ("first", first)):
        for k in (0.0, 1.0, 3.0):
            x = center + k * direction
            (v_plain, g_plain), (v, g) = values_and_grads(sub, x), values_and_grads(spec, x)
            ratios[name, k] = (float(v.var() / v_plain.var()), float(np.max(g.var(0) / g_plain.var(0))))
    # Variance over 2000 keys (relative s.e. of each variance 3%) of the controlled estimate over the plain
    # one's, (value, worst gradient coordinate), measured (N = 2000, B = 50, d = 3, x = centre + k sd):
    # second order: k = 0: 4e-11, 9e-16 (exact up to float rounding); k = 1: 9.2e-9, 6.5e-6;
    # k = 3: 5.9e-6, 4.7e-4. First order: k = 1: 9.6e-6, 3.3e-3; k = 3: 7.2e-4, 3.1e-2.
    # Bounds: 10 to 100 times the measured ratio (25 times for the rounding at k = 0).
    assert ratios["cv", 0.0][0] < 1e-9 and ratios["cv", 0.0][1] < 1e-9
    assert ratios["cv", 1.0][0] < 1e-6 and ratios["cv", 1.0][1] < 1e-4
    assert ratios["cv", 3.0][0] < 1e-4 and ratios["cv", 3.0][1] < 1e-2
    # The first-order form (above MAX_SECOND_ORDER_DIM coordinates) still helps, but leaves the linear noise.
    assert ratios["first", 1.0][1] < 0.03 and ratios["first", 1.0][1] > 20 * ratios["cv", 1.0][1]


def test_the_batch_expansion_is_computed_once_per_step_not_per_draw():
    sub, cv, center, _ = controlled(plain_logistic(200), 10)
    x = center + 0.01 * jax.random.normal(jax.random.key(0), (64, 3))
    jaxpr = str(jax.make_jaxpr(lambda x, k: target_values(cv.log_density, x, k, cv.data))(x, jax.random.key(1)))
    shapes = set(re.findall(r"f32\[([0-9,]+)\]", jaxpr))
    assert "3,3" in shapes  # the batch Hessian, once ...
    assert not [s for s in shapes if s.startswith("64,") and s.count(",") >= 2]  # ... and never per draw


def test_subsampled_fit_with_defaults_matches_the_conjugate_posterior():
    # y_i ~ N(mu, 1), N = 10^5, mu ~ N(0, 10^2): posterior N(sum(y) / (N + 0.01), 1 / (N + 0.01)).
    n = 100_000
    y = np.random.default_rng(0).normal(0.7, 1.0, n).astype(np.float32)
    target = flowvi.Target(log_prior=lambda x: -0.5 * (x[0] / 10.0) ** 2,
                           log_likelihood=lambda x, yi: -0.5 * (yi - x[0]) ** 2, data=y, dim=1)
    post = flowvi.fit(target, subsample=1000, key=jax.random.key(0), progress=False)
    assert post.settings["control_variates"].startswith("second-order")
    x = np.asarray(post.sample(jax.random.key(1), 20_000), np.float64)[:, 0]
    mean, sd = y.astype(np.float64).sum() / (n + 0.01), 1 / np.sqrt(n + 0.01)
    # Measured over keys 0-3: mean error 0.009-0.017 sd, sd ratio 0.993-1.009 (the likelihood is
    # quadratic, so the controlled estimate is the full-data density and only the draws are noisy).
    # Without control variates (control_variates=False) the same fits are 0.26-0.35 sd off.
    # The 20,000 draws add a s.e. of 0.007 sd to the mean and 0.005 to the sd ratio.
    assert abs(x.mean() - mean) / sd < 0.1
    assert 0.9 < x.std() / sd < 1.1


def test_control_variates_bad_values_are_named():
    # Every error comes before the warm start and the compilation (nothing is fitted here).
    target = plain_logistic(50)
    kw = dict(flow="gaussian", steps=2, key=jax.random.key(0))
    for bad in ("yes", 1, None, "on"):
        with pytest.raises(ValueError, match=r"control_variates must be 'auto', True or False"):
            flowvi.fit(target, subsample=10, control_variates=bad, **kw)
    with pytest.raises(ValueError, match=r"control_variates=True needs subsample=B"):
        flowvi.fit(target, control_variates=True, **kw)
    with pytest.raises(ValueError, match=r"control_variates=True needs subsample below the number of "
                                         r"observations N=50"):
        flowvi.fit(target, subsample=50, control_variates=True, **kw)
    with pytest.raises(ValueError, match=r"control_variates=True needs init='auto'"):
        flowvi.fit(target, subsample=10, control_variates=True, init="standard", **kw)
    # A warm start that finds nothing (the standard normal beat every Laplace approximation).
    with pytest.raises(ValueError, match=r"control_variates=True needs a reference point.*standard normal"):
        choose_order(True, True, None, "the standard normal had a larger ELBO", 3)


def test_settings_record_what_was_used():
    target = plain_logistic(200)
    kw = dict(flow="gaussian", steps=20, subsample=20, key=jax.random.key(0))
    assert flowvi.fit(target, **kw).settings["control_variates"].startswith("second-order")
    standard = flowvi.fit(target, init="standard", **kw).settings["control_variates"]
    assert standard == "off (no reference point: init='standard')"
    assert choose_order(False, True, np.zeros(3), "", 3) == (None, "off (control_variates=False)")
    assert choose_order("auto", False, np.zeros(3), "", 3) == (None, "off (no subsampling)")
    assert choose_order("auto", True, np.zeros(MAX_SECOND_ORDER_DIM + 1), "", MAX_SECOND_ORDER_DIM + 1)[0] == 1
    assert choose_order("auto", True, np.full(3, np.nan), "", 3)[0] is None
