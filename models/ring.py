"""Ring of eight Gaussians: an equal-weight mixture of 8 isotropic 2-D
Gaussians with sd 0.5, centred at radius 4 on angles 2*pi*k/8, k = 0..7.

``log_density`` is the *normalised* mixture log density (computed with
logsumexp), so log_z = 0. The modes are well separated (distance between
neighbouring centres 2*4*sin(pi/8) ~= 3.06, about 6 sd), which makes this a
mode-covering test.

Exact reference answers (derived analytically):
  mean = [0, 0]
  Var per coordinate = E[(4 cos t)^2] + 0.5^2 = 16/2 + 0.25 = 8.25,
  so sd = sqrt(8.25) ~= 2.8723 for both coordinates (covariance is diagonal).

Synthetic; no data. Licence: same as this repository.
"""

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

dim = 2
names = ["x0", "x1"]

N_COMPONENTS = 8
RADIUS = 4.0
SCALE = 0.5
_angles = 2.0 * np.pi * np.arange(N_COMPONENTS) / N_COMPONENTS
CENTRES = np.stack([RADIUS * np.cos(_angles), RADIUS * np.sin(_angles)], axis=1)
_LOG_NORM = float(-np.log(2.0 * np.pi * SCALE**2) - np.log(N_COMPONENTS))


def log_density(x):
    """Normalised log density of a (2,) array."""
    sq = jnp.sum((x[None, :] - CENTRES) ** 2, axis=1)
    return logsumexp(-0.5 * sq / SCALE**2) + _LOG_NORM


reference = {
    "mean": np.zeros(dim),
    "sd": np.full(dim, float(np.sqrt(RADIUS**2 / 2.0 + SCALE**2))),
    "log_z": 0.0,
}
