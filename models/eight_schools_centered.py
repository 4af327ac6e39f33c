"""Eight schools, centred parameterisation: the classic funnel of hierarchical models.

    mu    ~ N(0, 5)
    tau   ~ HalfCauchy(5)
    theta ~ N(mu, tau)                             (plate "school", 8)
    y     ~ N(theta, sigma)                        (plate "school")

The same posterior as models/eight_schools.py (non-centred), written so that
theta depends on tau directly: for small tau the posterior of (log tau, theta)
is a funnel whose neck plain NUTS cannot enter without divergences. It is the
standard test of samplers on bad geometry, and of NeuTra (``flowvi.neutra``),
which samples it in a fitted flow's base space.

Data: as models/eight_schools.py (Rubin 1981, "Estimation in parallel
randomized experiments", Journal of Educational Statistics 6(4), 377-401;
Gelman et al., Bayesian Data Analysis, section 5.5): eight published summary
numbers each, given inline; facts from a published paper, no licence of their own.
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
sigma = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def model(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", jnp.shape(sigma)[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


args = (sigma,)
kwargs = {"y": y}
