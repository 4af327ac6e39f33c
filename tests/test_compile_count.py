"""Compile less: the probe is one program, and base draws are made flat (XLA:CPU compiles 2-D threefry slowly).

The numbers stay those of distrax's ``sample_and_log_prob`` and of ``jax.random.normal`` with the 2-D shape.
"""

import contextlib

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import flowvi
from flowvi import flows
from flowvi.objectives import _draws, base_draws, negative_elbo
from flowvi.posterior import _sample_runs

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def compiled_programs():
    """The names of the programs XLA compiles inside the block."""
    names = []

    def listen(event, seconds, fun_name=None, **kwargs):
        if event == COMPILE_EVENT:
            names.append(fun_name)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def random_bits_shapes(jaxpr) -> list[tuple]:
    """Shapes of every random-bits draw in a closed jaxpr, nested jaxprs (scan, pjit, cond) included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "random_bits":
            found.append(tuple(eqn.params["shape"]))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += random_bits_shapes(sub)
    return found


def test_the_probe_compiles_one_program():
    def log_density(x):  # a new function: nothing of it is compiled yet
        return -0.5 * jnp.sum(x ** 2) - 0.1 * jnp.sum(x ** 4)

    with compiled_programs() as names:
        report = flowvi.Target(log_density, 3).probe()
    assert report.zero_density == 0
    assert names == ["jit(_probe_body)"]  # before: the draw, the value and the gradient separately (and casts)


def test_the_probe_points_are_the_standard_normal_draws_of_key_0():
    # The probe's points must not change with how they are drawn: compare where the target fails.
    points = np.asarray(jax.random.normal(jax.random.key(0), (16, 2)))
    first = points[points[:, 0] > 1.0][0]

    def log_density(x):  # NaN where x0 > 1: the message names the first such probe point
        return jnp.where(x[0] > 1.0, jnp.nan, -0.5 * jnp.sum(x ** 2))

    with pytest.raises(ValueError, match=rf"NaN at {int((points[:, 0] > 1).sum())} of 16 .*x = \[{first[0]:.3g}, "
                                         rf"{first[1]:.3g}\]"):
        flowvi.Target(log_density, 2).probe()


@pytest.mark.parametrize("family", ["gaussian", "spline_coupling", "iaf"])
def test_loss_draws_are_flat_and_are_distrax_draws(family):
    flow = flows.make_flow(family, 4, **({} if family == "gaussian" else {"layers": 2, "hidden": (8,)}))
    params = jax.tree.map(lambda a: a + 0.1, flow.init(jax.random.key(0)))
    key = jax.random.key(3)
    x, log_q = jax.jit(lambda p, k: _draws(flow.apply(p), k, 16, None))(params, key)
    x0, log_q0 = jax.jit(lambda p, k: flow.apply(p).sample_and_log_prob(seed=k, sample_shape=(16,)))(params, key)
    # The base draws are bit for bit jax.random.normal's; the flow's arithmetic may round differently once fused.
    u = jax.jit(lambda p, k: base_draws(flow.apply(p), k, 16))(params, key)
    np.testing.assert_array_equal(u, jax.random.normal(key, (16, 4)))
    np.testing.assert_allclose(x, x0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(log_q, log_q0, rtol=1e-6, atol=1e-5)

    def loss(p, k):
        return negative_elbo(p, k, flow, lambda x: -0.5 * jnp.sum(x ** 2), 16)

    shapes = random_bits_shapes(jax.make_jaxpr(jax.value_and_grad(loss))(params, key).jaxpr)
    assert shapes == [(16 * 4,)]  # before: [(16, 4)]


@pytest.mark.parametrize("runs", [1, 3])
def test_posterior_draws_are_flat_and_each_runs_own(runs):
    flow = flows.make_flow("iaf", 3, layers=2, hidden=(8,))
    params = jax.vmap(flow.init)(jax.random.split(jax.random.key(0), runs))
    params = jax.tree.map(lambda a: a + 0.05 * jnp.arange(a.size, dtype=a.dtype).reshape(a.shape) / a.size, params)
    key = jax.random.key(5)
    x, log_q = _sample_runs(flow, params, 10, key)
    keys = jax.random.split(key, runs)
    for r in range(runs):
        own = jax.jit(lambda p, k: flow.apply(p).sample_and_log_prob(seed=k, sample_shape=(10,)))(
            jax.tree.map(lambda a, r=r: a[r], params), keys[r])
        np.testing.assert_allclose(x[r], own[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(log_q[r], own[1], rtol=1e-6, atol=1e-5)
    jaxpr = jax.make_jaxpr(_sample_runs, static_argnums=(0, 2))(flow, params, 10, key).jaxpr
    assert all(len(shape) == 1 for shape in random_bits_shapes(jaxpr))  # before: (runs, 10, 3) under vmap
