"""flowvi: normalising-flow variational inference in JAX.

Fit a flow to an unnormalised log density (`fit`, reverse KL) or to samples
(`fit_samples`, forward KL); get a `Posterior` to sample, score, save and load.
"""

__version__ = "0.2.0"

from flowvi import diagnostics, flows, plots
from flowvi.fit import fit
from flowvi.fit_samples import fit_samples
from flowvi.io import load
from flowvi.posterior import Posterior
from flowvi.target import Target

__all__ = ["Posterior", "Target", "__version__", "diagnostics", "fit", "fit_samples", "flows", "load", "numpyro", "plots"]


def __getattr__(name: str):
    # `flowvi.numpyro` (the AutoFlow guide) is imported on first use, so plain
    # `import flowvi` stays light.
    if name == "numpyro":
        import importlib

        return importlib.import_module("flowvi.numpyro")
    raise AttributeError(f"module 'flowvi' has no attribute {name!r}")
