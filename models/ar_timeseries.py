"""Stationary AR(2) time series with a parameter-dependent support (exact likelihood).

    mu    ~ N(0, 10)                          process mean
    sigma ~ HalfNormal(2)                     innovation sd
    phi2  ~ Uniform(-1, 1)
    phi1  ~ Uniform(phi2 - 1, 1 - phi2)       the support of phi1 depends on phi2
    (y_0, y_1) ~ MVN(mu, stationary covariance of the AR(2))
    y_t | y_{t-1}, y_{t-2} ~ N(mu + phi1 (y_{t-1} - mu) + phi2 (y_{t-2} - mu), sigma),  t = 2..299

The pair (phi1, phi2) ranges over the stationarity triangle |phi2| < 1,
phi2 - 1 < phi1 < 1 - phi2 (the prior: phi2 uniform, then phi1 uniform on
its interval given phi2), written as phi1's interval depending on phi2: NumPyro maps phi1 to the real line through a
transform that moves with phi2. The first two observations have the
stationary distribution, variance gamma0 = sigma^2 (1 - phi2) / ((1 + phi2)
((1 - phi2)^2 - phi1^2)) and lag-one covariance gamma1 = gamma0 phi1 / (1 - phi2),
so the likelihood is exact, and it vanishes at the triangle's edges.

The true process is persistent (phi1 + phi2 = 0.95, close to the edge
phi1 + phi2 < 1), so the posterior of (phi1, phi2) presses against the
boundary and mu is weakly identified with a heavy-tailed posterior (its sd
grows like sigma / (1 - phi1 - phi2)). Unconstrained dimension 4.

Data: synthetic, 300 time points simulated at import with
numpy.random.default_rng(20240619) from ``TRUE`` (started from the stationary
distribution). Licence: same as this repository.
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

T = 300
TRUE = {"mu": 5.0, "sigma": 1.0, "phi1": 1.2, "phi2": -0.25}


def stationary_moments(phi1, phi2, sigma):
    """Variance gamma0 and lag-one autocovariance gamma1 of a stationary AR(2)."""
    gamma0 = sigma**2 * (1.0 - phi2) / ((1.0 + phi2) * ((1.0 - phi2) ** 2 - phi1**2))
    return gamma0, gamma0 * phi1 / (1.0 - phi2)


def make_data(seed=20240619, t=T):
    """Return y, (t,) float32, an AR(2) path from ``TRUE`` started in its stationary distribution."""
    rng = np.random.default_rng(seed)
    mu, sigma, phi1, phi2 = (TRUE[k] for k in ("mu", "sigma", "phi1", "phi2"))
    g0, g1 = stationary_moments(phi1, phi2, sigma)
    y = np.empty(t)
    y[:2] = mu + np.linalg.cholesky(np.array([[g0, g1], [g1, g0]])) @ rng.standard_normal(2)
    for i in range(2, t):
        y[i] = mu + phi1 * (y[i - 1] - mu) + phi2 * (y[i - 2] - mu) + sigma * rng.standard_normal()
    return y.astype(np.float32)


y = make_data()


def model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    phi2 = numpyro.sample("phi2", dist.Uniform(-1.0, 1.0))
    phi1 = numpyro.sample("phi1", dist.Uniform(phi2 - 1.0, 1.0 - phi2))
    g0, g1 = stationary_moments(phi1, phi2, sigma)
    cov = jnp.stack([jnp.stack([g0, g1]), jnp.stack([g1, g0])])
    numpyro.sample("y_start", dist.MultivariateNormal(mu * jnp.ones(2), covariance_matrix=cov), obs=y[:2])
    mean = mu + phi1 * (y[1:-1] - mu) + phi2 * (y[:-2] - mu)
    with numpyro.plate("time", jnp.shape(y)[0] - 2):
        numpyro.sample("y_rest", dist.Normal(mean, sigma), obs=y[2:])


args = (y,)
kwargs = {}
