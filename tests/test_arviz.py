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
        assert json.loads(attrs["flow_hyperparameters"]) == {"covariance": "diag"}
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
    assert abs(raw.std() - 1.0) < 0.05
    # PSIS-resampled sd estimates 1.3 with relative error about 1 / sqrt(2 ESS), ESS ~ 0.7 * 8000.
    np.testing.assert_allclose(resampled.std(), 1.3, rtol=0.06)
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
    # Fresh draws of y given each posterior draw: standardised residuals are N(0, 1);
    # 2 * NUM_DRAWS * N_OBS = 8000 of them give a sd within 0.05 (4 sampling sds).
    z = (predictive["y"].values - posterior["mu"].values) / posterior["sigma"].values[..., None]
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1.0) < 0.05


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


# az.loo warns (and still answers) when some observation's k-hat is high; that is its verdict, not ours.
@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto:UserWarning")
def test_loo_runs_on_a_numpyro_regression(regression_idata):
    loo = az.loo(regression_idata, pointwise=True)
    elpd = loo["elpd_loo"] if arviz_major() < 1 else loo.elpd
    assert np.isfinite(elpd)
    assert np.asarray(loo.pareto_k).shape == (N_OBS,)


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
    assert json.loads(attrs["flow_hyperparameters"]) == {"covariance": "full"}
    np.testing.assert_allclose(attrs["k_hat"], _group(idata, "posterior").attrs["k_hat"])
