"""flowvi: normalising-flow variational inference in JAX.

Fit a flow to an unnormalised log density (`fit`, reverse KL) or to samples
(`fit_samples`, forward KL); get a `Posterior` to sample, score, diagnose,
save and load; turn a fit into exact draws with NUTS in its base space (`neutra`).

The adapters (`flowvi.numpyro`, `flowvi.arviz`, `flowvi.plots`, `flowvi.cli`)
load on first use, so ``import flowvi`` does not import NumPyro, ArviZ or
matplotlib. `flowvi.cache.enable()` turns on JAX's persistent compilation cache
(``FLOWVI_CACHE=1`` does so at import; the command line has it on by default).
"""

import importlib

from flowvi import cache, diagnostics, flows
from flowvi._version import __version__
from flowvi.forward_kl import fit_samples
from flowvi.neutra import NeutraResult, neutra
from flowvi.posterior import Posterior, load
from flowvi.reverse_kl import fit
from flowvi.target import Target

_ADAPTERS = ("numpyro", "arviz", "plots", "cli")

if cache.enabled_by_environment():
    cache.enable_or_warn()

__all__ = ["NeutraResult", "Posterior", "Target", "__version__", "arviz", "cache", "diagnostics", "fit",
           "fit_samples", "flows", "load", "neutra", "numpyro", "plots"]


def __getattr__(name: str):
    # The adapters are imported on first attribute access (flowvi.plots, flowvi.numpyro, ...).
    if name in _ADAPTERS:
        return importlib.import_module(f"flowvi.{name}")
    raise AttributeError(f"module 'flowvi' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ADAPTERS))
