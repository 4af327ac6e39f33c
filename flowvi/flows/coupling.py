"""Coupling flows on `distrax.SplitCoupling`: affine and rational-quadratic spline.

Affine is RealNVP (Dinh et al. 2017); spline is the neural spline flow (Durkan
et al. 2019).

With ``h = dim // 2``, even layers transform ``x[h:]`` conditioned on ``x[:h]``;
odd layers are conjugated by a reversal, so they transform ``x[:dim - h]``
conditioned on the rest. Consecutive layers alternate, every coordinate is
transformed, and no net permutation is left over. Splitting (rather than masking)
evaluates the conditioner's outputs and the transformer only for the coordinates
that change, half the work of a masked coupling.
"""

from collections.abc import Callable

import distrax
import jax
import jax.numpy as jnp

from flowvi.bijectors import Reverse
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
    split = dim // 2
    changed = dim - split
    flips = jnp.arange(layers) % 2 == 1

    def make_layer(conditioner_params, flip) -> distrax.Bijector:
        def conditioner(x_kept):
            out = apply_mlp(conditioner_params, x_kept)
            return out.reshape(*out.shape[:-1], changed, param_size)
        coupling = distrax.SplitCoupling(split, 1, conditioner, transformer)
        return distrax.Chain([Reverse(flip), coupling, Reverse(flip)])

    def init_layer(key: jax.Array) -> list[dict]:
        return init_mlp(key, (split, *hidden, changed * param_size))

    return layered_flow(name, dim, hyper, layers, init_layer, make_layer, flips, "one pass")


def affine_coupling(dim: int, layers: int = 4, hidden=(64, 64)) -> Flow:
    """RealNVP-style affine coupling flow.

    Args:
        dim: event size (>= 2).
        layers: number of coupling layers (alternating halves).
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
        layers: number of coupling layers (alternating halves).
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
