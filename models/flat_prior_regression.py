"""Linear regression with flat improper priors, as many published models are written.

    alpha  ~ ImproperUniform(real)                      p(alpha) = 1 on the real line
    beta   ~ ImproperUniform(real_vector, event (3,))   p(beta) = 1 on R^3
    sigma  ~ ImproperUniform(positive)                  p(sigma) = 1 on (0, inf)
    y_n    ~ N(alpha + X_n . beta, sigma)                (plate "data", 120)

A Stan program that declares its parameters and gives no prior statement
means exactly this; posteriordb has several (the ``kidiq`` and ``earnings``
regressions, for instance). The predictors are in their natural, uncentred
units, in the manner of the kid-IQ data (Gelman and Hill 2007): the mother's
IQ (mean about 100, sd 15), her age (about 23, sd 3) and whether she finished
high school (0/1); the intercept's posterior correlations with the IQ and
age slopes are -0.62 and -0.75.

The posterior is proper (N = 120 > 4 coefficients + 1) and known exactly,
with p = 4 coefficients (alpha, beta), least-squares fit b_hat, residual sum of
squares RSS and A = [1, X]:
  (alpha, beta) ~ multivariate t, nu = N - p - 1 = 115 degrees of freedom,
                  location b_hat, scale matrix RSS / nu (A^T A)^-1;
  sigma^2       ~ InverseGamma((N - p - 1) / 2, RSS / 2)
(flat prior on sigma itself, not on log sigma). Unconstrained dimension 5.

Data: synthetic, 120 rows simulated at import with
numpy.random.default_rng(20240621) from ``TRUE``. Licence: same as this repository.
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

N = 120
TRUE = {"alpha": 20.0, "beta": np.array([0.6, 0.4, 5.0]), "sigma": 18.0}


def make_data(seed=20240621, n=N):
    """Return (X (n, 3) float32: mom_iq, mom_age, mom_hs; y (n,) float32)."""
    rng = np.random.default_rng(seed)
    mom_iq = rng.normal(100.0, 15.0, n)
    mom_age = np.round(rng.normal(23.0, 3.0, n))
    mom_hs = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-(mom_iq - 90.0) / 10.0))).astype(float)
    X = np.column_stack([mom_iq, mom_age, mom_hs])
    y = TRUE["alpha"] + X @ TRUE["beta"] + TRUE["sigma"] * rng.standard_normal(n)
    return X.astype(np.float32), y.astype(np.float32)


X, y = make_data()


def _log_gamma(z):
    """log Gamma(z) by Stirling's series; error below 1e-10 for z >= 10."""
    if z < 10:
        raise ValueError(f"z must be at least 10 for this series, got {z}")
    return ((z - 0.5) * np.log(z) - z + 0.5 * np.log(2.0 * np.pi) + 1.0 / (12.0 * z) - 1.0 / (360.0 * z**3)
            + 1.0 / (1260.0 * z**5))


def exact_posterior(X=X, y=y):
    """The exact posterior's moments (float64): dict of mean and sd for alpha, beta (3,), sigma."""
    A = np.column_stack([np.ones(len(y)), np.asarray(X, np.float64)])
    yy = np.asarray(y, np.float64)
    b_hat, *_ = np.linalg.lstsq(A, yy, rcond=None)
    rss = float(np.sum((yy - A @ b_hat) ** 2))
    n, p = A.shape
    nu = n - p - 1
    sd_b = np.sqrt(np.diag(np.linalg.inv(A.T @ A)) * rss / (nu - 2))  # t covariance: scale * nu / (nu - 2)
    a, b = nu / 2.0, rss / 2.0  # sigma^2 ~ InverseGamma(a, b)
    e_sigma = np.sqrt(b) * np.exp(_log_gamma(a - 0.5) - _log_gamma(a))
    sd_sigma = np.sqrt(b / (a - 1.0) - e_sigma**2)
    return {"alpha": (b_hat[0], sd_b[0]), "beta": (b_hat[1:], sd_b[1:]), "sigma": (e_sigma, sd_sigma)}


def model(X, y=None):
    k = jnp.shape(X)[1]
    alpha = numpyro.sample("alpha", dist.ImproperUniform(constraints.real, (), ()))
    beta = numpyro.sample("beta", dist.ImproperUniform(constraints.real_vector, (), (k,)))
    sigma = numpyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
    with numpyro.plate("data", jnp.shape(X)[0]):
        numpyro.sample("obs", dist.Normal(alpha + X @ beta, sigma), obs=y)


args = (X,)
kwargs = {"y": y}
