"""Flow families. Each is ``family(dim, **hyperparameters) -> Flow``.

==================  =========================================================
name                what
==================  =========================================================
``gaussian``        diagonal or full-rank Gaussian (``covariance="diag"/"full"``)
``affine_coupling`` RealNVP affine coupling layers
``spline_coupling`` rational-quadratic spline coupling (neural spline flow)
``iaf``             inverse autoregressive flow (affine or spline transformer)
``maf``             masked autoregressive flow (the inverse of ``iaf``)
``bnaf``            block neural autoregressive flow (numerical inverse)
==================  =========================================================
"""

from __future__ import annotations

import functools
import inspect

from flowvi.flows.autoregressive import TRANSFORMERS, iaf, maf
from flowvi.flows.base import (
    Flow,
    final_affine,
    has_final_affine,
    invert,
    standardised,
    whitened,
    with_final_affine,
    with_standardisation,
    with_whitening,
)
from flowvi.flows.bnaf import bnaf
from flowvi.flows.coupling import affine_coupling, spline_coupling
from flowvi.flows.gaussian import COVARIANCES, gaussian
from flowvi.validation import check_bool, check_known_options, check_positive_int

FAMILIES = {
    "gaussian": gaussian,
    "affine_coupling": affine_coupling,
    "spline_coupling": spline_coupling,
    "iaf": iaf,
    "maf": maf,
    "bnaf": bnaf,
}


def hyperparameter_names(name: str) -> list[str]:
    """The keyword hyperparameters that family `name` accepts (plus ``inverted``, see `make_flow`)."""
    return [p for p in inspect.signature(FAMILIES[name]).parameters if p != "dim"] + ["inverted"]


CHOICES = {"transformer": TRANSFORMERS, "covariance": COVARIANCES}
"""The valid values of the hyperparameters that take a word."""


def hyperparameter_defaults(name: str) -> dict:
    """The keyword hyperparameters of family `name` with their defaults (``inverted`` included)."""
    params = inspect.signature(FAMILIES[name]).parameters
    return {**{p: v.default for p, v in params.items() if p != "dim"}, "inverted": False}


def _hashable(value):
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    return value


@functools.lru_cache(maxsize=256)
def _cached_family(name: str, dim: int, hyper: tuple) -> Flow:
    # One Flow object per (family, dim, hyperparameters): a later fit with the
    # same configuration then hits JAX's compilation cache.
    options = dict(hyper)
    if options.pop("whitened", False):
        return whitened(_cached_family(name, dim, tuple(sorted(options.items()))))
    if options.pop("standardised", False):
        return standardised(_cached_family(name, dim, tuple(sorted(options.items()))))
    inverted = options.pop("inverted", False)
    flow = FAMILIES[name](dim, **options)
    return invert(flow) if inverted else flow


def make_flow(flow: str | Flow, dim: int, **hyperparameters) -> Flow:
    """Resolve a family name (plus hyperparameters) or a ready `Flow` for event size `dim`.

    Every family also takes ``inverted=True``, which swaps its directions (see
    `flowvi.flows.base.invert`): e.g. ``make_flow("bnaf", 2, inverted=True)`` is a
    BNAF whose density is one pass and whose sampling is numerical; and
    ``standardised=True``, a fixed data affine map after it (`flowvi.flows.base.standardised`,
    how `flowvi.fit_samples` returns its fits); and ``whitened=True``, a fixed full-rank affine map
    after it (`flowvi.flows.base.whitened`, how `flowvi.fit` starts from a Gaussian approximation).

    Raises:
        ValueError: unknown family name (the valid ones are listed), or a `Flow`
            whose ``dim`` differs from `dim`.
        TypeError: unknown hyperparameter names (the valid ones are listed).
    """
    dim = check_positive_int("dim", dim)
    if isinstance(flow, Flow):
        if hyperparameters:
            raise TypeError(f"flow hyperparameters {sorted(hyperparameters)} were given with a ready Flow; "
                            "pass them to the family function instead.")
        if flow.dim != dim:
            raise ValueError(f"flow has dim={flow.dim} but the target has dim={dim}.")
        return flow
    if not isinstance(flow, str) or flow not in FAMILIES:
        raise ValueError(f"flow={flow!r} is not a known flow family; expected one of "
                         f"{', '.join(map(repr, FAMILIES))} or a flowvi.flows.Flow.")
    check_known_options(f"hyperparameter(s) for flow={flow!r}:", hyperparameters,
                        [*hyperparameter_names(flow), "standardised", "whitened"])
    hyper = tuple(sorted((k, _hashable(v)) for k, v in hyperparameters.items()))
    check_bool("inverted", hyperparameters.get("inverted", False))
    check_bool("standardised", hyperparameters.get("standardised", False))
    check_bool("whitened", hyperparameters.get("whitened", False))
    return _cached_family(flow, dim, hyper)


def default_family(dim: int) -> str:
    """The family used when none is given: spline coupling, or a spline IAF in one dimension."""
    return "spline_coupling" if dim >= 2 else "iaf"


def resolve_flow(flow: str | Flow | None, dim: int, hyperparameters: dict, options: tuple[str, ...]) -> Flow:
    """Build the Flow of a fit; unknown keyword names get one error listing `options` and the hyperparameters.

    Args:
        flow: a family name, a ready `Flow`, or None for `default_family`.
        dim: event size.
        hyperparameters: the fit's leftover keyword arguments.
        options: the fit's own option names (for the error message).
    """
    name = default_family(dim) if flow is None else flow
    if isinstance(name, str) and name in FAMILIES:
        unknown = sorted(set(hyperparameters) - set(hyperparameter_names(name)))
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(map(repr, unknown))}. Options are "
                            f"{', '.join(options)}; hyperparameters of flow={name!r} are "
                            f"{', '.join(hyperparameter_names(name))}.")
    return make_flow(name, dim, **hyperparameters)


__all__ = ["CHOICES", "FAMILIES", "Flow", "affine_coupling", "bnaf", "default_family", "final_affine", "gaussian",
           "has_final_affine", "hyperparameter_defaults", "hyperparameter_names", "iaf", "invert", "maf", "make_flow",
           "resolve_flow", "spline_coupling", "standardised", "whitened", "with_final_affine", "with_standardisation",
           "with_whitening"]
