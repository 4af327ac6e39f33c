"""Badly scaled, correlated linear regression: uncentred predictors in different units.

    alpha   ~ N(0, 1e6)                       intercept
    beta_j  ~ N(0, 1e6),   j = 1..25          coefficients, one per predictor (natural units)
    sigma   ~ HalfNormal(1e4)
    y_n     ~ N(alpha + X_n . beta, sigma)    (plate "data", 5000)

The kind of regression a user fits on raw data (prices in dollars against
measurements in mixed units, none of them centred or standardised). The 25
predictors have sds log-spaced from 0.01 to 1000 (shuffled) and coefficients
of variation (sd / mean) log-uniform in [0.01, 0.5], so their means run from
about 0.04 to 2e4; neighbouring predictors are correlated (0.8^|i-j|), and the
last one is predictor 0 measured again in other units (x 2.54, with its own
measurement error; correlation 0.999 with predictor 0). Unconstrained
dimension 27 (alpha, 25 betas, log sigma).

Measured on the posterior (Gaussian, conditional on sigma at its true value,
computed in float64 from these data; `tests/test_models_files.py` checks it):
posterior sds from 0.031 to 3.1e3 (five orders of magnitude), max |corr| 0.9971
(beta[0] against beta[24], predictor 0 and its duplicate; the intercept's
largest |corr| is 0.49), and the posterior correlation matrix has condition
number 1.9e6.
With the brief's literal design (means 100-1000 with sds down to 0.01,
coefficients of variation down to 1e-5) the intercept's correlations reach
1 - 5e-9 and the condition number 1e10, beyond what float32 (JAX's default)
can represent: no float32 sampler or optimiser could be scored on it. NUTS
needs a dense mass matrix here.

Data: synthetic, generated at import with numpy.random.default_rng(20240618)
from the true values below (``alpha_true``, ``beta_true``, ``SIGMA_TRUE``);
stored as float32 so that float32 and float64 runs see the same numbers.
Licence: same as this repository.
"""

import numpy as np
import numpyro
import numpyro.distributions as dist

N, K = 5000, 25
SIGMA_TRUE = 1000.0
SEED = 20240618


def make_data(seed=SEED):
    """Return (X (N, K) float32, y (N,) float32, alpha_true, beta_true (K,))."""
    rng = np.random.default_rng(seed)
    kb = K - 1
    sds = 10.0 ** np.linspace(-2.0, 3.0, kb)
    rng.shuffle(sds)
    cv = 10.0 ** rng.uniform(np.log10(0.01), np.log10(0.5), kb)
    means = sds / cv
    corr = 0.8 ** np.abs(np.subtract.outer(np.arange(kb), np.arange(kb)))
    u = rng.standard_normal((N, kb)) @ np.linalg.cholesky(corr).T
    x = means + sds * u
    again = 2.54 * (x[:, 0] + np.sqrt(1.0 / 0.999**2 - 1.0) * sds[0] * rng.standard_normal(N))
    X = np.column_stack([x, again]).astype(np.float32).astype(np.float64)
    beta = 300.0 * rng.standard_normal(K) / X.std(axis=0)  # each predictor moves y by ~300 per sd
    alpha = 3000.0 - float(X.mean(axis=0) @ beta)
    y = alpha + X @ beta + SIGMA_TRUE * rng.standard_normal(N)
    return X.astype(np.float32), y.astype(np.float32), alpha, beta


X, y, alpha_true, beta_true = make_data()


def model(X, y=None):
    n, k = X.shape
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 1e6))
    beta = numpyro.sample("beta", dist.Normal(np.zeros(k, np.float32), 1e6).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1e4))
    with numpyro.plate("data", n):
        numpyro.sample("obs", dist.Normal(alpha + X @ beta, sigma), obs=y)


args = (X,)
kwargs = {"y": y}
