"""Conditional flows: q(x | c) from samples (fit_samples(context=)), amortised reverse KL over a family of
targets (fit(contexts=)), at one context (Posterior.given), and the errors for contexts of the wrong shape.

Known answers: a linear-Gaussian conditional (x | c ~ N(A c + b, S)) for the forward fit, and
p(x | c) = N(x; c, diag(exp(c))) for the amortised one; both are normalised, so the paired
differences log p - log q estimate the KLs directly.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowvi

A = np.array([[1.0, -0.5, 0.3], [0.2, 0.8, -1.0]])
B = np.array([0.5, -1.0])
CHOL = np.array([[0.6, 0.0], [0.3, 0.4]])
COV = CHOL @ CHOL.T
# The contexts are stored on a scale far from 1 (c = 200 + 50 z, z standard normal), so the fit must
# standardise them; the mean depends on z.
C_LOC, C_SCALE = 200.0, 50.0


def _linear_gaussian(n: int, seed: int):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    x = z @ A.T + B + rng.normal(size=(n, 2)) @ CHOL.T
    return x, C_LOC + C_SCALE * z


def _true_log_prob(x, c):
    r = x - ((c - C_LOC) / C_SCALE) @ A.T - B
    prec = np.linalg.inv(COV)
    return -0.5 * np.einsum("ni,ij,nj->n", r, prec, r) - 0.5 * np.log(np.linalg.det(2 * np.pi * COV))


@functools.cache
def _forward_fit():
    x, c = _linear_gaussian(6000, seed=0)
    return flowvi.fit_samples(x, context=c, key=jax.random.key(0), flow="maf", progress=False)


def test_fit_samples_learns_a_linear_gaussian_conditional():
    post = _forward_fit()
    x, c = _linear_gaussian(4000, seed=1)  # held out: never seen by the fit
    log_p, log_q = _true_log_prob(x, c), np.asarray(post.log_prob(x, context=c), np.float64)
    # The held-out NLL minus the true conditional NLL estimates KL(p || q) >= 0; the paired
    # differences have a s.e. of about 0.003 nats here, so 0.05 (the bar) is far outside noise.
    gap = np.mean(log_p - log_q)
    se = np.std(log_p - log_q) / np.sqrt(x.shape[0])
    assert -3 * se < gap < 0.05, (gap, se)
    # log_prob is the conditional density point by point, not only on average.
    assert np.sqrt(np.mean((log_q - log_p) ** 2)) < 0.25


def test_conditional_draws_have_the_conditional_moments():
    post = _forward_fit()
    z = np.array([1.0, -0.5, 2.0])
    draws = np.asarray(post.sample(jax.random.key(1), 20000, context=C_LOC + C_SCALE * z), np.float64)
    # MC s.e. of the mean is sd / sqrt(20000) = 0.004 and 0.0035; the fit's own error dominates.
    np.testing.assert_allclose(draws.mean(0), A @ z + B, atol=0.06)
    np.testing.assert_allclose(np.cov(draws.T), COV, atol=0.05)
    # One context per draw: the residuals about each draw's own mean have the covariance S.
    x, c = _linear_gaussian(20000, seed=2)
    per_draw = np.asarray(post.sample(jax.random.key(2), 20000, context=c), np.float64)
    residual = per_draw - ((c - C_LOC) / C_SCALE) @ A.T - B
    np.testing.assert_allclose(residual.mean(0), 0.0, atol=0.06)
    np.testing.assert_allclose(np.cov(residual.T), COV, atol=0.05)


def test_given_is_the_fit_at_one_context_and_a_conditional_fit_round_trips_through_a_file(tmp_path):
    post = _forward_fit()
    c = np.array([180.0, 260.0, 150.0])
    at_c = post.given(c)
    assert at_c.context_dim == 0 and post.context_dim == 3
    x = np.asarray(post.sample(jax.random.key(3), 50, context=c))
    np.testing.assert_allclose(at_c.log_prob(x), post.log_prob(x, context=c), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(at_c.sample(jax.random.key(3), 50), x, rtol=1e-5, atol=1e-5)
    assert at_c.settings["context"] == c.tolist()
    with pytest.raises(ValueError, match="held at one context"):
        at_c.save(tmp_path / "at_c.npz")
    post.save(tmp_path / "cond.npz")
    back = flowvi.load(tmp_path / "cond.npz")
    assert back.context_dim == 3
    np.testing.assert_allclose(back.log_prob(x, context=c), post.log_prob(x, context=c), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(back.sample(jax.random.key(4), 20, context=c), post.sample(jax.random.key(4), 20,
                                                                                            context=c), atol=1e-6)


def _amortised_log_density(x, c):
    var = jnp.exp(c)
    return -0.5 * jnp.sum((x - c) ** 2 / var + jnp.log(2 * jnp.pi * var))


@functools.cache
def _amortised_fit():
    contexts = np.random.default_rng(0).uniform(-1.0, 1.0, size=(512, 2))
    return flowvi.fit(_amortised_log_density, dim=2, contexts=contexts, key=jax.random.key(0), progress=False)


def test_amortised_fit_is_close_to_every_target_of_the_family_at_unseen_contexts():
    post = _amortised_fit()
    assert post.settings["objective"] == "amortised_reverse_kl" and post.context_dim == 2
    for c in np.random.default_rng(1).uniform(-1.0, 1.0, size=(5, 2)):
        x, log_q = post.sample_and_log_prob(jax.random.key(1), 20000, context=c)
        log_p = jax.vmap(lambda x, c=c: _amortised_log_density(x, jnp.asarray(c, x.dtype)))(x)
        gap = np.asarray(log_q - log_p, np.float64)
        # KL(q || p) = E_q[log q - log p] (p normalised); s.e. of the estimate below 0.002 here.
        assert gap.mean() < 0.05, (c, gap.mean(), gap.std() / np.sqrt(gap.size))


def test_an_amortised_fit_diagnoses_and_exports_at_one_context():
    post = _amortised_fit()
    c = np.array([0.5, -0.5])
    d = post.diagnose(jax.random.key(2), 2000, context=c)
    # log Z of each normalised target is 0: the estimate from importance weights must find it.
    assert abs(d.log_z) < 4 * d.log_z_se + 0.01, (d.log_z, d.log_z_se)
    # The target is normalised, so -ELBO is KL(q || p) at c (s.e. elbo_se, about 0.002 here).
    assert -d.elbo < 0.05 and d.ess > 0.9 * 2000, (d.elbo, d.ess)
    assert not d.verdict.startswith("unreliable")
    idata = post.to_arviz(jax.random.key(2), 500, context=c)
    x = np.asarray(idata.posterior["x"]).reshape(-1, 2)
    # Exact moments at c: mean c, sd exp(c / 2); 500 draws give s.e. 0.05-0.06 on the means.
    np.testing.assert_allclose(x.mean(0), c, atol=0.25)
    with pytest.raises(ValueError, match="context is required"):
        post.diagnose(jax.random.key(2), 100)


def test_amortised_fit_from_a_context_sampler():
    def sampler(key):
        return jax.random.uniform(key, (8, 2), minval=-1.0, maxval=1.0)

    post = flowvi.fit(_amortised_log_density, dim=2, contexts=sampler, key=jax.random.key(0), steps=300,
                      flow="gaussian", learning_rate=2e-2, progress=False)
    assert post.settings["num_contexts"] == 8 and "sampler" in post.settings["contexts"]
    # A conditional Gaussian can be exact here: its mean network must have learnt mean = c.
    draws = np.asarray(post.sample(jax.random.key(1), 4000, context=np.array([0.8, -0.8])), np.float64)
    np.testing.assert_allclose(draws.mean(0), [0.8, -0.8], atol=0.2)


@pytest.mark.parametrize("call, match", [
    (lambda post: post.sample(jax.random.key(0), 5), "context is required"),
    (lambda post: post.sample(jax.random.key(0), 5, context=np.zeros(2)), r"context must have shape \(3,\)"),
    (lambda post: post.sample(jax.random.key(0), 5, context=np.zeros((4, 3))), "context has 4 rows"),
    (lambda post: post.log_prob(np.zeros((5, 2)), context=np.zeros((4, 3))), "context has 4 rows"),
    (lambda post: post.log_prob(np.zeros((5, 2)), context=np.full(3, np.nan)), "context holds 3 NaN"),
    (lambda post: post.given(np.zeros((2, 3))), r"given\(\) takes one context"),
    (lambda post: post.to_arviz(jax.random.key(0), 10, context=np.zeros((10, 3))), "to_arviz takes one context"),
])
def test_context_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call(_forward_fit())


def test_fit_and_fit_samples_refuse_contexts_of_the_wrong_shape_or_kind():
    x = np.random.default_rng(0).normal(size=(50, 2))
    with pytest.raises(ValueError, match=r"context must have shape \(50, context_dim\)"):
        flowvi.fit_samples(x, context=np.zeros((40, 3)), key=jax.random.key(0))
    with pytest.raises(ValueError, match="context holds 1 NaN"):
        flowvi.fit_samples(x, context=np.where(np.arange(50)[:, None] == 3, np.nan, 0.0), key=jax.random.key(0))
    with pytest.raises(ValueError, match="context_dim=2 was given, but context has 3 columns"):
        flowvi.fit_samples(x, context=np.zeros((50, 3)), key=jax.random.key(0), context_dim=2)
    with pytest.raises(ValueError, match=r"contexts must have shape \(m, context_dim\)"):
        flowvi.fit(_amortised_log_density, dim=2, contexts=np.zeros(5), key=jax.random.key(0))
    with pytest.raises(ValueError, match="target.log_density must take"):
        flowvi.fit(lambda x: -jnp.sum(x ** 2), dim=2, contexts=np.zeros((5, 2)), key=jax.random.key(0))
    with pytest.raises(ValueError, match="does not take num_runs > 1"):
        flowvi.fit(_amortised_log_density, dim=2, contexts=np.zeros((5, 2)), key=jax.random.key(0), num_runs=2)
    # An unconditional fit refuses a context rather than ignoring it.
    plain = flowvi.fit_samples(x, key=jax.random.key(0), max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="not conditional"):
        plain.sample(jax.random.key(0), 5, context=np.zeros(3))


CONTEXT_SAMPLES_FILE = '''"""Samples with a context: x0 follows the context, x1 does not."""
import numpy as np

rng = np.random.default_rng(0)
context = rng.normal(size=(400, 1))
samples = np.concatenate([3.0 * context + 0.1 * rng.normal(size=(400, 1)), rng.normal(size=(400, 1))], axis=1)
'''


def test_the_command_line_fits_a_samples_file_with_a_context(tmp_path, capsys):
    from flowvi.cli import main

    path = tmp_path / "conditional_samples.py"
    path.write_text(CONTEXT_SAMPLES_FILE)
    argv = ["fit", str(path), "--out", str(tmp_path / "out"), "--flow", "maf", "--layers", "1", "--hidden", "4",
            "--epochs", "2", "--batch-size", "4096", "--draws", "200", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "given `context` (1-D)" in out and "conditional on a 1-D context" in out
    post = flowvi.load(tmp_path / "out" / "flow.flowvi")
    assert post.context_dim == 1 and post.settings["context_dim"] == 1
    assert (tmp_path / "out" / "posterior.nc").stat().st_size > 0
    (tmp_path / "bad.py").write_text("import numpy as np\ncontext = np.zeros((3, 1))\n"
                                     "samples = np.arange(10.0).reshape(5, 2) ** 2\n")
    assert main(["fit", str(tmp_path / "bad.py"), "--out", str(tmp_path / "bad"), "--no-progress"]) != 0
    assert "`context`: context must have shape (5, context_dim)" in capsys.readouterr().err
