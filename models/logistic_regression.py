"""Bayesian logistic regression: sex of Palmer penguins from body measurements.

Outcome: sex (1 = male, 0 = female). Predictors (6, each standardised to mean 0,
sd 1): bill length, bill depth, flipper length, body mass, and indicators for
species Chinstrap and Gentoo (Adelie is the baseline). Rows with any missing
value are dropped, leaving 333 of 344 penguins.

    alpha  ~ N(0, 2.5)
    beta_j ~ N(0, 2.5),  j = 1..6       (weakly informative on the standardised scale)
    y_n    ~ Bernoulli(logit^-1(alpha + X_n . beta))     (plate "data", 333)

The likelihood sits in a ``numpyro.plate("data", N)`` with ``numpyro.subsample``
on X and y, so the plate can be subsampled (pass ``subsample_size`` or use a
handler). The classes are not separable, so the posterior is proper; several
coefficients are strongly correlated (body mass with species).

Data: models/data/penguins.csv, an unmodified copy of the ``penguins.csv`` file
shipped in the Python package ``palmerpenguins`` 0.1.6 (package code MIT). Data
collected by Dr. Kristen Gorman and the Palmer Station Long Term Ecological
Research Program; Gorman KB, Williams TD, Fraser WR (2014), PLoS ONE 9(3):
e90081; Horst AM, Hill AP, Gorman KB (2020), palmerpenguins R package.
Licence of the data: CC0 1.0 (public domain dedication).
"""

import pathlib

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

DATA_FILE = pathlib.Path(__file__).parent / "data" / "penguins.csv"
PREDICTORS = [
    "bill_length_mm",
    "bill_depth_mm",
    "flipper_length_mm",
    "body_mass_g",
    "species_chinstrap",
    "species_gentoo",
]


def load_data(path=DATA_FILE):
    """Return (X, y, X_mean, X_sd): X standardised (N, 6) float32, y (N,) float32."""
    raw = np.loadtxt(path, delimiter=",", dtype=str)
    header, rows = list(raw[0]), raw[1:]
    rows = rows[~np.any(rows == "NA", axis=1)]
    col = {name: rows[:, header.index(name)] for name in header}
    species = col["species"]
    X = np.column_stack(
        [
            col["bill_length_mm"].astype(float),
            col["bill_depth_mm"].astype(float),
            col["flipper_length_mm"].astype(float),
            col["body_mass_g"].astype(float),
            (species == "Chinstrap").astype(float),
            (species == "Gentoo").astype(float),
        ]
    )
    y = (col["sex"] == "male").astype(np.float32)
    X_mean, X_sd = X.mean(axis=0), X.std(axis=0)
    X = ((X - X_mean) / X_sd).astype(np.float32)
    return X, y, X_mean, X_sd


X, y, X_mean, X_sd = load_data()


def model(X, y=None, subsample_size=None):
    n, p = jnp.shape(X)
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 2.5))
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(p), 2.5).to_event(1))
    with numpyro.plate("data", n, subsample_size=subsample_size):
        X_batch = numpyro.subsample(X, event_dim=1)
        y_batch = None if y is None else numpyro.subsample(y, event_dim=0)
        numpyro.sample("obs", dist.Bernoulli(logits=alpha + X_batch @ beta), obs=y_batch)


args = (X,)
kwargs = {"y": y}
