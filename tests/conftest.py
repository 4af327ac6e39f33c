"""Test configuration: CPU, fixed seeds, small problems; shared helpers."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Run a test in float64 (for derivative checks), restoring float32 after."""
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)


def banana_log_density(x):
    """x: (2,) -> scalar; x0 ~ N(0, 1), x1 | x0 ~ N(x0^2, 0.5^2). log Z = log(pi)."""
    return -0.5 * (x[0] ** 2 + (x[1] - x[0] ** 2) ** 2 / 0.25)


BANANA_MEAN = np.array([0.0, 1.0])
BANANA_SD = np.array([1.0, 1.5])  # Var(x1) = Var(x0^2) + 0.25 = 2.25
BANANA_LOG_Z = float(np.log(np.pi))


@jax.jit
def randomize(params, key, scale=0.3):
    """Perturb every leaf so a flow is far from its identity initialisation."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype)
                                        for leaf, k in zip(leaves, keys, strict=True)])


def gaussian_log_density(mean, cov):
    """Normalised Gaussian log density x: (d,) -> scalar."""
    mean, cov = jnp.asarray(mean), jnp.asarray(cov)
    prec = jnp.linalg.inv(cov)
    _, logdet = jnp.linalg.slogdet(cov)
    d = mean.shape[0]

    def log_density(x):
        r = x - mean
        return -0.5 * (r @ prec @ r) - 0.5 * logdet - 0.5 * d * jnp.log(2 * jnp.pi)
    return log_density
