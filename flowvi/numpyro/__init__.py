"""NumPyro integration: `AutoFlow`, a flowvi flow as a NumPyro autoguide.

``flowvi.Target.from_numpyro`` (in `flowvi.numpyro_target`) is the other
direction: a NumPyro model as a flowvi target for `flowvi.fit`.
"""

from flowvi.numpyro.autoguide import AutoFlow
from flowvi.numpyro.transform import FlowTransform, flow_distribution

__all__ = ["AutoFlow", "FlowTransform", "flow_distribution"]
