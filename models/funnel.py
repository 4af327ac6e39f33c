"""Neal's funnel in 10 dimensions (Neal 2003, "Slice sampling").

    v   ~ N(0, 3**2)
    x_i | v ~ N(0, exp(v))     (variance exp(v), i.e. sd exp(v/2)), i = 1..9

The parameter vector is x = [v, x_1, ..., x_9]. ``log_density`` is the
*normalised* log density, so log_z = 0.

Exact reference answers (derived analytically):
  mean = 0 for every coordinate
  sd(v)   = 3
  sd(x_i) = sqrt(E[exp(v)]) = sqrt(exp(9/2)) = exp(9/4) ~= 9.4877

Synthetic; no data. Licence: same as this repository.
"""

import jax.numpy as jnp
import numpy as np

dim = 10
names = ["v"] + [f"x{i}" for i in range(1, dim)]

_LOG_2PI = float(np.log(2.0 * np.pi))


def log_density(x):
    """Normalised log density of a (10,) array [v, x_1..x_9]."""
    v = x[0]
    xs = x[1:]
    lp_v = -0.5 * (v / 3.0) ** 2 - jnp.log(3.0) - 0.5 * _LOG_2PI
    # x_i | v ~ N(0, exp(v)): log N = -0.5 x^2 exp(-v) - 0.5 v - 0.5 log(2 pi)
    lp_x = jnp.sum(-0.5 * xs**2 * jnp.exp(-v) - 0.5 * v - 0.5 * _LOG_2PI)
    return lp_v + lp_x


reference = {
    "mean": np.zeros(dim),
    "sd": np.array([3.0] + [float(np.exp(9.0 / 4.0))] * (dim - 1)),
    "log_z": 0.0,
}
