"""A small model whose parameters live on four different constrained spaces,
for testing the unconstrained <-> constrained bijections:

    sigma ~ HalfNormal(2)                 positive scale
    p     ~ Beta(2, 2)                    unit interval
    w     ~ Dirichlet([1, 1, 1])          3-simplex
    L     ~ LKJCholesky(3, 2)             Cholesky factor of a 3x3 correlation
    corr  = L L^T                         (deterministic)
    cov   = sigma^2 corr                  (deterministic)

    y_n    ~ MVN(0, sigma^2 corr)         n = 1..50   (plate "mvn")
    cat_m  ~ Categorical(w)               m = 1..40   (plate "cat")
    flip_k ~ Bernoulli(p)                 k = 1..30   (plate "flip")

Unconstrained dimension: 1 + 1 + 2 + 3 = 7.

Data: synthetic, generated deterministically at import with
numpy.random.default_rng(20240601) from the true values TRUE below.
Licence: same as this repository.
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

TRUE = {
    "sigma": 1.5,
    "p": 0.3,
    "w": np.array([0.2, 0.3, 0.5]),
    "corr": np.array([[1.0, 0.5, -0.3], [0.5, 1.0, 0.2], [-0.3, 0.2, 1.0]]),
}
N_MVN, N_CAT, N_FLIP = 50, 40, 30


def make_data(seed=20240601):
    """Return dict(y=(50, 3) float32, cats=(40,) int32, flips=(30,) float32)."""
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(TRUE["corr"])
    y = TRUE["sigma"] * rng.standard_normal((N_MVN, 3)) @ chol.T
    cats = rng.choice(3, size=N_CAT, p=TRUE["w"])
    flips = rng.uniform(size=N_FLIP) < TRUE["p"]
    return {
        "y": y.astype(np.float32),
        "cats": cats.astype(np.int32),
        "flips": flips.astype(np.float32),
    }


data = make_data()


def model(y=None, cats=None, flips=None, sizes=(N_MVN, N_CAT, N_FLIP)):
    n_mvn = sizes[0] if y is None else jnp.shape(y)[0]
    n_cat = sizes[1] if cats is None else jnp.shape(cats)[0]
    n_flip = sizes[2] if flips is None else jnp.shape(flips)[0]
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    p = numpyro.sample("p", dist.Beta(2.0, 2.0))
    w = numpyro.sample("w", dist.Dirichlet(jnp.ones(3)))
    L = numpyro.sample("L", dist.LKJCholesky(3, concentration=2.0))
    corr = numpyro.deterministic("corr", L @ L.T)
    numpyro.deterministic("cov", sigma**2 * corr)
    with numpyro.plate("mvn", n_mvn):
        numpyro.sample(
            "y", dist.MultivariateNormal(jnp.zeros(3), scale_tril=sigma * L), obs=y
        )
    with numpyro.plate("cat", n_cat):
        numpyro.sample("cats", dist.Categorical(probs=w), obs=cats)
    with numpyro.plate("flip", n_flip):
        numpyro.sample("flips", dist.Bernoulli(probs=p), obs=flips)


args = ()
kwargs = dict(data)
