"""Two-dimensional "banana" density (a curved Gaussian).

    x0 ~ N(0, 1),    x1 | x0 ~ N(x0**2, 0.5**2)

``log_density`` is the *unnormalised* log density

    log p(x) = -0.5 * (x0**2 + (x1 - x0**2)**2 / 0.25)

so its normaliser is Z = sqrt(2*pi) * sqrt(2*pi*0.25) = 2*pi*0.5 = pi.

Exact reference answers (derived analytically):
  mean = [0, 1]              (E[x1] = E[x0**2] = 1)
  sd   = [1, 1.5]            (Var[x1] = Var[x0**2] + 0.25 = 2 + 0.25)
  log_z = log(pi)

Synthetic; no data. Licence: same as this repository.
"""

import numpy as np

dim = 2
names = ["x0", "x1"]


def log_density(x):
    """Unnormalised log density of a (2,) array."""
    return -0.5 * (x[0] ** 2 + (x[1] - x[0] ** 2) ** 2 / 0.25)


reference = {
    "mean": np.array([0.0, 1.0]),
    "sd": np.array([1.0, 1.5]),
    "log_z": float(np.log(2.0 * np.pi * 0.5)),
}
