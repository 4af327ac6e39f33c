"""Sweeps over every family, both orientations: batch shapes, float32/float64, jit and no jit.

For each family in `flowvi.flows.FAMILIES`, plain and ``inverted=True``, a tiny flow
with random parameters is asked for ``sample``, ``sample_and_log_prob`` and
``log_prob`` at several sample shapes, compiled and op by op, in float32 and
float64. The checks are on values, not only shapes:

- ``sample`` and ``sample_and_log_prob`` give the same draws for the same key;
- ``log_prob`` of the flow's own draws equals the density ``sample_and_log_prob``
  returned with them (the two directions of the bijector agree), at every batch
  shape: one point, a ``(2, 3)`` batch, the same points flattened to ``(6, dim)``;
- jit and no jit give the same numbers, and float32 agrees with float64.

Each (family, orientation, dtype) compiles one function that evaluates every
shape at once (compilation is most of the cost).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowvi import flows

DIM = 3
TINY = {
    "gaussian": {"covariance": "full"},
    "affine_coupling": {"layers": 1, "hidden": (4,)},
    "spline_coupling": {"layers": 1, "hidden": (4,), "bins": 3},
    "iaf": {"layers": 1, "hidden": (4,)},
    "maf": {"layers": 1, "hidden": (4,)},
    "bnaf": {"layers": 1, "block_size": (2,)},
}
CASES = [(name, inverted) for name in flows.FAMILIES for inverted in (False, True)]
IDS = [f"{name}{'-inverted' if inverted else ''}" for name, inverted in CASES]
# log_prob of own draws against the density returned with them: float32 rounding through a few
# layers (and the bisection inverse of bnaf, the sequential one of iaf) stays below 1e-4 at |log q| ~ 5.
TOL = {"float32": 1e-4, "float64": 1e-9}


def test_every_family_is_swept():
    assert set(TINY) == set(flows.FAMILIES)


def _flow_and_params(name, inverted, dtype):
    """A tiny flow and random parameters (all leaves N(0, 0.3^2), far from the identity initialisation).

    The numbers are drawn in numpy (no compilation) and rounded to float32, so
    both dtypes get the same parameters.
    """
    flow = flows.make_flow(name, DIM, inverted=inverted, **TINY[name])
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(flow.init, jax.random.key(0))
    return flow, jax.tree.map(lambda s: jnp.asarray(np.float32(0.3 * rng.standard_normal(s.shape)), dtype), shapes)


def _evaluate(flow, params, key):
    """Draws and densities at sample shapes () and (2, 3); log_prob of the (2, 3) draws as a batch and
    flattened to (6, dim); ``sample`` at (2, 3) with the same key."""
    dist = flow.apply(params)
    x0, log_q0 = dist.sample_and_log_prob(seed=key, sample_shape=())
    x, log_q = dist.sample_and_log_prob(seed=key, sample_shape=(2, 3))
    return {"x0": x0, "log_q0": log_q0, "log_p0": dist.log_prob(x0),
            "x": x, "log_q": log_q, "log_p": dist.log_prob(x),
            "log_p_flat": dist.log_prob(x.reshape(6, DIM)),
            "sample": dist.sample(seed=key, sample_shape=(2, 3))}


def _evaluate_small(flow, params, key, points):
    """Draws at (2, 3) with their density, and log_prob of ``[draws, points]``, a (2, 2, 3) batch
    (`points: (2, 3, dim)`)."""
    dist = flow.apply(params)
    x, log_q = dist.sample_and_log_prob(seed=key, sample_shape=(2, 3))
    log_p = dist.log_prob(jnp.stack([x, points]))
    return {"x": x, "log_q": log_q, "log_p": log_p[0], "log_p_points": log_p[1]}


_compiled = jax.jit(_evaluate, static_argnums=0)
_compiled_small = jax.jit(_evaluate_small, static_argnums=0)


@pytest.mark.parametrize(("name", "inverted"), CASES, ids=IDS)
def test_batch_shapes_and_own_densities(name, inverted):
    flow, params = _flow_and_params(name, inverted, "float32")
    out = jax.device_get(_compiled(flow, params, jax.random.key(2)))
    tol = TOL["float32"]
    assert out["x0"].shape == (DIM,) and out["log_q0"].shape == out["log_p0"].shape == ()
    assert out["x"].shape == out["sample"].shape == (2, 3, DIM)
    assert out["log_q"].shape == out["log_p"].shape == (2, 3)
    assert out["log_p_flat"].shape == (6,)
    assert {a.dtype for a in out.values()} == {np.dtype("float32")}
    assert all(np.isfinite(a).all() for a in out.values())
    np.testing.assert_array_equal(out["sample"], out["x"])  # same key, same draws
    # The density returned with the draws is the density of the draws, whatever the batch shape.
    np.testing.assert_allclose(out["log_p0"], out["log_q0"], rtol=tol, atol=tol)
    np.testing.assert_allclose(out["log_p"], out["log_q"], rtol=tol, atol=tol)
    np.testing.assert_allclose(out["log_p_flat"], out["log_q"].reshape(6), rtol=tol, atol=tol)
    # The draws are spread out (the random flow is not degenerate).
    assert np.ptp(out["x"].reshape(6, DIM), axis=0).min() > 1e-2


@pytest.mark.parametrize(("name", "inverted"), CASES, ids=IDS)
def test_float64_jit_and_op_by_op(name, inverted):
    flow, params = _flow_and_params(name, inverted, "float32")
    key = jax.random.key(2)
    jitted = jax.device_get(_compiled(flow, params, key))  # compiled by the test above
    # Op by op: the same numbers up to fusion-order rounding (float32 eps 1.2e-7, |log q| ~ 5).
    eager = jax.device_get(_evaluate_small(flow, params, key, jitted["x"]))
    for k in ("x", "log_q", "log_p"):
        np.testing.assert_allclose(eager[k], jitted[k], rtol=1e-5, atol=1e-5)
    with jax.enable_x64(True):
        _, params64 = _flow_and_params(name, inverted, "float64")
        out = jax.device_get(_compiled_small(flow, params64, key, jnp.asarray(jitted["x"], jnp.float64)))
    assert {a.dtype for a in out.values()} == {np.dtype("float64")}
    assert out["x"].shape == (2, 3, DIM) and out["log_q"].shape == out["log_p"].shape == (2, 3)
    np.testing.assert_allclose(out["log_p"], out["log_q"], rtol=TOL["float64"], atol=TOL["float64"])
    # float32 loses nothing beyond rounding: its densities are the float64 ones at the same points.
    np.testing.assert_allclose(jitted["log_q"], out["log_p_points"], rtol=1e-4, atol=1e-4)
