"""NumPyro integration, both directions.

- `NumPyroTarget` (``flowvi.Target.from_numpyro``): a NumPyro model as a flowvi
  target for `flowvi.fit`.
- `AutoFlow`: a flowvi flow as a NumPyro autoguide, for NumPyro's SVI;
  `to_posterior` turns its fit into a `flowvi.Posterior` (diagnostics, ArviZ, NeuTra).

This package is an adapter: nothing in flowvi's core imports it at module level.
"""

from flowvi.numpyro.autoguide import AutoFlow
from flowvi.numpyro.svi_result import to_posterior
from flowvi.numpyro.target import NumPyroTarget, from_numpyro
from flowvi.numpyro.transform import FlowTransform, flow_distribution

__all__ = ["AutoFlow", "FlowTransform", "NumPyroTarget", "flow_distribution", "from_numpyro", "to_posterior"]
