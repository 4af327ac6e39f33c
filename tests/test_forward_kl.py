"""flowvi.fit_samples: forward KL on data, validation split, early stopping, bad data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import flowvi


def _mixture(n, seed):
    rng = np.random.default_rng(seed)
    comp = rng.random(n) < 0.5
    centres = np.where(comp[:, None], np.array([-2.0, 0.0]), np.array([2.0, 1.0]))
    return centres + 0.5 * rng.standard_normal((n, 2))


def _mixture_log_density(x):
    a = stats.multivariate_normal([-2.0, 0.0], 0.25 * np.eye(2)).logpdf(x)
    b = stats.multivariate_normal([2.0, 1.0], 0.25 * np.eye(2)).logpdf(x)
    return np.logaddexp(a, b) - np.log(2)


def test_flow_beats_gaussian_on_held_out_mixture_nll():
    data, held_out = _mixture(4000, 0), _mixture(2000, 1)
    flow = flowvi.fit_samples(data, flow="maf", layers=2, hidden=(32, 32), max_epochs=40, patience=10,
                              learning_rate=3e-3, key=jax.random.key(0))
    gauss = flowvi.fit_samples(data, flow="gaussian", covariance="full", max_epochs=40, learning_rate=3e-2,
                               key=jax.random.key(0))
    nll_flow = -float(np.mean(flow.log_prob(held_out)))
    nll_gauss = -float(np.mean(gauss.log_prob(held_out)))
    nll_true = -float(np.mean(_mixture_log_density(held_out)))
    # Entropy of the mixture ~ 1.86 nats; a Gaussian fit is ~0.9 nats worse. The
    # s.e. of a 2000-point mean NLL is ~0.02, so the 0.3-nat margins are decisive.
    assert nll_flow < nll_gauss - 0.3
    assert nll_flow < nll_true + 0.3
    assert flow.target is None
    assert flow.losses.shape == flow.validation_losses.shape == (int(flow.steps_run[0]),)


def test_returns_best_validation_parameters_and_stops_early():
    data = _mixture(1000, 2)
    post = flowvi.fit_samples(data, flow="gaussian", max_epochs=500, patience=3, learning_rate=5e-2,
                              key=jax.random.key(0))
    assert post.steps_run[0] < 500
    assert post.stop_reason.startswith("early stopping")
    # The returned parameters score the validation NLL minimum (recomputed here).
    rows = np.asarray(jax.random.permutation(jax.random.split(jax.random.key(0), 3)[0], 1000))
    val = data[rows[:100]]
    np.testing.assert_allclose(-np.mean(post.log_prob(val)), post.validation_losses.min(), rtol=1e-5)


def test_same_key_same_fit():
    data = _mixture(600, 3)
    a = flowvi.fit_samples(data, flow="gaussian", max_epochs=5, key=jax.random.key(1))
    b = flowvi.fit_samples(data, flow="gaussian", max_epochs=5, key=jax.random.key(1))
    np.testing.assert_array_equal(a.losses, b.losses)


@pytest.mark.parametrize(("data", "message"), [
    (np.zeros(10), "2-D"),
    (np.zeros((5, 2, 2)), "2-D"),
    (np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]), "NaN"),
    (np.array([[0.0, np.inf], [1.0, 2.0], [1.0, 1.0]]), "NaN/inf"),
    ([["a", "b"]], "numeric"),
])
def test_bad_data_is_rejected(data, message):
    with pytest.raises(ValueError, match=message):
        flowvi.fit_samples(data, flow="gaussian", key=jax.random.key(0))


def test_bad_options_are_rejected():
    data = _mixture(100, 0)
    with pytest.raises(ValueError, match="validation_fraction"):
        flowvi.fit_samples(data, flow="gaussian", validation_fraction=1.5, key=jax.random.key(0))
    with pytest.raises(TypeError, match="'epochs'"):
        flowvi.fit_samples(data, flow="gaussian", epochs=3, key=jax.random.key(0))


def test_bnaf_is_oriented_data_to_noise_and_learns():
    data, held_out = _mixture(3000, 4), _mixture(1000, 5)
    post = flowvi.fit_samples(data, flow="bnaf", layers=1, block_size=(8,), max_epochs=15, learning_rate=1e-2,
                              key=jax.random.key(0))
    assert post.flow.options["inverted"] is True
    assert post.flow.inverse_cost == "one pass" and post.flow.sample_cost == "numerical"
    # Training improved on the start (a Gaussian with the data's moments), and draws come back finite.
    assert post.validation_losses[-1] < post.validation_losses[0] - 0.2
    assert -float(np.mean(post.log_prob(held_out))) < post.validation_losses[0] - 0.2
    assert np.isfinite(np.asarray(post.sample(jax.random.key(1), 50))).all()


def test_inverted_flow_gradients_match_finite_differences():
    # Guards the orientation: the NLL gradient through the one-pass direction is exact.
    from flowvi.objectives import negative_log_likelihood
    with jax.enable_x64(True):
        flow = flowvi.flows.make_flow("bnaf", 2, layers=1, block_size=(3,), inverted=True)
        params = flow.init(jax.random.key(0))
        batch = jnp.asarray(_mixture(16, 6))
        grad = jax.grad(negative_log_likelihood)(params, batch, flow)["affine"]["loc"]
        eps = 1e-6
        def bump(d):
            return {**params, "affine": {**params["affine"], "loc": params["affine"]["loc"].at[0].add(d)}}
        numeric = (negative_log_likelihood(bump(eps), batch, flow) - negative_log_likelihood(bump(-eps), batch, flow))
        np.testing.assert_allclose(grad[0], numeric / (2 * eps), rtol=1e-5)


def test_reverse_kl_refuses_a_flow_that_samples_numerically():
    flow = flowvi.flows.make_flow("bnaf", 2, inverted=True)
    with pytest.raises(ValueError, match="inverted"):
        flowvi.fit(lambda x: -0.5 * (x ** 2).sum(), dim=2, flow=flow, steps=2, key=jax.random.key(0))


def _nan_flow(dim):
    """A ready Flow whose density is NaN everywhere (a NaN scale), to drive the non-finite stops."""
    base = flowvi.flows.make_flow("gaussian", dim)

    def apply(params):
        affine = params["affine"]
        return base.apply({"affine": {"loc": affine["loc"], "raw_scale": affine["raw_scale"] + jnp.nan}})
    return base._replace(name="nan_gaussian", apply=apply)


def test_stops_after_max_bad_streak_non_finite_steps_and_keeps_the_start():
    data = _mixture(500, 7)  # 450 training rows: 9 batches of 50 per epoch
    with pytest.warns(RuntimeWarning, match=r"stopped in epoch 1: the loss or gradient was non-finite at too "
                                            r"many steps \(3 in a row"):
        post = flowvi.fit_samples(data, flow=_nan_flow(2), batch_size=50, max_bad_streak=3, max_epochs=5,
                                  key=jax.random.key(0))
    assert post.steps_run.tolist() == [1] and post.skipped_steps.tolist() == [3]
    assert np.isnan(post.losses).all() and np.isnan(post.validation_losses).all()
    # No step was taken: the flow's own last layer is still the identity it starts at (the data's
    # mean and sd live in the fixed map fit_samples puts after the flow).
    affine = flowvi.flows.final_affine(post.params)
    np.testing.assert_array_equal(affine["loc"], 0.0)
    np.testing.assert_array_equal(affine["raw_scale"], 0.0)


def test_stops_when_every_batch_of_an_epoch_is_non_finite():
    data = _mixture(200, 8)  # one batch per epoch, so the streak limit (20) is never reached
    with pytest.warns(RuntimeWarning, match=r"stopped in epoch 1: the loss was non-finite in every batch of "
                                            r"the epoch \(1 batches\)"):
        post = flowvi.fit_samples(data, flow=_nan_flow(2), max_epochs=5, key=jax.random.key(0))
    assert post.steps_run.tolist() == [1] and post.skipped_steps.tolist() == [1]


def test_custom_optimizer_is_used_and_patience_none_never_stops():
    import optax

    data = _mixture(400, 9)
    # sgd with learning rate 0 never moves: the held-out NLL is the start's at every epoch. That is a
    # plateau, so patience=2 stops at epoch 3, and patience=None runs every epoch.
    frozen = flowvi.fit_samples(data, flow="gaussian", optimizer=optax.sgd(0.0), patience=None, max_epochs=6,
                                key=jax.random.key(0))
    assert frozen.steps_run.tolist() == [6] and frozen.stop_reason == "completed all 6 epochs"
    assert np.ptp(frozen.validation_losses) == 0.0
    assert frozen.settings["learning_rate"] is None and frozen.settings["patience"] is None
    early = flowvi.fit_samples(data, flow="gaussian", optimizer=optax.sgd(0.0), patience=2, max_epochs=6,
                               key=jax.random.key(0))
    assert early.steps_run.tolist() == [3] and early.stop_reason.startswith("early stopping at epoch 3")
    # The default optimizer (Adam) does move from the same start.
    moving = flowvi.fit_samples(data, flow="gaussian", max_epochs=2, key=jax.random.key(0))
    assert moving.validation_losses[1] != frozen.validation_losses[0]
    moved = flowvi.flows.final_affine(moving.params)["loc"] != flowvi.flows.final_affine(frozen.params)["loc"]
    np.testing.assert_array_equal(moved, True)


def _counting_sgd(calls):
    """optax.sgd(1e-3) that records each update it makes (a host callback per step)."""
    import optax

    inner = optax.sgd(1e-3)

    def update(updates, state, params=None):
        jax.debug.callback(lambda: calls.append(1))
        return inner.update(updates, state, params)
    return optax.GradientTransformation(inner.init, update)


@pytest.mark.parametrize(("batch_size", "used", "steps_per_epoch"), [(100, 100, 4), (1000, 450, 1)])
def test_batch_size_sets_the_steps_per_epoch(batch_size, used, steps_per_epoch):
    # 450 training rows: batches of 100 give 4 steps an epoch (the last 50 rows are dropped, a new
    # 50 each epoch); a batch_size above the rows is capped at them.
    calls = []
    post = flowvi.fit_samples(_mixture(500, 10), flow="gaussian", batch_size=batch_size, max_epochs=3,
                              patience=None, optimizer=_counting_sgd(calls), key=jax.random.key(0))
    jax.effects_barrier()
    assert post.settings["batch_size"] == used
    assert len(calls) == 3 * steps_per_epoch


def test_bad_batch_size_is_named():
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        flowvi.fit_samples(_mixture(100, 0), flow="gaussian", batch_size=0, key=jax.random.key(0))
