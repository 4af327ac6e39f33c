"""The Gaussian warm start (`flowvi.warm_start`, ``fit(init="auto")``), the whitened flow it starts, and
continuing a fit (``fit(init=post)``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import banana_log_density, gaussian_log_density
from test_data_target import plain_logistic

import flowvi
from flowvi import flows
from flowvi.warm_start import gaussian_start

KEY = jax.random.key(0)

# Badly scaled and nearly degenerate: sds 1e-2 and 1e2 (10^4 apart), correlation 0.999, far from the origin.
SCALED_MEAN = np.array([3.0, -500.0])
SCALED_SD = np.array([1e-2, 1e2])
SCALED_RHO = 0.999
SCALED_COV = np.array([[SCALED_SD[0] ** 2, SCALED_RHO * SCALED_SD[0] * SCALED_SD[1]],
                       [SCALED_RHO * SCALED_SD[0] * SCALED_SD[1], SCALED_SD[1] ** 2]])
scaled_log_density = gaussian_log_density(SCALED_MEAN, SCALED_COV)


def funnel_log_density(x):
    """Neal's funnel in 10-D: x0 ~ N(0, 3^2), x_i | x0 ~ N(0, exp(x0))."""
    return -x[0] ** 2 / 18.0 - 0.5 * jnp.sum(x[1:] ** 2) * jnp.exp(-x[0]) - 0.5 * (x.size - 1) * x[0]


def test_gaussian_start_is_exact_on_a_badly_scaled_gaussian():
    found, why = gaussian_start(scaled_log_density, 2, KEY)
    assert found is not None, why
    # On a Gaussian the Laplace approximation is the target; float32 leaves relative errors near 1e-4
    # after the rescaling by the coordinates' scales (without it the 1e8 condition number would not
    # survive float32).
    np.testing.assert_allclose((found.loc - SCALED_MEAN) / SCALED_SD, 0.0, atol=2e-2)
    cov = found.covariance()
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), SCALED_SD, rtol=1e-3)
    assert abs(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]) - SCALED_RHO) < 1e-5
    rotation = found.rotation
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(2), atol=1e-5)
    assert found.summary()["method"] == "laplace_path" and found.iterations > 0


def test_gaussian_start_falls_back_where_no_laplace_approximation_beats_the_standard_normal():
    # The funnel's mode degenerates (x0 -> -40.5 with the rest pinned at 0): every Laplace Gaussian along
    # the climb is far narrower than the posterior, and the standard normal has the larger ELBO.
    found, why = gaussian_start(funnel_log_density, 10, KEY)
    assert found is None and "standard normal had a larger ELBO" in why


def test_gaussian_start_reports_a_non_finite_start():
    found, why = gaussian_start(lambda x: jnp.where(x[0] > 1.0, -jnp.sum(x ** 2), -jnp.inf), 2, KEY)
    assert found is None and "not finite at the start point" in why


def _random_whitening(key, dim):
    # The rotation comes from NumPy's QR: in four full runs a suite worker crashed at the first call of
    # JAX's CPU QR (only this module called it), never when the module ran alone.
    k1, k2, k3, k4 = jax.random.split(key, 4)
    rotation = jnp.asarray(np.linalg.qr(np.asarray(jax.random.normal(k1, (dim, dim))))[0])
    return {"loc": jax.random.normal(k2, (dim,)) * 10.0, "scale_out": jnp.exp(jax.random.normal(k3, (dim,)) * 2.0),
            "rotation": rotation, "scale_in": jnp.exp(jax.random.normal(k4, (dim,)))}


# The float64 check runs in its own process with x64 on from the start, so that it cannot leave x64
# switched on (or half on) in a suite worker.
WHITENED_CHECK = """
import sys
import jax, jax.numpy as jnp, numpy as np
from helpers import randomize
from flowvi import flows
family, layers = sys.argv[1], 2
key = jax.random.key(0)
flow = flows.make_flow(family, 3, whitened=True, layers=layers, hidden=(8,))
assert flow.options["whitened"]
params = flow.init(key)
k1, k2, k3, k4 = jax.random.split(key, 4)
rotation = jnp.asarray(np.linalg.qr(np.asarray(jax.random.normal(k1, (3, 3))))[0])
whitening = {"loc": jax.random.normal(k2, (3,)) * 10.0, "scale_out": jnp.exp(jax.random.normal(k3, (3,)) * 2.0),
             "rotation": rotation, "scale_in": jnp.exp(jax.random.normal(k4, (3,)))}
params = {"flow": randomize(params["flow"], jax.random.key(1)), "whitening": whitening}
bijector = flow.apply(params).bijector
u = jax.random.normal(jax.random.key(2), (5, 3), jnp.float64)
for ui in u:
    x, log_det = bijector.forward_and_log_det(ui)
    _, exact = jnp.linalg.slogdet(jax.jacfwd(bijector.forward)(ui))
    np.testing.assert_allclose(log_det, exact, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(bijector.inverse(x), ui, rtol=1e-8, atol=1e-8)
print("ok", flush=True)
"""


@pytest.mark.parametrize("family", ["affine_coupling", "iaf"])
def test_whitened_flow_log_det_and_inverse(family):
    import os
    import pathlib
    import subprocess
    import sys
    tests = pathlib.Path(__file__).resolve().parent
    env = {**os.environ, "JAX_ENABLE_X64": "1", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", WHITENED_CHECK, family], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_whitened_flow_starts_at_the_gaussian_and_is_constant_to_gradients():
    whitening = _random_whitening(KEY, 3)
    flow = flows.make_flow("affine_coupling", 3, whitened=True, layers=2, hidden=(8,))
    params = flows.with_whitening(flow.init(KEY), whitening)
    x = flow.apply(params).sample(seed=jax.random.key(3), sample_shape=(200_000,))
    root = whitening["scale_out"][:, None] * whitening["rotation"] * whitening["scale_in"][None, :]
    cov = root @ root.T
    # 200000 draws: the mean's s.e. is sd / 447, the covariance's about 0.3% of sd_i sd_j.
    np.testing.assert_allclose(x.mean(0), whitening["loc"], atol=float(5 * np.sqrt(np.diag(cov)).max() / 447))
    np.testing.assert_allclose(np.cov(np.asarray(x).T), cov, atol=float(0.02 * np.diag(cov).max()))
    grads = jax.grad(lambda p: flow.apply(p).log_prob(x[:10]).sum())(params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["whitening"]))


def test_whitening_cannot_be_stacked_or_inverted():
    flow = flows.make_flow("affine_coupling", 2, whitened=True, layers=2, hidden=(8,))
    with pytest.raises(ValueError, match="already whitened"):
        flows.whitened(flow)
    with pytest.raises(ValueError, match="invert a flow before whitening"):
        flows.invert(flow)


def test_default_fit_gets_a_badly_scaled_correlated_target_right():
    # The acceptance bars of the trustworthy-defaults issue: |mean error| < 0.1 sd, sd ratios 0.9-1.1.
    # With 20000 draws the Monte Carlo s.e. is 0.007 sd on a mean and 0.5% on an sd ratio.
    post = flowvi.fit(scaled_log_density, dim=2, key=KEY)
    assert post.flow.options["whitened"] and post.settings["warm_start"]["method"] == "laplace_path"
    x = np.asarray(post.sample(jax.random.key(1), 20_000))
    assert np.all(np.abs(x.mean(0) - SCALED_MEAN) / SCALED_SD < 0.1)
    assert np.all(np.abs(x.std(0) / SCALED_SD - 1.0) < 0.1)
    assert abs(np.corrcoef(x.T)[0, 1] - SCALED_RHO) < 2e-4
    assert post.stop_reason.startswith("converged at step")


def test_the_standard_start_fails_the_same_target():
    # What the warm start fixes: from N(0, I) at one learning rate the 1e-2 and 1e2 scales are not both
    # reached in 2000 steps (measured: the sd ratios 0.18 and 0.005, the means 5 sd off).
    post = flowvi.fit(scaled_log_density, dim=2, key=KEY, init="standard", steps=2000, flow="affine_coupling",
                      layers=2, hidden=(16,))
    x = np.asarray(post.sample(jax.random.key(1), 20_000))
    assert np.any(np.abs(x.std(0) / SCALED_SD - 1.0) > 0.5)
    assert "warm_start" in post.settings and post.settings["warm_start"] == {"skipped": "init='standard'"}


def test_continuing_a_fit_keeps_or_improves_its_elbo():
    first = flowvi.fit(banana_log_density, dim=2, key=KEY, flow="affine_coupling", layers=2, hidden=(16,), steps=300)
    more = flowvi.fit(banana_log_density, dim=2, key=jax.random.key(5), init=first, steps=600)
    assert more.flow == first.flow and more.settings["init"] == "posterior"
    before, after = first.diagnose(jax.random.key(9)), more.diagnose(jax.random.key(9))
    # The ELBO after continuing is at least the one before, within 3 standard errors of the difference.
    assert after.elbo >= before.elbo - 3.0 * np.hypot(before.elbo_se, after.elbo_se)


def test_init_errors_name_the_argument():
    post = flowvi.fit(banana_log_density, dim=2, key=KEY, flow="gaussian", steps=50, init="standard")
    with pytest.raises(ValueError, match="init"):
        flowvi.fit(banana_log_density, dim=2, key=KEY, init="laplace")
    with pytest.raises(TypeError, match="init must be"):
        flowvi.fit(banana_log_density, dim=2, key=KEY, init=3)
    with pytest.raises(ValueError, match="leave flow= and its hyperparameters out"):
        flowvi.fit(banana_log_density, dim=2, key=KEY, init=post, flow="iaf")
    with pytest.raises(ValueError, match="3-dimensional"):
        three = flowvi.fit(lambda x: -jnp.sum(x ** 2), dim=3, key=KEY, flow="gaussian", steps=20, init="standard")
        flowvi.fit(lambda x: -jnp.sum(x ** 2), dim=2, key=KEY, init=three)


def test_a_whitened_fit_saves_and_loads(tmp_path):
    post = flowvi.fit(scaled_log_density, dim=2, key=KEY, flow="gaussian", steps=100)
    post.save(tmp_path / "fit.flowvi")
    loaded = flowvi.load(tmp_path / "fit.flowvi")
    x = post.sample(jax.random.key(2), 50)
    np.testing.assert_allclose(loaded.log_prob(x), post.log_prob(x), rtol=1e-6)
    assert loaded.settings["warm_start"]["method"] == "laplace_path"


SMALL_STAGES = [("gaussian", {}), ("affine_coupling", {"layers": 2, "hidden": (16,)})]


def test_flow_auto_tries_every_stage_until_one_passes_and_keeps_the_best_elbo(monkeypatch):
    from flowvi import escalation
    monkeypatch.setattr(escalation, "stages", lambda dim: SMALL_STAGES)
    monkeypatch.setattr(escalation, "K_PASS", -np.inf)  # nothing passes: every stage is tried
    post = flowvi.fit(banana_log_density, dim=2, key=KEY, flow="auto", steps=600)
    stages = post.settings["stages"]
    assert [s["family"] for s in stages] == ["gaussian", "affine_coupling"]
    assert not any(s["passed"] for s in stages) and all(s["steps"] == 600 for s in stages)
    best = max(stages, key=lambda s: s["elbo"])
    assert post.flow.name == best["family"] and post.settings["flow"] == "auto"
    # A coupling flow fits the banana better than a Gaussian can (exact log Z is 0: ELBO gap = KL).
    assert stages[1]["elbo"] > stages[0]["elbo"]

    monkeypatch.setattr(escalation, "K_PASS", np.inf)  # the first stage passes: no more are tried
    post = flowvi.fit(banana_log_density, dim=2, key=KEY, flow="auto", steps=600)
    assert [s["family"] for s in post.settings["stages"]] == ["gaussian"]


def test_flow_auto_stops_when_max_steps_is_spent(monkeypatch):
    from flowvi import escalation
    monkeypatch.setattr(escalation, "stages", lambda dim: SMALL_STAGES)
    monkeypatch.setattr(escalation, "K_PASS", -np.inf)
    post = flowvi.fit(banana_log_density, dim=2, key=KEY, flow="auto", max_steps=300)
    assert len(post.settings["stages"]) == 1 and post.settings["stages"][0]["steps"] == 300


def test_flow_auto_options_are_checked():
    with pytest.raises(ValueError, match="flow='auto' chooses"):
        flowvi.fit(banana_log_density, dim=2, key=KEY, flow="auto", layers=3)
    with pytest.raises(ValueError, match="time_budget applies to flow='auto'"):
        flowvi.fit(banana_log_density, dim=2, key=KEY, time_budget=10.0)


def test_the_warm_start_on_data_passed_as_arguments_is_the_one_on_the_closure():
    """Same climb, same Gaussian; and the data are inputs of the compiled climb, not constants in it."""
    from flowvi.data_target import FullDataDensity
    from flowvi.warm_start import _climb

    target = plain_logistic(4000)
    spec = target.data_spec()
    data = jax.device_put(spec.data)
    density = FullDataDensity(spec.log_density)
    closed, _ = gaussian_start(target.log_density, target.dim, KEY)
    passed, _ = gaussian_start(density, target.dim, KEY, data=data)
    np.testing.assert_allclose(passed.loc, closed.loc, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(passed.covariance(), closed.covariance(), rtol=1e-4)
    assert passed.iterations == closed.iterations
    x0 = jnp.zeros(target.dim)
    # 4000 rows x 4 floats as a dense constant are at least 16,000 numbers of text in the closure's program.
    closure_text = _climb.lower(target.log_density, x0).as_text()
    argument_text = _climb.lower(density, x0, data).as_text()
    assert len(closure_text) - len(argument_text) > 16_000 * 4
    assert len(argument_text) < len(closure_text) / 2


def test_the_probe_on_data_passed_as_arguments_reports_and_refuses_as_on_the_closure():
    from flowvi.data_target import FullDataDensity

    target = plain_logistic(100)
    spec = target.data_spec()
    data = jax.device_put(spec.data)
    report = flowvi.Target(FullDataDensity(spec.log_density), target.dim).probe(data)
    assert report == target.probe()
    bad = flowvi.Target(log_prior=lambda w: jnp.where(w[0] > 0, jnp.nan, 0.0), log_likelihood=lambda w, row: 0.0,
                        data=np.zeros((5, 1)), dim=2)
    bad_spec = bad.data_spec()
    with pytest.raises(ValueError, match="log_density is NaN at"):
        flowvi.Target(FullDataDensity(bad_spec.log_density), 2).probe(jax.device_put(bad_spec.data))

