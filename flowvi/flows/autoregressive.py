"""Autoregressive flows with MADE conditioners: IAF and MAF, affine or spline transformer.

IAF is Kingma et al. 2016 and MAF Papamakarios et al. 2017; the transformer is an
elementwise affine map or a rational-quadratic spline.

Odd layers are conjugated by a reversal of the coordinate order, so
consecutive layers condition in opposite directions.
"""

import distrax
import jax
import jax.numpy as jnp

from flowvi.bijectors import MaskedAutoregressive, Reverse
from flowvi.flows.base import (
    Flow,
    affine_transformer,
    check_context_dim,
    layered_flow,
    spline_transformer,
    transformer_param_size,
    with_context,
    with_context_dim,
)
from flowvi.nn import apply_mlp, init_mlp, made_masks
from flowvi.validation import (
    check_choice,
    check_int_tuple,
    check_positive_float,
    check_positive_int,
)

TRANSFORMERS = ("affine", "spline")
"""The elementwise transforms an autoregressive layer can use."""


def _autoregressive_flow(name: str, dim: int, layers, hidden, transformer: str, bins, bound,
                         invert: bool, context_dim) -> Flow:
    layers = check_positive_int("layers", layers)
    hidden = check_int_tuple("hidden", hidden)
    check_choice("transformer", transformer, TRANSFORMERS)
    bins = check_positive_int("bins", bins)
    bound = check_positive_float("bound", bound)
    context_dim = check_context_dim(context_dim)
    param_size = transformer_param_size(transformer, bins)
    make_transformer = affine_transformer if transformer == "affine" else spline_transformer(bound)
    masks = [jnp.asarray(m) for m in made_masks(dim, hidden, param_size, context_dim)]
    flips = jnp.arange(layers) % 2 == 1

    def make_layer(conditioner_params, flip, context) -> distrax.Bijector:
        def conditioner(x):
            out = apply_mlp(conditioner_params, with_context(x, context), masks)
            return out.reshape(*out.shape[:-1], dim, param_size)
        autoregressive = MaskedAutoregressive(conditioner, make_transformer, dim)
        if invert:
            autoregressive = distrax.Inverse(autoregressive)
        return distrax.Chain([Reverse(flip), autoregressive, Reverse(flip)])

    def init_layer(key: jax.Array) -> list[dict]:
        return init_mlp(key, (dim + context_dim, *hidden, dim * param_size))

    hyper = with_context_dim((("bins", bins), ("bound", bound), ("hidden", hidden), ("layers", layers),
                              ("transformer", transformer)), context_dim)
    return layered_flow(name, dim, hyper, layers, init_layer, make_layer, flips,
                        "sequential" if not invert else "one pass")


def iaf(dim: int, layers: int = 4, hidden=(64, 64), transformer: str = "affine", bins: int = 8,
        bound: float = 5.0, context_dim: int = 0) -> Flow:
    """Inverse autoregressive flow: one pass to sample and score its own samples.

    ``log_prob`` of an arbitrary point inverts each layer with ``dim``
    sequential conditioner passes. The natural choice for reverse KL.

    Args:
        dim: event size.
        layers: number of autoregressive layers (order reversed between layers).
        hidden: MADE hidden widths.
        transformer: ``"affine"`` or ``"spline"`` (rational-quadratic, linear tails).
        bins: spline bins (spline transformer only).
        bound: spline half-width (spline transformer only).
        context_dim: size of the context of a conditional flow (0: unconditional); the MADE
            conditioners take it as extra inputs that every coordinate may depend on.
    """
    return _autoregressive_flow("iaf", dim, layers, hidden, transformer, bins, bound, False, context_dim)


def maf(dim: int, layers: int = 4, hidden=(64, 64), transformer: str = "affine", bins: int = 8,
        bound: float = 5.0, context_dim: int = 0) -> Flow:
    """Masked autoregressive flow: one pass for ``log_prob``, ``dim`` passes to sample.

    The inverse of `iaf`; the natural choice for forward KL (`flowvi.fit_samples`).
    Arguments as for `iaf`.
    """
    return _autoregressive_flow("maf", dim, layers, hidden, transformer, bins, bound, True, context_dim)
