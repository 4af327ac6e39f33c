"""to_arviz: groups, dims, coords, shapes and attributes for plain and NumPyro targets;
az.loo on a NumPyro regression; PSIS resampling; netCDF round trip.

Written against both ArviZ series: 0.x returns InferenceData, 1.x a DataTree
(`_group` reads a group as an xarray Dataset from either).
"""

import json

import arviz as az
import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import xarray as xr
from helpers import gaussian_log_density
from scipy import stats
from scipy.special import logsumexp

import flowvi
from flowvi.diagnostics import arviz_major

N_OBS = 20
NUM_DRAWS = 200  # one size for every export of the regression: its compilations are reused


def _group(data, name) -> xr.Dataset:
    return data[name] if arviz_major() < 1 else data[name].to_dataset()


def _groups(data) -> set:
    return set(data.groups()) if arviz_major() < 1 else {g.strip("/") for g in data.groups if g != "/"}


def _untrained(target, runs=1, dim=None):
    """A Posterior whose runs are the untrained gaussian flow: exactly N(0, I)."""
    flow = flowvi.flows.make_flow("gaussian", dim or target.dim)
    params = jax.vmap(flow.init)(jax.random.split(jax.random.key(0), runs))
    return flowvi.Posterior(flow=flow, params=params, target=target, losses=np.zeros((runs, 0)),
                            stop_reasons=["untrained"] * runs, steps_run=np.zeros(runs, int),
                            skipped_steps=np.zeros(runs, int), fit_seconds=0.0, settings={})


@pytest.fixture(scope="module")
def plain_post():
    return flowvi.fit(gaussian_log_density(np.zeros(3), np.eye(3)), dim=3, flow="gaussian", steps=300,
                      num_runs=2, names=["a", "b", "c"], key=jax.random.key(0))


def regression(x, y=None):
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 5.0).expand([2]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    with numpyro.plate("obs_id", x.shape[0]):
        mu = numpyro.deterministic("mu", alpha + x @ beta)
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


@pytest.fixture(scope="module")
def regression_post():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_OBS, 2)).astype(np.float32)
    y = (1.0 + x @ np.array([2.0, -1.0]) + 0.5 * rng.normal(size=N_OBS)).astype(np.float32)
    target = flowvi.Target.from_numpyro(regression, x, y=y)
    post = flowvi.fit(target, flow="gaussian", covariance="full", steps=300, learning_rate=2e-2, num_runs=2,
                      key=jax.random.key(0))
    return post, x, y


@pytest.fixture(scope="module")
def regression_idata(regression_post):
    post, _, _ = regression_post
    return post.to_arviz(jax.random.key(1), num_draws=NUM_DRAWS, posterior_predictive=True)


def test_plain_target_groups_dims_coords_shapes(plain_post):
    idata = plain_post.to_arviz(jax.random.key(1), num_draws=100)
    assert isinstance(idata, az.InferenceData if arviz_major() < 1 else xr.DataTree)
    assert _groups(idata) == {"posterior", "sample_stats"}
    posterior = _group(idata, "posterior")
    assert list(posterior.data_vars) == ["x"]
    assert posterior["x"].dims == ("chain", "draw", "x_dim_0")
    assert posterior["x"].shape == (2, 100, 3)
    assert list(posterior["x_dim_0"].values) == ["a", "b", "c"]
    stats_ = _group(idata, "sample_stats")
    assert set(stats_.data_vars) == {"log_p", "log_q", "log_weight", "log_weight_psis"}
    for name in stats_.data_vars:
        assert stats_[name].dims == ("chain", "draw")
    np.testing.assert_allclose(stats_["log_weight"], stats_["log_p"] - stats_["log_q"])
    np.testing.assert_allclose(logsumexp(stats_["log_weight_psis"].values), 0.0, atol=1e-9)
    # The target is N(0, I) normalised: log p at the draws is exact.
    x = posterior["x"].values
    np.testing.assert_allclose(stats_["log_p"], stats.multivariate_normal(np.zeros(3)).logpdf(x), atol=1e-4)


def test_attrs_describe_the_fit(plain_post):
    idata = plain_post.to_arviz(jax.random.key(1), num_draws=100)
    for group in ("posterior", "sample_stats"):
        attrs = _group(idata, group).attrs
        assert attrs["inference_library"] == "flowvi"
        assert attrs["inference_library_version"] == flowvi.__version__
        assert attrs["flow"] == "gaussian"
        assert json.loads(attrs["flow_hyperparameters"]) == {"covariance": "diag", "whitened": True}  # warm-started
        assert list(attrs["steps_run"]) == [300, 300]
        assert "completed all steps" in attrs["stop_reason"]
        assert len(attrs["final_training_elbo"]) == 2
        assert attrs["fit_seconds"] > 0
        d = flowvi.diagnostics.from_draws(_group(idata, "posterior")["x"].values,
                                          _group(idata, "sample_stats")["log_p"].values,
                                          _group(idata, "sample_stats")["log_q"].values, iw_k=None)
        np.testing.assert_allclose([attrs["k_hat"], attrs["log_z"], attrs["elbo"]], [d.k_hat, d.log_z, d.elbo])
        assert attrs["verdict"] == d.verdict


def test_default_names_give_integer_coords_and_user_dims_are_used():
    target = flowvi.Target(gaussian_log_density(np.zeros(2), np.eye(2)), dim=2)
    post = _untrained(target, runs=3)
    posterior = _group(post.to_arviz(jax.random.key(0), num_draws=50), "posterior")
    assert list(posterior["x_dim_0"].values) == [0, 1]
    assert posterior["x"].shape == (3, 50, 2)
    idata = post.to_arviz(jax.random.key(0), num_draws=50, var_name="theta", dims={"theta": ["param"]},
                          coords={"param": ["p", "q"]})
    posterior = _group(idata, "posterior")
    assert posterior["theta"].dims == ("chain", "draw", "param")
    assert list(posterior["param"].values) == ["p", "q"]
    summary = az.summary(idata)
    assert list(summary.index) == ["theta[p]", "theta[q]"]


def test_same_key_same_export_and_resampling_reweights():
    # Flow N(0, 1), target N(0, 1.3^2): the weights' tail has k = 1 - 1 / 1.69 = 0.41.
    target = flowvi.Target(lambda x: -0.5 * (x[0] / 1.3) ** 2, dim=1)
    post = _untrained(target, runs=2)
    raw = _group(post.to_arviz(jax.random.key(0), num_draws=4000), "posterior")["x"].values
    again = _group(post.to_arviz(jax.random.key(0), num_draws=4000), "posterior")["x"].values
    np.testing.assert_array_equal(raw, again)
    idata = post.to_arviz(jax.random.key(0), num_draws=4000, resample=True)
    resampled = _group(idata, "posterior")["x"].values
    assert _group(idata, "posterior").attrs["resampled"] == 1
    # Every resampled draw is one of the run's own draws (same draw key).
    for r in range(2):
        assert np.isin(resampled[r], raw[r]).all()
    # 8000 draws of N(0, 1): the s.e. of their sd is 1 / sqrt(2 * 8000) = 0.0079 (0.0077 over 40 keys).
    assert abs(raw.std() - 1.0) < 4 * 0.0079
    # The PSIS-resampled sd estimates 1.3: over 40 keys it scattered by 2.0% (mean 1.2925), twice
    # the 1 / sqrt(2 ESS) = 0.9% that ESS ~ 0.7 * 8000 suggests (resampling repeats draws). 4 s.e.
    np.testing.assert_allclose(resampled.std(), 1.3, rtol=4 * 0.020)
    stats_ = _group(idata, "sample_stats")
    np.testing.assert_allclose(stats_["log_weight"], stats_["log_p"] - stats_["log_q"])


def test_no_target_exports_draws_and_log_q():
    post = _untrained(None, runs=2, dim=2)
    idata = post.to_arviz(jax.random.key(0), num_draws=10)
    assert _group(idata, "posterior")["x"].shape == (2, 10, 2)
    assert set(_group(idata, "sample_stats").data_vars) == {"log_q"}
    with pytest.raises(ValueError, match="resample=True"):
        post.to_arviz(jax.random.key(0), num_draws=10, resample=True)


def test_posterior_predictive_needs_a_numpyro_target(plain_post):
    with pytest.raises(ValueError, match="posterior_predictive=True"):
        plain_post.to_arviz(jax.random.key(0), num_draws=10, posterior_predictive=True)


def test_numpyro_target_groups_dims_shapes(regression_post, regression_idata):
    _, x, y = regression_post
    idata = regression_idata
    assert _groups(idata) == {"posterior", "sample_stats", "observed_data", "log_likelihood",
                              "posterior_predictive"}
    posterior = _group(idata, "posterior")
    assert set(posterior.data_vars) == {"alpha", "beta", "sigma", "mu"}  # the deterministic mu included
    assert posterior["alpha"].dims == ("chain", "draw")
    assert posterior["beta"].dims == ("chain", "draw", "beta_dim_0") and posterior["beta"].shape == (2, NUM_DRAWS, 2)
    assert posterior["mu"].dims == ("chain", "draw", "obs_id") and posterior["mu"].shape == (2, NUM_DRAWS, N_OBS)
    assert (posterior["sigma"].values > 0).all()  # constrained
    np.testing.assert_allclose(posterior["mu"], posterior["alpha"].values[..., None]
                               + np.einsum("nk,cdk->cdn", x, posterior["beta"].values), rtol=1e-4, atol=1e-4)

    observed = _group(idata, "observed_data")
    assert observed["y"].dims == ("obs_id",)
    np.testing.assert_array_equal(observed["y"].values, y)

    log_lik = _group(idata, "log_likelihood")
    assert log_lik["y"].dims == ("chain", "draw", "obs_id") and log_lik["y"].shape == (2, NUM_DRAWS, N_OBS)
    expected = stats.norm.logpdf(y, posterior["mu"].values, posterior["sigma"].values[..., None])
    np.testing.assert_allclose(log_lik["y"], expected, rtol=1e-4, atol=1e-4)

    predictive = _group(idata, "posterior_predictive")
    assert predictive["y"].dims == ("chain", "draw", "obs_id") and predictive["y"].shape == (2, NUM_DRAWS, N_OBS)
    # Fresh draws of y given each posterior draw: standardised residuals are N(0, 1); for
    # 2 * NUM_DRAWS * N_OBS = 8000 of them the s.e. of the mean is 0.0112, of the sd 0.0079: 4 s.e.
    z = (predictive["y"].values - posterior["mu"].values) / posterior["sigma"].values[..., None]
    assert abs(z.mean()) < 4 * 0.0112 and abs(z.std() - 1.0) < 4 * 0.0079


def test_numpyro_user_dims_and_coords(regression_post):
    post, _, _ = regression_post
    labels = [f"o{i}" for i in range(N_OBS)]
    idata = post.to_arviz(jax.random.key(1), num_draws=NUM_DRAWS, dims={"beta": ["predictor"]},
                          coords={"predictor": ["x1", "x2"], "obs_id": labels})
    posterior = _group(idata, "posterior")
    assert posterior["beta"].dims == ("chain", "draw", "predictor")
    assert list(posterior["predictor"].values) == ["x1", "x2"]
    assert list(_group(idata, "log_likelihood")["obs_id"].values) == labels
    assert list(_group(idata, "observed_data")["obs_id"].values) == labels


PRIOR_SD, KNOWN_SIGMA = 5.0, 0.5
LOO_OBS, LOO_STEPS, LOO_DRAWS = 50, 1000, 4000


def known_sigma_regression(x, y=None):
    """The regression with sigma known: conjugate, so its exact leave-one-out predictive is closed form."""
    alpha = numpyro.sample("alpha", dist.Normal(0.0, PRIOR_SD))
    beta = numpyro.sample("beta", dist.Normal(0.0, PRIOR_SD).expand([2]).to_event(1))
    with numpyro.plate("obs_id", x.shape[0]):
        numpyro.sample("y", dist.Normal(alpha + x @ beta, KNOWN_SIGMA), obs=y)


def exact_loo(x, y) -> np.ndarray:
    """log p(y_i | y_-i) of `known_sigma_regression` for every i, by the conjugate update (float64)."""
    design = np.column_stack([np.ones(len(y)), x]).astype(np.float64)
    y = np.asarray(y, np.float64)
    out = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        precision = np.eye(3) / PRIOR_SD**2 + design[keep].T @ design[keep] / KNOWN_SIGMA**2
        cov = np.linalg.inv(precision)
        mean = cov @ design[keep].T @ y[keep] / KNOWN_SIGMA**2
        out[i] = stats.norm.logpdf(y[i], design[i] @ mean, np.sqrt(design[i] @ cov @ design[i] + KNOWN_SIGMA**2))
    return out


def test_loo_on_a_conjugate_regression_matches_the_exact_leave_one_out():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(LOO_OBS, 2)).astype(np.float32)
    y = (1.0 + x @ np.array([2.0, -1.0]) + KNOWN_SIGMA * rng.normal(size=LOO_OBS)).astype(np.float32)
    target = flowvi.Target.from_numpyro(known_sigma_regression, x, y=y)
    post = flowvi.fit(target, flow="gaussian", covariance="full", steps=LOO_STEPS, learning_rate=2e-2,
                      key=jax.random.key(0))
    loo = az.loo(post.to_arviz(jax.random.key(1), num_draws=LOO_DRAWS), pointwise=True)
    elpd = float(loo["elpd_loo"] if arviz_major() < 1 else loo.elpd)
    pointwise = np.asarray(loo.loo_i if arviz_major() < 1 else loo.elpd_i)
    exact = exact_loo(x, y)
    # Over 4 fit keys x 8 export keys the estimate scattered by 0.050 around the exact elpd (-35.38;
    # mean offset under 0.025), each term by at most 0.020; k-hat stayed under 0.43. Tolerances: 4 s.e.
    assert np.asarray(loo.pareto_k).shape == (LOO_OBS,) and np.all(np.asarray(loo.pareto_k) < 0.7)
    assert abs(elpd - exact.sum()) < 4 * 0.050
    np.testing.assert_allclose(pointwise, exact, atol=4 * 0.020)


def test_log_likelihood_false_leaves_the_group_out(regression_post, regression_idata):
    post, _, _ = regression_post
    idata = post.to_arviz(jax.random.key(1), num_draws=NUM_DRAWS, log_likelihood=False, posterior_predictive=True)
    assert _groups(idata) == _groups(regression_idata) - {"log_likelihood"}
    # The same key gives the same draws with or without the group.
    for group in ("posterior", "observed_data", "posterior_predictive"):
        xr.testing.assert_equal(_group(idata, group), _group(regression_idata, group))


def test_resampling_a_numpyro_target_keeps_sites_consistent(regression_post):
    post, x, y = regression_post
    raw = post.to_arviz(jax.random.key(1), num_draws=NUM_DRAWS)
    idata = post.to_arviz(jax.random.key(1), num_draws=NUM_DRAWS, resample=True)
    assert _group(idata, "posterior").attrs["resampled"] == 1
    posterior, raw_posterior = _group(idata, "posterior"), _group(raw, "posterior")
    # Each resampled draw is one of the run's own (constrained) draws, deterministic site included ...
    for r in range(2):
        raw_rows = {tuple(row) for row in raw_posterior["beta"].values[r]}
        assert all(tuple(row) in raw_rows for row in posterior["beta"].values[r])
        assert np.isin(posterior["sigma"].values[r], raw_posterior["sigma"].values[r]).all()
        assert len(np.unique(posterior["sigma"].values[r])) < NUM_DRAWS  # a resample: some draws repeat
    np.testing.assert_allclose(posterior["mu"], posterior["alpha"].values[..., None]
                               + np.einsum("nk,cdk->cdn", x, posterior["beta"].values), rtol=1e-4, atol=1e-4)
    # ... and the weights and the log likelihood moved with it.
    stats_ = _group(idata, "sample_stats")
    np.testing.assert_allclose(stats_["log_weight"], stats_["log_p"] - stats_["log_q"])
    expected = stats.norm.logpdf(y, posterior["mu"].values, posterior["sigma"].values[..., None])
    np.testing.assert_allclose(_group(idata, "log_likelihood")["y"], expected, rtol=1e-4, atol=1e-4)


def test_netcdf_round_trip(regression_idata, tmp_path):
    idata = regression_idata
    path = tmp_path / "fit.nc"
    idata.to_netcdf(path)
    back = az.from_netcdf(path) if arviz_major() < 1 else xr.open_datatree(path)
    assert _groups(back) == _groups(idata)
    for group in _groups(idata):
        xr.testing.assert_allclose(_group(back, group).load(), _group(idata, group))
    attrs = _group(back, "posterior").attrs
    assert attrs["inference_library"] == "flowvi"
    assert json.loads(attrs["flow_hyperparameters"]) == {"covariance": "full", "whitened": True}  # warm-started
    np.testing.assert_allclose(attrs["k_hat"], _group(idata, "posterior").attrs["k_hat"])
