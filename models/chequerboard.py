"""Chequerboard: uniform density on alternate squares of a 4x4 board on
[-4, 4]^2 (squares of side 2). Square (i, j), with i = floor((x0 + 4) / 2)
and j = floor((x1 + 4) / 2) in 0..3, is occupied when (i + j) is even.
8 occupied squares of area 4 give total area 32, so the density is 1/32 on
the occupied squares and 0 elsewhere.

This is a *samples* model: ``samples`` (100,000 x 2, float32) are drawn
deterministically at import with ``make_samples(100_000, seed=0)`` (numpy's
default_rng) and are fitted by forward KL (density estimation).
``log_density_true`` gives the exact log density for evaluating a fit.

Exact reference answers: each marginal is uniform on [-4, 4], so
mean = [0, 0] and sd = 8 / sqrt(12) = 4 / sqrt(3) ~= 2.3094.

Synthetic; no data. Licence: same as this repository.
"""

import jax.numpy as jnp
import numpy as np

HALF_WIDTH = 4.0
SQUARE = 2.0
LOG_DENSITY_ON = float(np.log(1.0 / 32.0))

# lower-left corners of the 8 occupied squares
_ij = np.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0])
_CORNERS = -HALF_WIDTH + SQUARE * _ij.astype(np.float64)


def make_samples(n, seed=0):
    """Draw n points uniformly from the occupied squares; returns (n, 2) float32."""
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(_CORNERS), size=n)
    offsets = rng.uniform(0.0, SQUARE, size=(n, 2))
    return (_CORNERS[which] + offsets).astype(np.float32)


def log_density_true(x):
    """Exact log density of a (2,) point (or (..., 2) batch): log(1/32) on the
    occupied squares, -inf elsewhere."""
    x = jnp.asarray(x)
    inside = jnp.all(jnp.abs(x) < HALF_WIDTH, axis=-1)
    ij = jnp.floor((x + HALF_WIDTH) / SQUARE).astype(jnp.int32)
    occupied = (jnp.sum(ij, axis=-1) % 2) == 0
    return jnp.where(inside & occupied, LOG_DENSITY_ON, -jnp.inf)


samples = make_samples(100_000, seed=0)

reference = {
    "mean": np.zeros(2),
    "sd": np.full(2, 4.0 / np.sqrt(3.0)),
}
