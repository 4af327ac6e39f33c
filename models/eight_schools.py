"""Eight schools, non-centred parameterisation.

    mu          ~ N(0, 5)
    tau         ~ HalfCauchy(5)
    theta_tilde ~ N(0, 1)                         (plate "school", 8)
    theta       = mu + tau * theta_tilde           (deterministic)
    y           ~ N(theta, sigma)                  (plate "school")

Data: estimated effects ``y`` and standard errors ``sigma`` of SAT coaching
programmes in eight schools, from Rubin, D. B. (1981), "Estimation in parallel
randomized experiments", Journal of Educational Statistics 6(4), 377-401
(also Gelman et al., Bayesian Data Analysis, section 5.5). Eight published
summary numbers each, given inline; these are facts from a published paper,
reproduced in many open-source examples (Stan, PyMC, NumPyro), and carry no
licence of their own.
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
        theta_tilde = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_tilde)
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


args = (sigma,)
kwargs = {"y": y}
