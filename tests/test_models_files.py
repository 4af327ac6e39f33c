"""Checks for the example model files in models/ (the CLI's model-file convention).

Each models/*.py defines exactly one of:
  * ``log_density`` + ``dim`` (optionally ``names``),
  * ``model`` + ``args`` / ``kwargs`` (a NumPyro model and its data),
  * ``samples`` (an (n, dim) array for density estimation),
optionally with ``reference`` known answers.
"""

import ast
import importlib.util
import inspect
import pathlib

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from numpyro.infer.util import initialize_model
from scipy import integrate, stats

MODELS_DIR = pathlib.Path(__file__).resolve().parent.parent / "models"
MODEL_FILES = sorted(p for p in MODELS_DIR.glob("*.py") if p.name != "__init__.py")
MODEL_NAMES = [p.stem for p in MODEL_FILES]

EXPECTED = {
    "banana": "log_density",
    "funnel": "log_density",
    "ring": "log_density",
    "chequerboard": "samples",
    "eight_schools": "model",
    "logistic_regression": "model",
    "hierarchical_regression": "model",
    "constrained": "model",
    "scaled_regression": "model",
    "ar_timeseries": "model",
    "hsgp_heteroscedastic": "model",
    "flat_prior_regression": "model",
}
ALLOWED_IMPORTS = {"numpy", "jax", "numpyro", "pathlib"}

_cache = {}


def load(name):
    if name not in _cache:
        path = MODELS_DIR / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"_flowvi_models_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _cache[name] = module
    return _cache[name]


def kind(module):
    kinds = []
    if hasattr(module, "log_density") and hasattr(module, "dim"):
        kinds.append("log_density")
    if hasattr(module, "model"):
        kinds.append("model")
    if hasattr(module, "samples"):
        kinds.append("samples")
    return kinds


# ---------------------------------------------------------------- convention


def test_all_expected_files_present():
    assert set(EXPECTED) <= set(MODEL_NAMES)
    assert (MODELS_DIR / "__init__.py").exists()
    readme = (MODELS_DIR / "data" / "README.md").read_text()
    for f in (MODELS_DIR / "data").glob("*.csv"):
        assert f.name in readme, f"{f.name} not described in models/data/README.md"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_convention(name):
    module = load(name)
    kinds = kind(module)
    assert len(kinds) == 1, f"{name}: defines {kinds}, expected exactly one kind"
    if name in EXPECTED:
        assert kinds[0] == EXPECTED[name]
    assert module.__doc__ and len(module.__doc__.strip()) > 50
    if kinds[0] == "log_density":
        assert isinstance(module.dim, int) and module.dim > 0
        if hasattr(module, "names"):
            assert len(module.names) == module.dim
    if kinds[0] == "model":
        assert callable(module.model)
        assert isinstance(getattr(module, "args", ()), tuple)
        assert isinstance(getattr(module, "kwargs", {}), dict)
    if hasattr(module, "reference"):
        ref = module.reference
        d = module.dim if kinds[0] == "log_density" else np.shape(getattr(module, "samples", np.zeros((1, 0))))[1]
        for key in ("mean", "sd"):
            if key in ref:
                assert np.shape(ref[key]) == (d,)
                assert np.all(np.isfinite(ref[key]))
        if "log_z" in ref:
            assert np.isfinite(ref["log_z"])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_imports_restricted(name):
    tree = ast.parse((MODELS_DIR / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            roots = [(node.module or "").split(".")[0]]
        else:
            continue
        for root in roots:
            assert root in ALLOWED_IMPORTS, f"{name} imports {root}"


# ---------------------------------------------------------------- plain log densities

LOG_DENSITY_MODELS = [n for n in MODEL_NAMES if EXPECTED.get(n) == "log_density"]


@pytest.mark.parametrize("name", LOG_DENSITY_MODELS)
def test_log_density_finite(name):
    module = load(name)
    rng = np.random.default_rng(0)
    points = rng.normal(size=(5, module.dim)).astype(np.float32)
    points = np.concatenate([np.zeros((1, module.dim), np.float32), points])
    f = jax.jit(module.log_density)
    g = jax.jit(jax.grad(module.log_density))
    for x in points:
        val = f(jnp.asarray(x))
        assert jnp.shape(val) == ()
        assert np.isfinite(float(val))
        assert np.all(np.isfinite(np.asarray(g(jnp.asarray(x)))))
    batched = jax.vmap(module.log_density)(jnp.asarray(points))
    assert batched.shape == (len(points),)


def _trapezoid(y, x, axis=-1):
    return np.trapezoid(y, x, axis=axis)


def _grid_moments(log_density, X0, X1, u, v):
    """log Z, mean and sd of a 2-D density on the grid (X0, X1) = f(u, v) with unit Jacobian."""
    pts = jnp.asarray(np.stack([X0.ravel(), X1.ravel()], axis=1))
    dens = np.exp(np.asarray(jax.jit(jax.vmap(log_density))(pts), np.float64)).reshape(X0.shape)

    def integral(h):
        return _trapezoid(_trapezoid(h, v, axis=1), u)

    z = integral(dens)
    mean = np.array([integral(X0 * dens), integral(X1 * dens)]) / z
    sd = np.sqrt(np.array([integral(X0**2 * dens), integral(X1**2 * dens)]) / z - mean**2)
    return np.log(z), mean, sd


def test_banana_normalisation_and_moments():
    m = load("banana")
    # shear coordinates: x1 = x0**2 + t (unit Jacobian)
    x0 = np.linspace(-8.0, 8.0, 1601)
    t = np.linspace(-4.0, 4.0, 801)
    X0, T = np.meshgrid(x0, t, indexing="ij")
    log_z, mean, sd = _grid_moments(m.log_density, X0, X0**2 + T, x0, t)
    np.testing.assert_allclose(log_z, m.reference["log_z"], atol=1e-4)
    np.testing.assert_allclose(mean, m.reference["mean"], atol=1e-3)
    np.testing.assert_allclose(sd, m.reference["sd"], atol=1e-3)


def test_funnel_normalised_and_reference():
    m = load("funnel")
    rng = np.random.default_rng(1)
    v = rng.normal(0.0, 3.0, size=20)
    xs = rng.normal(size=(20, 9)) * np.exp(v / 2.0)[:, None]
    pts = np.concatenate([v[:, None], xs], axis=1)
    expected = stats.norm.logpdf(v, 0.0, 3.0) + stats.norm.logpdf(
        xs, 0.0, np.exp(v / 2.0)[:, None]
    ).sum(axis=1)
    got = np.asarray(jax.vmap(m.log_density)(jnp.asarray(pts, jnp.float32)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    # sd(x_i)^2 = E[Var(x_i | v)] = E[exp(v)], by quadrature over v
    e_exp_v, _ = integrate.quad(lambda u: np.exp(u) * stats.norm.pdf(u, 0.0, 3.0), -40, 40)
    np.testing.assert_allclose(m.reference["sd"][1:], np.sqrt(e_exp_v), rtol=1e-6)
    np.testing.assert_allclose(m.reference["sd"][0], 3.0)
    np.testing.assert_allclose(m.reference["mean"], 0.0)
    assert m.reference["log_z"] == 0.0
    # 2-D quadrature of the (v, x_1) slice with x_2..x_9 = 0, divided by the known
    # conditional density of those eight zeros, must integrate to 1 if log_density
    # is normalised.
    us = np.linspace(-15.0, 15.0, 601)
    t = np.linspace(-8.0, 8.0, 401)  # x_1 = t * exp(v / 2)
    U, T = np.meshgrid(us, t, indexing="ij")
    X1 = T * np.exp(U / 2.0)
    pts = np.zeros((U.size, 10))
    pts[:, 0], pts[:, 1] = U.ravel(), X1.ravel()
    lp = np.asarray(jax.jit(jax.vmap(m.log_density))(jnp.asarray(pts, jnp.float32)), np.float64)
    rest = 8 * stats.norm.logpdf(0.0, 0.0, np.exp(U / 2.0))
    dens = np.exp(lp.reshape(U.shape) - rest) * np.exp(U / 2.0)  # Jacobian dx_1/dt
    np.testing.assert_allclose(_trapezoid(_trapezoid(dens, t, axis=1), us), 1.0, atol=1e-3)


def test_ring_normalisation_and_moments():
    m = load("ring")
    g = np.linspace(-7.5, 7.5, 1201)
    X0, X1 = np.meshgrid(g, g, indexing="ij")
    log_z, mean, sd = _grid_moments(m.log_density, X0, X1, g, g)
    np.testing.assert_allclose(log_z, m.reference["log_z"], atol=1e-4)
    np.testing.assert_allclose(mean, m.reference["mean"], atol=1e-4)
    np.testing.assert_allclose(sd, m.reference["sd"], rtol=1e-4)
    # eight modes of equal height at radius 4
    ang = 2 * np.pi * np.arange(8) / 8
    at_modes = jax.vmap(m.log_density)(jnp.asarray(4.0 * np.stack([np.cos(ang), np.sin(ang)], 1)))
    np.testing.assert_allclose(np.asarray(at_modes), float(at_modes[0]), atol=1e-5)


# ---------------------------------------------------------------- samples


def test_chequerboard_samples():
    m = load("chequerboard")
    s = m.samples
    assert isinstance(s, np.ndarray)
    assert s.shape == (100_000, 2)
    assert np.all(np.isfinite(s))
    assert np.all(np.abs(s) <= 4.0)
    np.testing.assert_array_equal(s, m.make_samples(100_000, 0))
    assert not np.array_equal(m.make_samples(100, 1), m.make_samples(100, 0))
    assert m.make_samples(7, 3).shape == (7, 2)
    lp = np.asarray(m.log_density_true(jnp.asarray(s)))
    np.testing.assert_allclose(lp, np.log(1.0 / 32.0), rtol=1e-6)
    np.testing.assert_allclose(s.mean(0), m.reference["mean"], atol=0.03)
    np.testing.assert_allclose(s.std(0), m.reference["sd"], atol=0.03)
    # occupied squares: (i + j) even; e.g. (-3, -3) in, (-1, -3) out, outside board out
    assert np.isfinite(float(m.log_density_true(jnp.array([-3.0, -3.0]))))
    assert float(m.log_density_true(jnp.array([-1.0, -3.0]))) == -np.inf
    assert float(m.log_density_true(jnp.array([5.0, 5.0]))) == -np.inf
    # density integrates to 1 (midpoint rule on a grid aligned with the squares)
    h = 0.05
    c = np.arange(-4.5 + h / 2, 4.5, h)
    X0, X1 = np.meshgrid(c, c, indexing="ij")
    dens = np.exp(np.asarray(m.log_density_true(jnp.asarray(np.stack([X0, X1], -1)))))
    np.testing.assert_allclose(dens.sum() * h * h, 1.0, atol=1e-3)


# ---------------------------------------------------------------- NumPyro models

NUMPYRO_MODELS = [n for n in MODEL_NAMES if EXPECTED.get(n) == "model"]
UNCONSTRAINED_DIM = {
    "eight_schools": 10,
    "logistic_regression": 7,
    "hierarchical_regression": 6 + 2 * 85,
    "constrained": 7,
    "scaled_regression": 27,
    "ar_timeseries": 4,
    "hsgp_heteroscedastic": 66,
    "flat_prior_regression": 5,
}


def _arrays(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _arrays(v)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _arrays(v)
    elif isinstance(obj, (np.ndarray, jax.Array)):
        yield np.asarray(obj)


_init_cache = {}


def initialized(name):
    """initialize_model(...) for a model file, computed once per session, batch axis removed.

    A batch of one key takes NumPyro's compiled search for the initial point (measured 2x faster
    on models/constrained.py than one key, which runs it op by op), as flowvi itself does.
    """
    if name not in _init_cache:
        m = load(name)
        param_info, potential_fn, postprocess_fn, trace = initialize_model(
            jax.random.PRNGKey(0)[None], m.model, model_args=m.args, model_kwargs=m.kwargs
        )
        _init_cache[name] = (jax.tree.map(lambda a: a[0], param_info), potential_fn, postprocess_fn, trace)
    return _init_cache[name]


@pytest.mark.parametrize("name", NUMPYRO_MODELS)
def test_numpyro_data_finite(name):
    m = load(name)
    arrays = list(_arrays((m.args, m.kwargs)))
    assert arrays, f"{name}: no data arrays"
    for a in arrays:
        if np.issubdtype(a.dtype, np.number) or a.dtype == bool:
            assert np.all(np.isfinite(a)), f"{name}: data has NaN/inf"


@pytest.mark.parametrize("name", NUMPYRO_MODELS)
def test_numpyro_initialize_and_potential(name):
    load(name)
    info, potential_fn, postprocess_fn, trace = initialized(name)
    flat, unravel = jax.flatten_util.ravel_pytree(info.z)
    assert flat.shape == (UNCONSTRAINED_DIM[name],)
    potential = jax.jit(potential_fn)
    potential_grad = jax.jit(jax.grad(potential_fn))
    pe = potential(info.z)
    assert np.isfinite(float(pe))
    assert np.all(np.isfinite(np.asarray(jax.flatten_util.ravel_pytree(info.z_grad)[0])))
    # potential at the origin of unconstrained space and at random points
    rng = np.random.default_rng(0)
    for scale in (0.0, 0.5, 1.0):
        z = unravel(jnp.asarray(rng.normal(size=flat.shape) * scale, flat.dtype))
        assert np.isfinite(float(potential(z))), f"{name}: non-finite potential"
        grad = potential_grad(z)
        assert np.all(np.isfinite(np.asarray(jax.flatten_util.ravel_pytree(grad)[0])))
    constrained = jax.jit(postprocess_fn)(info.z)
    for v in constrained.values():
        assert np.all(np.isfinite(np.asarray(v)))
    assert any(site["type"] == "sample" and site["is_observed"] for site in trace.values())


def test_eight_schools_specifics():
    m = load("eight_schools")
    assert list(inspect.signature(m.model).parameters) == ["sigma", "y"]
    assert inspect.signature(m.model).parameters["y"].default is None
    np.testing.assert_array_equal(m.kwargs["y"], [28, 8, -3, 7, -1, 1, 18, 12])
    np.testing.assert_array_equal(m.args[0], [15, 10, 16, 11, 9, 11, 10, 18])
    tr = numpyro.handlers.trace(numpyro.handlers.seed(m.model, 0)).get_trace(*m.args, **m.kwargs)
    assert tr["theta"]["type"] == "deterministic"
    assert tr["theta_tilde"]["cond_indep_stack"][0].name == "school"


@pytest.mark.parametrize("name", ["logistic_regression", "hierarchical_regression"])
def test_data_plate_subsamples(name):
    m = load(name)
    tr = numpyro.handlers.trace(numpyro.handlers.seed(m.model, 0)).get_trace(*m.args, **m.kwargs)
    n = np.shape(m.kwargs["y"])[0]
    assert tr["data"]["type"] == "plate" and tr["data"]["args"][0] == n
    assert tr["obs"]["value"].shape == (n,)
    tr = numpyro.handlers.trace(numpyro.handlers.seed(m.model, 0)).get_trace(
        *m.args, **m.kwargs, subsample_size=32
    )
    assert tr["obs"]["value"].shape == (32,)
    assert tr["obs"]["scale"] == pytest.approx(n / 32)
    # observed values are the subsampled data
    idx = np.asarray(tr["data"]["value"])
    np.testing.assert_allclose(np.asarray(tr["obs"]["value"]), np.asarray(m.kwargs["y"])[idx])


def test_logistic_regression_data():
    m = load("logistic_regression")
    X, y = m.args[0], m.kwargs["y"]
    assert X.shape == (333, 6) and y.shape == (333,)
    assert X.shape[1] <= 10
    np.testing.assert_allclose(X.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(X.std(0), 1.0, atol=1e-5)
    assert set(np.unique(y)) == {0.0, 1.0}


def test_hierarchical_regression_data():
    m = load("hierarchical_regression")
    county, floor, log_uranium = m.args
    assert county.shape == floor.shape == m.kwargs["y"].shape == (919,)
    assert log_uranium.shape == (85,)
    assert county.min() == 0 and county.max() == 84
    assert len(np.unique(county)) == 85
    assert set(np.unique(floor)) == {0.0, 1.0}
    tr = numpyro.handlers.trace(numpyro.handlers.seed(m.model, 0)).get_trace(*m.args, **m.kwargs)
    assert tr["a"]["type"] == "deterministic" and tr["a"]["value"].shape == (85,)
    assert tr["z_a"]["cond_indep_stack"][0].name == "county"


def test_constrained_supports():
    m = load("constrained")
    info, _, postprocess_fn, trace = initialized("constrained")
    names = {k for k, s in trace.items() if s["type"] == "sample" and not s["is_observed"]}
    assert names == {"sigma", "p", "w", "L"}
    assert any(s["type"] == "deterministic" for s in trace.values())
    flat, unravel = jax.flatten_util.ravel_pytree(info.z)
    rng = np.random.default_rng(0)
    postprocess = jax.jit(postprocess_fn)
    for _ in range(5):
        z = unravel(jnp.asarray(rng.normal(size=flat.shape) * 2.0, flat.dtype))
        c = postprocess(z)
        assert float(c["sigma"]) > 0
        assert 0 < float(c["p"]) < 1
        np.testing.assert_allclose(float(jnp.sum(c["w"])), 1.0, atol=1e-5)
        assert np.all(np.asarray(c["w"]) > 0)
        corr = np.asarray(c["corr"])
        np.testing.assert_allclose(np.diag(corr), 1.0, atol=1e-5)
        np.testing.assert_allclose(corr, corr.T, atol=1e-6)
        assert np.all(np.linalg.eigvalsh(corr) > 0)
        np.testing.assert_allclose(np.asarray(c["cov"]), float(c["sigma"]) ** 2 * corr, rtol=1e-5, atol=1e-6)
    d = m.kwargs
    assert d["y"].shape == (50, 3) and d["cats"].shape == (40,) and d["flips"].shape == (30,)
    np.testing.assert_array_equal(d["y"], m.make_data()["y"])


def _log_joint(name, **values):
    """The model's log joint (NumPyro's log_density) at constrained latent values."""
    m = load(name)
    return float(numpyro.infer.util.log_density(m.model, m.args, m.kwargs, values)[0])


def test_scaled_regression_design():
    m = load("scaled_regression")
    X, y = np.asarray(m.X, np.float64), np.asarray(m.kwargs["y"], np.float64)
    assert X.shape == (5000, 25) and y.shape == (5000,)
    assert X.std(0).min() < 0.011 and X.std(0).max() > 990  # sds 0.01 .. 1000
    assert np.abs(X.mean(0)).min() > 3 * X.std(0).min()  # uncentred
    # Posterior of (alpha, beta) given sigma at its true value: Gaussian, exact in float64; the
    # priors (sd 1e6) are included. The docstring's numbers: max |corr| 0.9971, sds 0.031 .. 3.1e3.
    A = np.column_stack([np.ones(len(y)), X])
    cov = np.linalg.inv(A.T @ A / m.SIGMA_TRUE**2 + np.eye(26) / 1e12)
    sd = np.sqrt(np.diag(cov))
    corr = cov / np.outer(sd, sd) - np.eye(26)
    assert np.abs(corr).max() == pytest.approx(0.9971, abs=1e-4)
    assert sd.min() == pytest.approx(0.031, rel=0.02) and sd.max() == pytest.approx(3.1e3, rel=0.02)
    # the data agree with the true coefficients: posterior-mean errors in posterior sds
    mean = cov @ (A.T @ y) / m.SIGMA_TRUE**2
    z = (mean - np.r_[m.alpha_true, m.beta_true]) / sd
    assert np.abs(z).max() < 4.0  # 26 standard normals (sigma fixed at the truth): P(max > 4) ~ 0.002


def test_ar_timeseries_exact_likelihood_and_support():
    m = load("ar_timeseries")
    y = np.asarray(m.args[0], np.float64)
    assert y.shape == (300,)
    # exact Gaussian likelihood of the whole path: Toeplitz autocovariance from the AR(2) recursion
    mu, sigma, phi1, phi2 = 4.0, 1.3, 0.9, -0.3
    gamma = np.empty(300)
    gamma[0], gamma[1] = m.stationary_moments(phi1, phi2, sigma)
    for k in range(2, 300):
        gamma[k] = phi1 * gamma[k - 1] + phi2 * gamma[k - 2]
    # Yule-Walker: gamma0 = phi1 gamma1 + phi2 gamma2 + sigma^2
    assert gamma[0] == pytest.approx(phi1 * gamma[1] + phi2 * gamma[2] + sigma**2)
    cov = gamma[np.abs(np.subtract.outer(np.arange(300), np.arange(300)))]
    exact = stats.multivariate_normal(np.full(300, mu), cov).logpdf(y)
    prior = (stats.norm(0, 10).logpdf(mu) + stats.halfnorm(scale=2).logpdf(sigma) + np.log(0.5)
             - np.log(2 * (1 - phi2)))
    got = _log_joint("ar_timeseries", mu=mu, sigma=sigma, phi1=phi1, phi2=phi2)
    assert got == pytest.approx(exact + prior, abs=2e-2)  # float32 sums of 300 terms ~ -500
    # any unconstrained point maps into the stationarity triangle
    info, _, postprocess_fn, _ = initialized("ar_timeseries")
    flat, unravel = jax.flatten_util.ravel_pytree(info.z)
    rng = np.random.default_rng(0)
    for _ in range(5):
        c = jax.jit(postprocess_fn)(unravel(jnp.asarray(rng.normal(size=flat.shape) * 3.0, flat.dtype)))
        p1, p2 = float(c["phi1"]), float(c["phi2"])
        assert abs(p2) < 1 and p2 - 1 < p1 < 1 - p2


def test_hsgp_basis_approximates_the_kernel():
    m = load("hsgp_heteroscedastic")
    x = np.asarray(m.args[0])
    assert x.shape == (150,) and x.min() >= -1 and x.max() <= 1
    grid = jnp.linspace(-1.0, 1.0, 101)
    phi = np.asarray(m.basis(grid), np.float64)
    omega = np.asarray(m.sqrt_eigenvalues(), np.float64)
    assert phi.shape == (101, 30)
    for ell in (0.09, 0.15, 0.3):  # the range the docstring states (max error 0.0052)
        exact = 0.7**2 * np.exp(-0.5 * np.subtract.outer(np.asarray(grid), np.asarray(grid)) ** 2 / ell**2)
        approx = (phi * np.asarray(m.spectral_density(omega, 0.7, ell))) @ phi.T
        assert np.abs(approx - exact).max() < 0.0053 * 0.7**2


def test_hsgp_gradient_finite_where_the_spectral_density_underflows():
    """ell = 3: exp(-ell^2 omega_30^2 / 2) underflows to 0 in float32; sqrt(0) would give a NaN gradient."""
    m = load("hsgp_heteroscedastic")

    def log_joint(v):
        values = {"m0": v[0], "s0": v[1], "alpha_f": v[2], "ell_f": v[3], "alpha_g": v[4], "ell_g": v[5],
                  "z_f": v[6:36], "z_g": v[36:66]}
        return numpyro.infer.util.log_density(m.model, m.args, m.kwargs, values)[0]

    v = jnp.concatenate([jnp.array([0.0, -1.0, 0.5, 3.0, 0.5, 3.0]), jnp.full(60, 0.1)])
    assert float(jnp.exp(-0.5 * (3.0 * m.sqrt_eigenvalues()[-1]) ** 2)) == 0.0
    grad = np.asarray(jax.grad(log_joint)(v))
    assert np.all(np.isfinite(grad))


def test_flat_prior_regression_exact_posterior():
    m = load("flat_prior_regression")
    X, y = np.asarray(m.X, np.float64), np.asarray(m.kwargs["y"], np.float64)
    assert X.shape == (120, 3)
    # the log joint is the plain Gaussian likelihood (flat priors add nothing)
    alpha, beta, sigma = 10.0, np.array([0.5, 0.3, 4.0]), 15.0
    exact = stats.norm(10.0 + X @ beta, sigma).logpdf(y).sum()
    got = _log_joint("flat_prior_regression", alpha=alpha, beta=jnp.asarray(beta, jnp.float32), sigma=sigma)
    assert got == pytest.approx(exact, abs=5e-3)  # float32 sum of 120 terms ~ -500
    # exact_posterior's sigma moments against quadrature of p(sigma | y) ~ sigma^-(N - p) exp(-RSS / 2 sigma^2)
    ref = m.exact_posterior()
    A = np.column_stack([np.ones(120), X])
    rss = float(np.sum((y - A @ np.linalg.lstsq(A, y, rcond=None)[0]) ** 2))
    s = np.linspace(5.0, 60.0, 200_001)
    dens = np.exp(-(120 - 4) * np.log(s) - rss / (2 * s**2) + (120 - 4) * np.log(20.0) + rss / 800.0)
    z = np.trapezoid(dens, s)
    mean = np.trapezoid(s * dens, s) / z
    sd = np.sqrt(np.trapezoid(s**2 * dens, s) / z - mean**2)
    assert ref["sigma"][0] == pytest.approx(mean, rel=1e-6) and ref["sigma"][1] == pytest.approx(sd, rel=1e-5)
    # coefficients: the t posterior's sds against a Monte Carlo draw of the exact joint
    rng = np.random.default_rng(1)
    sig = np.sqrt(rss / 2 / rng.gamma((120 - 5) / 2, size=200_000))
    chol = np.linalg.cholesky(np.linalg.inv(A.T @ A))
    draws = rng.standard_normal((200_000, 4)) @ chol.T * sig[:, None]
    # sd of a sample sd from 2e5 draws: ~ sd / sqrt(4e5) = 0.16% of sd; tolerance 1% (> 6 s.e.)
    np.testing.assert_allclose(draws.std(0), np.r_[ref["alpha"][1], ref["beta"][1]], rtol=0.01)
