"""Tempering (`flowvi.tempering`): the schedule, the tempered loss, and a fit that ends on the target itself."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowvi
from flowvi.flows import resolve_flow
from flowvi.objectives import negative_elbo
from flowvi.tempering import DEFAULT_FRACTION, DEFAULT_STEPS, Tempering, check_tempering


def standard_normal(x):
    return -0.5 * jnp.sum(x ** 2)


def test_the_schedule_is_geometric_from_beta0_to_one_and_then_stays_at_one():
    t = Tempering(0.01, 100)
    beta = np.array([float(t.beta(s)) for s in (0, 25, 50, 100, 500)])
    np.testing.assert_allclose(beta, [0.01, 0.01 ** 0.75, 0.1, 1.0, 1.0], rtol=1e-5)


@pytest.mark.parametrize(("value", "steps", "expected"), [
    (0.1, 400, Tempering(0.1, int(DEFAULT_FRACTION * 400))),
    (0.1, None, Tempering(0.1, DEFAULT_STEPS)),
    ((0.5, 10), 400, Tempering(0.5, 10)),
    ([0.5, 10], None, Tempering(0.5, 10)),
    (None, 400, None),
])
def test_tempering_option_forms(value, steps, expected):
    assert check_tempering(value, steps) == expected


@pytest.mark.parametrize(("value", "match"), [
    (0.0, r"beta0 must be in \(0, 1\)"), (1.0, r"beta0 must be in \(0, 1\)"), (1.5, r"beta0 must be in \(0, 1\)"),
    (("a", 10), "beta0 must be a number"), (True, "tempering must be None, beta0"), ("hot", "tempering must be"),
    ((0.1, 0), "num_steps must be a positive int"), ((0.1, 2.5), "num_steps must be a positive int"),
    ((0.1, 400), r"num_steps \(400\) must be below steps=400"), ((0.1, 2, 3), "tempering must be"),
])
def test_bad_tempering_names_the_option(value, match):
    with pytest.raises(ValueError, match=match):
        check_tempering(value, 400)


def test_fit_refuses_tempering_where_it_does_not_apply():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="tempering does not apply with flow='auto'"):
        flowvi.fit(standard_normal, dim=2, flow="auto", tempering=0.1, key=key)
    with pytest.raises(ValueError, match="does not take tempering"):
        flowvi.fit(lambda x, c: standard_normal(x - c), dim=2, contexts=jnp.zeros((4, 2)), tempering=0.1, key=key)
    with pytest.raises(ValueError, match=r"must be below max_steps=500"):
        flowvi.fit(standard_normal, dim=2, max_steps=500, tempering=(0.1, 500), key=key)


def test_the_tempered_loss_is_the_loss_of_the_tempered_density():
    """Value and gradient of the loss with ``beta`` equal those for the log density ``beta * log p``, same key."""
    flow = resolve_flow("iaf", 3, {"layers": 2, "hidden": (8,)}, ())
    params = flow.init(jax.random.key(1))
    key = jax.random.key(2)

    def log_p(x):
        return -0.5 * jnp.sum((x - 1.0) ** 2 / jnp.arange(1.0, 4.0)) - 0.1 * jnp.sum(x ** 4)

    got = jax.value_and_grad(lambda p: negative_elbo(p, key, flow, log_p, 32, beta=jnp.float32(0.3)))(params)
    want = jax.value_and_grad(lambda p: negative_elbo(p, key, flow, lambda x: 0.3 * log_p(x), 32))(params)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_tempered_fit_starts_on_the_flattened_target_and_ends_on_the_target():
    """The first loss is that of ``p^beta0``; the fit then anneals to beta = 1 and fits N(0, I) itself.

    With the standard start ``q = N(0, I)`` on ``log p = -|x|^2 / 2``, the loss is
    ``E[log q - beta log p] = -d/2 log(2 pi) - d/2 + beta d/2`` exactly (the Monte
    Carlo terms ``-|u|^2/2 (1 - beta)`` have sd ``(1 - beta) sqrt(d/2)`` over one
    draw, so over 256 draws the first loss is within 4 s.e. = 0.35 nats at d = 4).
    At the end, after 800 untempered steps, the fitted Gaussian's sds are 1 (the
    sd of p^beta0 would be ``beta0^-1/2`` = 3.2); 0.1 is far below that gap and
    above the fit's own noise (measured 0.02-0.04 untempered).
    """
    d, beta0 = 4, 0.1
    post = flowvi.fit(standard_normal, dim=d, flow="gaussian", init="standard", steps=1200, num_samples=256,
                      tempering=(beta0, 400), key=jax.random.key(3))
    exact = -0.5 * d * np.log(2 * np.pi) - 0.5 * d + beta0 * 0.5 * d
    assert abs(post.losses[0] - exact) < 4 * (1 - beta0) * np.sqrt(d / 2) / np.sqrt(256)
    assert abs(post.losses[0] - (exact - beta0 * 0.5 * d + 0.5 * d)) > 1.0  # not the untempered loss
    x = np.asarray(post.sample(jax.random.key(4), 4000))
    np.testing.assert_allclose(x.std(axis=0), 1.0, atol=0.1)
    assert post.settings["tempering"] == {"beta0": beta0, "num_steps": 400}


def test_the_stopping_rule_does_not_judge_the_tempered_steps():
    post = flowvi.fit(standard_normal, dim=2, flow="gaussian", init="standard", tempering=(0.2, 700),
                      key=jax.random.key(5))
    assert int(post.steps_run[0]) > 700
    assert post.settings["tempering"]["num_steps"] == 700
