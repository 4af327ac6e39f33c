"""flowvi.numpyro.AutoFlow: a flowvi flow as a NumPyro autoguide (SVI, Predictive, subsampling)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from helpers import EIGHT_SCHOOLS_NUTS, assert_agrees_with_nuts, assert_constrained_draws_in_support, load_model
from numpyro import handlers
from numpyro.infer import SVI, Predictive, Trace_ELBO, init_to_uniform, init_to_value

import flowvi
from flowvi.numpyro import AutoFlow, flow_distribution

SMALL = dict(layers=2, hidden=(32, 32))


def svi_optimizer(learning_rate: float, steps: int) -> optax.GradientTransformation:
    """Adam with clipping and a cosine decay, as flowvi.fit does: late small steps average out ELBO noise."""
    return optax.chain(optax.clip_by_global_norm(10.0),
                       optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.02)))


@pytest.fixture(scope="module")
def eight_schools_svi():
    es = load_model("eight_schools")
    steps = 2000
    guide = AutoFlow(es.model, flow="iaf", **SMALL)
    svi = SVI(es.model, guide, svi_optimizer(5e-3, steps), Trace_ELBO(num_particles=16))
    result = svi.run(jax.random.PRNGKey(0), steps, *es.args, progress_bar=False, **es.kwargs)
    return guide, result


def test_eight_schools_svi_agrees_with_nuts(eight_schools_svi):
    # 2000 steps, 16 particles: over keys 0-3, |mean error| <= 0.05 sd and sd error <= 6% against
    # NUTS, inside the 0.15 sd / 15%; 20000 guide draws add 0.007 sd of MC error to the
    # means and ~3% to tau's sd; the stored NUTS moments (helpers.EIGHT_SCHOOLS_NUTS) under 0.01 sd.
    guide, result = eight_schools_svi
    assert np.isfinite(result.losses).all()
    assert result.losses[-200:].mean() < result.losses[:200].mean()
    draws = guide.sample_posterior(jax.random.PRNGKey(1), result.params, sample_shape=(20_000,))
    assert set(draws) == {"mu", "tau", "theta_tilde", "theta"}
    assert draws["theta"].shape == (20_000, 8)
    assert_agrees_with_nuts(draws)


def test_params_are_plain_named_arrays_that_reload(eight_schools_svi, tmp_path):
    guide, result = eight_schools_svi
    assert all(name.startswith("auto_flow$") for name in result.params)
    assert "auto_flow$affine.loc" in result.params
    np.savez(tmp_path / "params.npz", **{k: np.asarray(v) for k, v in result.params.items()})
    with np.load(tmp_path / "params.npz") as f:
        reloaded = {k: jnp.asarray(f[k]) for k in f.files}

    es = load_model("eight_schools")
    fresh = AutoFlow(es.model, flow="iaf", **SMALL)  # a new guide object, set up from the model arguments
    key = jax.random.PRNGKey(3)
    a = guide.sample_posterior(key, result.params, sample_shape=(50,))
    b = fresh.sample_posterior(key, reloaded, *es.args, sample_shape=(50,), **es.kwargs)
    for site in a:
        np.testing.assert_array_equal(a[site], b[site])


def test_predictive_with_the_guide_agrees_with_nuts(eight_schools_svi):
    guide, result = eight_schools_svi
    es = load_model("eight_schools")
    n = 20_000
    pred = Predictive(es.model, guide=guide, params=result.params, num_samples=n,
                      return_sites=["mu", "tau", "theta", "obs"])(jax.random.PRNGKey(2), es.sigma)
    assert pred["obs"].shape == (n, 8) and pred["theta"].shape == (n, 8)
    # The latents Predictive draws from the guide agree with NUTS (as the guide's own draws do) ...
    assert_agrees_with_nuts(pred)
    # ... and each obs draw is y_rep ~ N(theta, sigma) given its theta: the 160000 standardised
    # residuals are N(0, 1), so their mean has s.e. 0.0025 and their sd 0.0018; 4 s.e. allowed.
    z = (np.asarray(pred["obs"], np.float64) - np.asarray(pred["theta"])) / es.sigma
    assert abs(z.mean()) < 4 * 0.0025 and abs(z.std() - 1.0) < 4 * 0.0018


def test_guide_site_scores_its_draws_with_the_exact_flow_density(eight_schools_svi):
    guide, result = eight_schools_svi
    es = load_model("eight_schools")

    @jax.jit
    def one_pass_and_by_inverse(params, key):
        seeded = handlers.seed(handlers.substitute(guide, params), key)
        site = handlers.trace(seeded).get_trace(*es.args, **es.kwargs)["_auto_latent"]
        assert site["intermediates"]  # NumPyro scores this site with the one-pass log-determinant
        one_pass = site["fn"].log_prob(site["value"], site["intermediates"])
        return one_pass, guide.get_posterior(params).log_prob(site["value"])  # dim sequential passes

    one_pass, by_inverse = one_pass_and_by_inverse(result.params, jax.random.PRNGKey(4))
    np.testing.assert_allclose(one_pass, by_inverse, rtol=1e-4, atol=1e-4)
    assert guide.get_base_dist().event_shape == (10,)
    x = jax.random.normal(jax.random.PRNGKey(5), (3, 10))
    y = guide.get_transform(result.params)(x)
    np.testing.assert_allclose(guide.get_transform(result.params).inv(y), x, atol=1e-4)


@pytest.mark.parametrize("family", ["iaf", "bnaf"])
def test_flow_distribution_is_the_flowvi_flow_with_its_one_pass_density(family):
    # Both draw the base noise as jax.random.normal(key, (n, dim)), so the same key gives the same
    # points; the density of the guide's own draws must be the flow's one-pass log q, no inverse.
    flow = flowvi.flows.make_flow(family, 3, layers=2, **({"hidden": (8,)} if family == "iaf" else {}))

    @jax.jit
    def both(key):
        # Deterministic perturbation away from the identity initialisation (one compilation in all).
        params = jax.tree.map(lambda a: a + 0.1 * jnp.sin(jnp.arange(a.size, dtype=a.dtype).reshape(a.shape)),
                              flow.init(jax.random.key(0)))
        d = flow_distribution(flow, params)
        x, intermediates = d.sample_with_intermediates(key, (6,))
        return x, d.log_prob(x, intermediates), *flow.apply(params).sample_and_log_prob(seed=key, sample_shape=(6,))

    x, log_q, x_flowvi, log_q_flowvi = both(jax.random.key(2))
    np.testing.assert_allclose(x, x_flowvi, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(log_q, log_q_flowvi, rtol=1e-5, atol=1e-5)


def test_quantiles_and_median_by_monte_carlo(eight_schools_svi):
    guide, result = eight_schools_svi
    q = guide.quantiles(result.params, [0.1, 0.5, 0.9], num_samples=20_000)
    assert q["tau"].shape == (3,) and q["theta"].shape == (3, 8)
    assert np.all(np.diff(np.asarray(q["theta"]), axis=0) > 0) and np.all(np.asarray(q["tau"]) > 0)
    med = guide.median(result.params, num_samples=20_000)
    np.testing.assert_allclose(med["mu"], q["mu"][1])
    # Against NUTS: mu's 0.1, 0.5, 0.9 quantiles from 20000 guide draws carry MC s.e. 0.009-0.012 sd
    # (sqrt(q (1 - q) / n) / density), the stored NUTS ones 0.004-0.006 sd. The tolerance is the
    # accuracy criterion of the means (0.15 sd, as in assert_agrees_with_nuts) plus 4 of their
    # combined s.e. (0.013 sd): 0.2 sd. (Measured at this key: 0.023, 0.008, 0.031 sd.)
    ref = EIGHT_SCHOOLS_NUTS["mu"]
    np.testing.assert_allclose(q["mu"], ref["quantiles"], atol=(0.15 + 4 * 0.013) * float(ref["sd"][0]))


@pytest.mark.parametrize("bad", [[0.5, 1.5], [-0.1], [[0.1, 0.9]], 0.5, [float("nan")]])
def test_quantiles_bad_input_is_named(eight_schools_svi, bad):
    guide, result = eight_schools_svi
    with pytest.raises(ValueError, match=r"quantiles must be a list of probabilities in \[0, 1\], got "):
        guide.quantiles(result.params, bad)


def test_quantiles_num_samples_is_checked(eight_schools_svi):
    guide, result = eight_schools_svi
    with pytest.raises(ValueError, match="num_samples must be a positive integer, got 0"):
        guide.quantiles(result.params, [0.5], num_samples=0)


def test_local_latents_in_a_subsampled_plate_are_refused():
    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", y.shape[0], subsample_size=4):
            z = numpyro.sample("z", dist.Normal(mu, 1.0))  # one local latent per observation
            numpyro.sample("y", dist.Normal(z, 1.0), obs=numpyro.subsample(y, event_dim=0))

    svi = SVI(model, AutoFlow(model, flow="gaussian"), optax.adam(1e-3), Trace_ELBO())
    with pytest.raises(ValueError, match=r"AutoFlow covers global latent variables only; 'z' \(plate 'data'\) "
                                         r"sit in a subsampled plate"):
        svi.init(jax.random.PRNGKey(0), jnp.zeros(10))


def test_prefix_names_the_parameters():
    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    guide = AutoFlow(model, flow="gaussian", prefix="mine")
    svi = SVI(model, guide, optax.adam(1e-3), Trace_ELBO())
    params = svi.get_params(svi.init(jax.random.PRNGKey(0), 0.5))
    assert sorted(params) == ["mine_flow$affine.loc", "mine_flow$affine.raw_scale"]
    # The draws come from the parameters of that name: move the location and they follow.
    moved = {**params, "mine_flow$affine.loc": jnp.array([100.0])}
    draws = guide.sample_posterior(jax.random.PRNGKey(1), moved, sample_shape=(1000,))
    assert draws["mu"].shape == (1000,)
    # init_scale 0.1: s.e. of the mean 0.1 / sqrt(1000) = 0.0032; the tolerance (4 x 0.032) also holds at scale 1.
    assert abs(float(draws["mu"].mean()) - 100.0) < 4 * 0.032


def test_subsampled_plate_runs_and_its_elbo_improves():
    lr = load_model("logistic_regression")
    start = {"alpha": 0.5, "beta": jnp.full(6, -0.25)}
    guide = AutoFlow(lr.model, flow="iaf", init_loc_fn=init_to_value(values=start), layers=1, hidden=(8,))
    steps = 300
    svi = SVI(lr.model, guide, svi_optimizer(1e-2, steps), Trace_ELBO(num_particles=4))
    state = svi.init(jax.random.PRNGKey(0), lr.X, y=lr.y, subsample_size=32)
    initial = svi.get_params(state)
    # init_loc_fn centres the untrained flow (real sites: unconstrained = constrained values).
    np.testing.assert_allclose(initial["auto_flow$affine.loc"], [0.5] + [-0.25] * 6)
    result = svi.run(jax.random.PRNGKey(0), steps, lr.X, y=lr.y, subsample_size=32, progress_bar=False)
    assert np.isfinite(result.losses).all()

    # The full-data negative ELBO by Monte Carlo with 64 draws: its s.e. after fitting is ~0.3
    # (measured); it falls from ~400 to ~85, so the margin of 50 is far outside the noise.
    @jax.jit
    def full_data_loss(params):
        return Trace_ELBO(num_particles=64).loss(jax.random.PRNGKey(7), params, lr.model, guide, lr.X, y=lr.y)

    before, after = full_data_loss(initial), full_data_loss(result.params)
    assert after < before - 50, (before, after)


def test_constrained_model_draws_lie_in_their_supports():
    c = load_model("constrained")
    steps = 50  # supports and shapes come from the transforms, not from convergence
    guide = AutoFlow(c.model, flow="iaf", layers=2, hidden=(16,))
    svi = SVI(c.model, guide, svi_optimizer(5e-3, steps), Trace_ELBO(num_particles=4))
    result = svi.run(jax.random.PRNGKey(0), steps, *c.args, progress_bar=False, **c.kwargs)
    assert np.isfinite(result.losses).all()
    assert_constrained_draws_in_support(
        guide.sample_posterior(jax.random.PRNGKey(1), result.params, sample_shape=(500,)), 500)


def test_discrete_latent_sites_are_named():
    def model():
        p = numpyro.sample("p", dist.Beta(1.0, 1.0))
        z = numpyro.sample("z", dist.Bernoulli(p))
        numpyro.sample("y", dist.Normal(z, 1.0), obs=0.5)

    svi = SVI(model, AutoFlow(model), optax.adam(1e-3), Trace_ELBO())
    with pytest.raises(ValueError, match=r"AutoFlow needs continuous.*'z' \(Bernoulli.*enumerated .*marginalised"):
        svi.init(jax.random.PRNGKey(0))


def test_nonfinite_log_density_at_initial_points_passes_on_numpyro_diagnosis():
    def model():
        rate = numpyro.sample("rate", dist.Exponential(1.0))
        numpyro.sample("wait", dist.Exponential(rate), obs=-1.0)

    svi = SVI(model, AutoFlow(model), optax.adam(1e-3), Trace_ELBO())
    with pytest.raises(ValueError, match=r"(?s)non-finite at every initial point.*Site wait: Out-of-support"):
        svi.init(jax.random.PRNGKey(0))


def test_changed_latent_dimension_is_an_error(eight_schools_svi):
    guide, result = eight_schools_svi
    es = load_model("eight_schools")
    ten = np.full(10, 10.0)
    with pytest.raises(ValueError, match=r"latent dimension changed .*'theta_tilde' \(8,\) -> \(10,\)"):
        Predictive(es.model, guide=guide, params=result.params, num_samples=5)(jax.random.PRNGKey(0), ten)
    with pytest.raises(ValueError, match="latent dimension changed"):
        guide.sample_posterior(jax.random.PRNGKey(0), result.params, ten, sample_shape=(5,))


def test_bad_options_are_named():
    model = load_model("eight_schools").model
    with pytest.raises(TypeError, match=r"'depth'.*'hidden'.*'layers'"):
        AutoFlow(model, flow="iaf", depth=3)
    with pytest.raises(ValueError, match="not a known flow family"):
        AutoFlow(model, flow="realnvp")
    with pytest.raises(RuntimeError, match="needs the guide set up"):
        AutoFlow(model).sample_posterior(jax.random.PRNGKey(0), {})


# --- the start: init_loc_fn, init_scale, init=Posterior; non-finite draws ------------------------------

# Counts in the hundreds against an unstandardised covariate (age 20-80): the linear predictor of a
# log link is exp(a + b * age), so a draw with b ~ 1 overflows float32 (exp(88) = inf).
_AGE = np.random.default_rng(0).uniform(20.0, 80.0, 40).astype(np.float32)
_COUNTS = np.random.default_rng(1).poisson(np.exp(4.0 + 0.03 * _AGE)).astype(np.float32)


def poisson_regression(age, y=None):
    a = numpyro.sample("a", dist.Normal(0.0, 5.0))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", age.shape[0]):
        numpyro.sample("y", dist.Poisson(jnp.exp(a + b * age)), obs=y)


def test_poisson_log_link_with_counts_in_the_hundreds_stays_finite():
    assert 50 < _COUNTS.min() and _COUNTS.max() > 500  # counts in the hundreds
    guide = AutoFlow(poisson_regression, flow="iaf", layers=2, hidden=(8,))
    svi = SVI(poisson_regression, guide, optax.adam(1e-3), Trace_ELBO())
    result = svi.run(jax.random.PRNGKey(0), 500, _AGE, y=_COUNTS, progress_bar=False)
    assert np.isfinite(result.losses[0])  # the loss of step 1, at the initial parameters
    assert np.isfinite(result.losses).all()
    q = guide.quantiles(result.params, [0.1, 0.5, 0.9])
    assert np.isfinite(np.asarray(q["a"])).all() and np.isfinite(np.asarray(q["b"])).all()


def test_untrained_guide_is_a_narrow_gaussian_at_the_init_point():
    start = {"a": 5.0, "b": 0.03}
    guide = AutoFlow(poisson_regression, flow="iaf", layers=2, hidden=(8,), init_loc_fn=init_to_value(values=start),
                     init_scale=0.05)
    svi = SVI(poisson_regression, guide, optax.adam(1e-3), Trace_ELBO())
    params = svi.get_params(svi.init(jax.random.PRNGKey(0), _AGE, y=_COUNTS))
    draws = guide.sample_posterior(jax.random.PRNGKey(1), params, sample_shape=(4000,))
    # N(start, 0.05^2) in each (real) coordinate: the mean's s.e. is 0.05 / sqrt(4000) = 0.0008 and
    # the sd's 0.05 / sqrt(2 * 4000) = 0.0006; 4 s.e. allowed.
    for site, loc in start.items():
        assert abs(float(draws[site].mean()) - loc) < 4 * 0.0008
        assert abs(float(draws[site].std()) - 0.05) < 4 * 0.0006


def test_non_finite_draws_warn_once():
    # The start AutoFlow had before init_scale: uniform in (-2, 2), scale 1. Draws of b near 1 overflow.
    guide = AutoFlow(poisson_regression, flow="iaf", layers=2, hidden=(8,), init_loc_fn=init_to_uniform,
                     init_scale=1.0)
    svi = SVI(poisson_regression, guide, optax.adam(1e-3), Trace_ELBO())
    with pytest.warns(RuntimeWarning, match=r"AutoFlow drew NaN.*optax.apply_if_finite") as record:
        result = svi.run(jax.random.PRNGKey(0), 200, _AGE, y=_COUNTS, progress_bar=False)
        guide.quantiles(result.params, [0.5])  # NaN again, but the guide has warned already
        jax.effects_barrier()
    assert not np.isfinite(result.losses).all()
    assert sum(issubclass(w.category, RuntimeWarning) for w in record) == 1


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), "0.1", None])
def test_init_scale_is_checked(bad):
    with pytest.raises(ValueError, match="init_scale must be a positive"):
        AutoFlow(poisson_regression, init_scale=bad)


def test_init_and_init_loc_fn_are_checked():
    with pytest.raises(TypeError, match="init must be a flowvi.Posterior .*got dict"):
        AutoFlow(poisson_regression, init={"auto_flow$affine.loc": jnp.zeros(2)})
    with pytest.raises(TypeError, match="init_loc_fn must be a NumPyro init strategy .*got str"):
        AutoFlow(poisson_regression, init_loc_fn="median")


def normal_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(5.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


_Y = jnp.asarray(np.random.default_rng(2).normal(3.0, 2.0, 20), jnp.float32)


@pytest.fixture(scope="module")
def normal_fit():
    target = flowvi.Target.from_numpyro(normal_model, _Y)
    return flowvi.fit(target, flow="iaf", layers=2, hidden=(8,), steps=200, key=jax.random.key(0), progress=False)


def test_init_from_a_flowvi_fit_starts_where_it_ended(normal_fit):
    guide = AutoFlow(normal_model, init=normal_fit)  # the fit's flow: iaf, layers=2, hidden=(8,)
    elbo = Trace_ELBO(num_particles=4000)
    svi = SVI(normal_model, guide, optax.adam(1e-3), elbo)
    params = svi.get_params(svi.init(jax.random.PRNGKey(0), _Y))
    assert guide.flow == normal_fit.flow
    for got, fitted in zip(jax.tree.leaves(guide.flow_params(params)), jax.tree.leaves(normal_fit.params), strict=True):
        np.testing.assert_array_equal(got, fitted[0])
    # NumPyro's ELBO at the start (4000 particles) against flowvi's of the fit (4000 draws): each has
    # s.e. ~0.02 here (diagnose's elbo_se); 4 s.e. of the difference allowed, plus nothing else.
    diag = normal_fit.diagnose(jax.random.key(1), 4000, iw_k=None)

    def numpyro_elbo(guide, params):
        return -float(jax.jit(lambda p: elbo.loss(jax.random.PRNGKey(2), p, normal_model, guide, _Y))(params))

    got = numpyro_elbo(guide, params)
    assert abs(got - diag.elbo) < 4 * np.sqrt(2) * diag.elbo_se, (got, diag.elbo, diag.elbo_se)
    # A fresh guide of the same flow starts far below (its ELBO is tens of nats lower).
    fresh = AutoFlow(normal_model, flow="iaf", layers=2, hidden=(8,))
    fresh_svi = SVI(normal_model, fresh, optax.adam(1e-3), elbo)
    fresh_params = fresh_svi.get_params(fresh_svi.init(jax.random.PRNGKey(0), _Y))
    assert numpyro_elbo(fresh, fresh_params) < diag.elbo - 10


def test_init_of_another_flow_model_or_several_runs_is_refused(normal_fit):
    import dataclasses

    with pytest.raises(ValueError, match=r"init is a fit of flow='iaf' .* but this AutoFlow has flow='gaussian'"):
        AutoFlow(normal_model, flow="gaussian", init=normal_fit)
    with pytest.raises(ValueError, match=r"init is a fit of .*'layers': 2.* this AutoFlow has .*'layers': 3"):
        AutoFlow(normal_model, init=normal_fit, layers=3, hidden=(8,))
    two = dataclasses.replace(normal_fit, params=jax.tree.map(lambda a: jnp.concatenate([a, a]), normal_fit.params),
                              stop_reasons=normal_fit.stop_reasons * 2)
    with pytest.raises(ValueError, match=r"init holds 2 runs; .*init=post.run\(i\)"):
        AutoFlow(normal_model, init=two)
    svi = SVI(poisson_regression, AutoFlow(poisson_regression, init=normal_fit), optax.adam(1e-3), Trace_ELBO())
    with pytest.raises(ValueError, match=r"init was fitted to a model whose unconstrained latent sites are 'mu' "
                                         r"\(\), 'sigma' \(\), but this model .* has 'a' \(\), 'b' \(\)"):
        svi.init(jax.random.PRNGKey(0), _AGE, y=_COUNTS)
