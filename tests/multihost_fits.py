"""The fits that tests/test_multihost.py runs on a two-process mesh and on one device (not a test module)."""

import jax
import jax.numpy as jnp
import numpy as np

import flowvi
from models.banana import log_density as banana


def run_fits(mesh=None) -> dict:
    """Three short fits: MC batch split, runs split, and a subsampled data target; mesh None = one device."""
    rows = np.random.default_rng(0).normal(1.0, 1.0, size=(64, 2)).astype(np.float32)
    data_target = flowvi.Target(log_prior=lambda x: -0.5 * jnp.sum(x ** 2),
                                log_likelihood=lambda x, r: -0.5 * jnp.sum((r - x) ** 2), data=rows, dim=2)
    common = dict(flow="gaussian", steps=10, mesh=mesh, key=jax.random.key(0))
    return {
        "batch": flowvi.fit(banana, dim=2, num_samples=16, **common),
        "runs": flowvi.fit(banana, dim=2, num_samples=8, num_runs=4, **common),
        "data": flowvi.fit(data_target, num_samples=8, subsample=16, **common),
    }
