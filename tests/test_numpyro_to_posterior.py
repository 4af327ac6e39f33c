"""flowvi.numpyro.to_posterior: an SVI fit with AutoFlow as a flowvi.Posterior (diagnostics, ArviZ, save)."""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import load_model
from numpyro.infer import SVI, Trace_ELBO
from scipy import stats
from test_arviz import KNOWN_SIGMA, LOO_OBS, exact_loo, known_sigma_regression

import flowvi
import flowvi.plots
from flowvi.diagnostics import arviz_major
from flowvi.numpyro import AutoFlow, to_posterior


def _group(data, name):
    """A group of the export as an xarray Dataset (ArviZ 0.x InferenceData or 1.x DataTree)."""
    return data[name] if arviz_major() < 1 else data[name].to_dataset()


@pytest.fixture(scope="module")
def eight_schools_fit():
    # A short fit: these tests check the export, not the accuracy of the fit.
    es = load_model("eight_schools")
    guide = AutoFlow(es.model, flow="iaf", layers=2, hidden=(8,))
    svi = SVI(es.model, guide, optax.adam(5e-3), Trace_ELBO(num_particles=4))
    result = svi.run(jax.random.PRNGKey(0), 300, *es.args, progress_bar=False, **es.kwargs)
    return es, guide, result, to_posterior(guide, result, *es.args, **es.kwargs)


def test_inference_data_has_plate_dims_observed_data_and_the_log_likelihood(eight_schools_fit):
    es, _, _, post = eight_schools_fit
    idata = post.to_arviz(jax.random.key(0), 1000)
    posterior, log_lik = _group(idata, "posterior"), _group(idata, "log_likelihood")
    assert posterior["theta"].dims == ("chain", "draw", "school")
    assert posterior["mu"].dims == ("chain", "draw")
    assert log_lik["obs"].dims == ("chain", "draw", "school")
    np.testing.assert_array_equal(_group(idata, "observed_data")["obs"].values, es.y)
    # The pointwise log likelihood is N(y | theta, sigma) at each exported draw, computed here by scipy.
    expected = stats.norm.logpdf(es.y, posterior["theta"].values.astype(np.float64), es.sigma)
    np.testing.assert_allclose(log_lik["obs"].values, expected, rtol=1e-5, atol=1e-5)


def test_loo_of_an_svi_fit_matches_the_exact_leave_one_out():
    # The conjugate regression of test_arviz (sigma known), fitted in SVI: its exact leave-one-out
    # predictive densities are closed form.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(LOO_OBS, 2)).astype(np.float32)
    y = (1.0 + x @ np.array([2.0, -1.0]) + KNOWN_SIGMA * rng.normal(size=LOO_OBS)).astype(np.float32)
    guide = AutoFlow(known_sigma_regression, flow="gaussian", covariance="full")
    steps = 1000
    optimizer = optax.chain(optax.clip_by_global_norm(10.0),
                            optax.adam(optax.cosine_decay_schedule(2e-2, steps, alpha=0.02)))
    svi = SVI(known_sigma_regression, guide, optimizer, Trace_ELBO(num_particles=16))
    result = svi.run(jax.random.PRNGKey(0), steps, x, y=y, progress_bar=False)
    idata = to_posterior(guide, result, x, y=y).to_arviz(jax.random.key(10), 4000)
    assert _group(idata, "log_likelihood")["y"].dims == ("chain", "draw", "obs_id")
    loo = az.loo(idata, pointwise=True)
    elpd = float(loo["elpd_loo"] if arviz_major() < 1 else loo.elpd)
    pointwise = np.asarray(loo.loo_i if arviz_major() < 1 else loo.elpd_i)
    exact = exact_loo(x, y)
    # Over SVI keys 0-3 x 2 export keys the estimate scattered by 0.04 around the exact elpd (-35.38),
    # each term by at most 0.06 (s.e. about 0.025); k-hat stayed under 0.39. Tolerances: 4 s.e.
    assert np.asarray(loo.pareto_k).shape == (LOO_OBS,) and np.all(np.asarray(loo.pareto_k) < 0.7)
    assert abs(elpd - exact.sum()) < 4 * 0.04
    np.testing.assert_allclose(pointwise, exact, atol=4 * 0.025)


def test_draws_are_the_guides(eight_schools_fit):
    es, guide, result, post = eight_schools_fit
    # The same flat transformation: the guide's flow maps base noise exactly as the posterior's does.
    u = jax.random.normal(jax.random.key(1), (5, 10))
    np.testing.assert_allclose(guide.get_transform(result.params)(u), post.distribution.bijector.forward(u),
                               rtol=1e-6, atol=1e-6)
    # And the constrained draws have the guide's moments: 20000 draws each from independent keys, so the
    # difference of two means has s.e. sd * sqrt(2 / 20000) = 0.01 sd, and of two sds about 0.007 sd
    # (0.015 sd for tau, whose tail is heavier); 4 s.e. allowed.
    n = 20_000
    ours = post.sample_posterior(jax.random.key(2), n)
    theirs = guide.sample_posterior(jax.random.PRNGKey(3), result.params, sample_shape=(n,))
    assert set(ours) == set(theirs) == {"mu", "tau", "theta_tilde", "theta"}
    for site in ours:
        a, b = np.asarray(ours[site], np.float64), np.asarray(theirs[site], np.float64)
        sd = b.std(0)
        assert np.all(np.abs(a.mean(0) - b.mean(0)) < 4 * 0.01 * sd), site
        assert np.all(np.abs(a.std(0) - sd) < 4 * 0.015 * sd), site


def test_losses_diagnostics_plots_and_save_work_as_for_a_fit(eight_schools_fit, tmp_path):
    es, _, result, post = eight_schools_fit
    np.testing.assert_array_equal(post.losses, np.asarray(result.losses))
    assert post.steps_run.tolist() == [300] and post.skipped_steps.tolist() == [0]
    assert post.stop_reason == "numpyro SVI ran 300 steps"
    diag = post.diagnose(jax.random.key(4), 2000, iw_k=None)
    # Its ELBO is the SVI objective: the last 50 losses average -ELBO, within their noise (4 particles a step).
    assert abs(diag.elbo + float(np.mean(result.losses[-50:]))) < 1.0
    ax = flowvi.plots.losses(post)
    assert ax.get_ylabel() == "negative ELBO"
    post.save(tmp_path / "svi.npz")
    back = flowvi.load(tmp_path / "svi.npz", flowvi.Target.from_numpyro(es.model, *es.args, **es.kwargs))
    np.testing.assert_array_equal(back.sample(jax.random.key(5), 10), post.sample(jax.random.key(5), 10))


def test_params_dict_gives_the_same_posterior_without_losses(eight_schools_fit):
    es, guide, result, post = eight_schools_fit
    from_dict = to_posterior(guide, result.params, *es.args, **es.kwargs)
    assert from_dict.losses.shape == (0,) and "steps not known" in from_dict.stop_reason
    np.testing.assert_array_equal(from_dict.sample(jax.random.key(6), 10), post.sample(jax.random.key(6), 10))


def test_bad_inputs_are_named(eight_schools_fit):
    es, guide, result, _ = eight_schools_fit
    with pytest.raises(TypeError, match="guide must be a flowvi.numpyro.AutoFlow .*got function"):
        to_posterior(es.model, result, *es.args, **es.kwargs)
    with pytest.raises(TypeError, match="params must be the guide's parameter dict .*got list"):
        to_posterior(guide, list(result.params.values()), *es.args, **es.kwargs)
    with pytest.raises(ValueError, match=r"params lacks the guide's parameter\(s\) 'auto_flow\$affine.loc'"):
        to_posterior(guide, {k: v for k, v in result.params.items() if "affine.loc" not in k}, *es.args, **es.kwargs)
    nan = {**result.params, "auto_flow$affine.loc": jnp.full(10, jnp.nan)}
    with pytest.raises(ValueError, match="params holds 10 NaN or infinite flow parameter values: the SVI run diverged"):
        to_posterior(guide, nan, *es.args, **es.kwargs)
    with pytest.raises(ValueError, match=r"latent dimension changed .*'theta_tilde' \(8,\) -> \(9,\)"):
        to_posterior(guide, result, np.full(9, 10.0))


def test_a_subsampled_model_needs_its_full_data_arguments():
    lr = load_model("logistic_regression")
    guide = AutoFlow(lr.model, flow="gaussian")
    svi = SVI(lr.model, guide, optax.adam(1e-2), Trace_ELBO())
    result = svi.run(jax.random.PRNGKey(0), 20, lr.X, y=lr.y, subsample_size=32, progress_bar=False)
    with pytest.raises(ValueError, match="to_posterior needs the model's arguments for its whole posterior: .*"
                                         "subsampled"):
        to_posterior(guide, result, lr.X, y=lr.y, subsample_size=32)
    post = to_posterior(guide, result, lr.X, y=lr.y)  # the full likelihood
    assert post.target.dim == 7 and post.target.observed_sites["obs"].shape == (lr.X.shape[0],)
