"""NumPyro integration, both directions.

- `NumPyroTarget` (``flowvi.Target.from_numpyro``): a NumPyro model as a flowvi
  target for `flowvi.fit`.
- `AutoFlow`: a flowvi flow as a NumPyro autoguide, for NumPyro's SVI.

This package is an adapter: nothing in flowvi's core imports it at module level.
"""

from flowvi.numpyro.autoguide import AutoFlow
from flowvi.numpyro.target import NumPyroTarget, from_numpyro
from flowvi.numpyro.transform import FlowTransform, flow_distribution

__all__ = ["AutoFlow", "FlowTransform", "NumPyroTarget", "flow_distribution", "from_numpyro"]
