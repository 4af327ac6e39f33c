"""Coupling flows: affine (RealNVP, Dinh et al. 2017) and rational-quadratic spline
(neural spline flow, Durkan et al. 2019), built on `distrax.MaskedCoupling`.

Layer k transforms the coordinates with ``(i + k) % 2 == 1`` conditioned on the
others, so consecutive layers alternate and every coordinate is transformed.
"""

from collections.abc import Callable

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from flowvi.flows.base import (
    Flow,
    affine_transformer,
    layered_flow,
    spline_transformer,
    transformer_param_size,
)
from flowvi.nn import apply_mlp, init_mlp
from flowvi.validation import check_int_tuple, check_positive_float, check_positive_int


def _coupling_flow(name: str, dim: int, layers: int, hidden: tuple, param_size: int,
                   transformer: Callable[[jax.Array], distrax.Bijector], hyper: tuple) -> Flow:
    if dim < 2:
        raise ValueError(f"flow={name!r} needs dim >= 2 (coupling splits the coordinates); "
                         f"got dim={dim}. Use 'gaussian' or 'iaf' for dim=1.")
    masks = jnp.asarray(np.stack([(np.arange(dim) + k) % 2 == 0 for k in range(layers)]))

    def make_layer(conditioner_params, mask) -> distrax.Bijector:
        def conditioner(x_masked):
            out = apply_mlp(conditioner_params, x_masked)
            return out.reshape(*out.shape[:-1], dim, param_size)
        return distrax.MaskedCoupling(mask=mask, conditioner=conditioner, bijector=transformer)

    def init_layer(key: jax.Array) -> list[dict]:
        return init_mlp(key, (dim, *hidden, dim * param_size))

    return layered_flow(name, dim, hyper, layers, init_layer, make_layer, masks, "one pass")


def affine_coupling(dim: int, layers: int = 4, hidden=(64, 64)) -> Flow:
    """RealNVP-style affine coupling flow.

    Args:
        dim: event size (>= 2).
        layers: number of coupling layers (alternating masks).
        hidden: conditioner MLP hidden widths.
    """
    layers = check_positive_int("layers", layers)
    hidden = check_int_tuple("hidden", hidden)
    hyper = (("hidden", hidden), ("layers", layers))
    return _coupling_flow("affine_coupling", dim, layers, hidden, 2, affine_transformer, hyper)


def spline_coupling(dim: int, layers: int = 4, hidden=(64, 64), bins: int = 8, bound: float = 5.0) -> Flow:
    """Rational-quadratic spline coupling flow with linear tails outside ``[-bound, bound]``.

    Args:
        dim: event size (>= 2).
        layers: number of coupling layers (alternating masks).
        hidden: conditioner MLP hidden widths.
        bins: spline bins per coordinate.
        bound: half-width of the spline interval; identity outside it.
    """
    layers = check_positive_int("layers", layers)
    hidden = check_int_tuple("hidden", hidden)
    bins = check_positive_int("bins", bins)
    bound = check_positive_float("bound", bound)
    hyper = (("bins", bins), ("bound", bound), ("hidden", hidden), ("layers", layers))
    return _coupling_flow("spline_coupling", dim, layers, hidden, transformer_param_size("spline", bins),
                          spline_transformer(bound), hyper)
