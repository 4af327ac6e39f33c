"""`flowvi.numpyro.FlowTransform` without intermediates: log|det J| against jax.jacfwd (float64),
the inverse, and the density NumPyro computes from them, for every family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowvi import flows
from flowvi.numpyro import FlowTransform, flow_distribution

DIM = 3
TINY = {
    "gaussian": {"covariance": "full"},
    "affine_coupling": {"layers": 2, "hidden": (4,)},
    "spline_coupling": {"layers": 2, "hidden": (4,), "bins": 3},
    "iaf": {"layers": 2, "hidden": (4,)},
    "maf": {"layers": 1, "hidden": (4,)},
    "bnaf": {"layers": 1, "block_size": (3,)},
}


def test_every_family_is_covered():
    assert set(TINY) == set(flows.FAMILIES)


@jax.jit
def _check(transform, x):
    """Everything NumPyro asks of the transform, with the transform passed as a pytree (its params)."""
    y = transform(x)
    y_with, intermediates = transform.call_with_intermediates(x)
    flow = transform.flow
    return {
        "y": y, "y_with": y_with,
        "log_det": transform.log_abs_det_jacobian(x, y),  # no intermediates: recomputed from x
        "log_det_with": transform.log_abs_det_jacobian(x, y, intermediates),
        "exact": jax.vmap(lambda p: jnp.linalg.slogdet(jax.jacfwd(transform)(p))[1])(x),
        "x_back": transform.inv(y),
        # NumPyro's density of a point not drawn by the flow: base(T^{-1}(y)) - log|det J|, no intermediates.
        "log_prob": flow_distribution(flow, transform.params).log_prob(y),
        "flowvi_log_prob": flow.apply(transform.params).log_prob(y),
    }


@pytest.mark.parametrize("name", list(TINY))
def test_log_abs_det_jacobian_without_intermediates_matches_jacfwd(x64, name):
    flow = flows.make_flow(name, DIM, **TINY[name])
    rng = np.random.default_rng(0)
    # Random parameters (every leaf N(0, 0.3^2)), far from the identity initialisation.
    params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape)),
                          jax.eval_shape(flow.init, jax.random.key(0)))
    x = jnp.asarray(1.5 * rng.standard_normal((5, DIM)))
    out = jax.device_get(_check(FlowTransform(flow, params), x))
    assert out["log_det"].shape == (5,) and out["log_det"].dtype == np.float64
    np.testing.assert_allclose(out["log_det"], out["exact"], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(out["log_det_with"], out["log_det"], atol=1e-12)
    np.testing.assert_allclose(out["y_with"], out["y"], atol=1e-12)
    assert np.abs(out["y"] - x).max() > 1e-2 and np.abs(out["exact"]).max() > 1e-2  # not the identity
    # bnaf's inverse is bisection to float64 resolution; the others are exact up to rounding.
    np.testing.assert_allclose(out["x_back"], x, atol=1e-8)
    np.testing.assert_allclose(out["log_prob"], out["flowvi_log_prob"], rtol=1e-8, atol=1e-8)
