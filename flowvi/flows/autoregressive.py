"""Autoregressive flows with MADE conditioners: IAF (Kingma et al. 2016) and MAF
(Papamakarios et al. 2017), with an affine or rational-quadratic spline transformer.

Odd layers are conjugated by a reversal of the coordinate order, so
consecutive layers condition in opposite directions.
"""

import distrax
import jax
import jax.numpy as jnp

from flowvi.bijectors import LayerScan, MaskedAutoregressive, Reverse
from flowvi.flows.base import (
    Flow,
    affine_transformer,
    elementwise_affine,
    init_elementwise_affine,
    spline_transformer,
    transformed,
    transformer_param_size,
)
from flowvi.nn import apply_mlp, init_mlp, made_masks
from flowvi.validation import check_choice, check_int_tuple, check_positive_float, check_positive_int


def _autoregressive_flow(name: str, dim: int, layers, hidden, transformer: str, bins, bound,
                         invert: bool) -> Flow:
    layers = check_positive_int("layers", layers)
    hidden = check_int_tuple("hidden", hidden)
    check_choice("transformer", transformer, ("affine", "spline"))
    bins = check_positive_int("bins", bins)
    bound = check_positive_float("bound", bound)
    param_size = transformer_param_size(transformer, bins)
    make_transformer = affine_transformer if transformer == "affine" else spline_transformer(bound)
    masks = [jnp.asarray(m) for m in made_masks(dim, hidden, param_size)]
    flips = jnp.arange(layers) % 2 == 1

    def init(key: jax.Array) -> dict:
        keys = jax.random.split(key, layers)
        conditioners = jax.vmap(lambda k: init_mlp(k, (dim, *hidden, dim * param_size)))(keys)
        return {"conditioners": conditioners, "affine": init_elementwise_affine(dim)}

    def make_layer(conditioner_params, flip) -> distrax.Bijector:
        def conditioner(x):
            out = apply_mlp(conditioner_params, x, masks)
            return out.reshape(*out.shape[:-1], dim, param_size)
        autoregressive = MaskedAutoregressive(conditioner, make_transformer, dim)
        if invert:
            autoregressive = distrax.Inverse(autoregressive)
        return distrax.Chain([Reverse(flip), autoregressive, Reverse(flip)])

    def apply(params: dict) -> distrax.Transformed:
        stack = LayerScan(make_layer, params["conditioners"], flips)
        return transformed(dim, distrax.Chain([elementwise_affine(params["affine"]), stack]))

    hyper = (("bins", bins), ("bound", bound), ("hidden", hidden), ("layers", layers),
             ("transformer", transformer))
    return Flow(name, dim, hyper, jax.jit(init), apply, "sequential" if not invert else "one pass")


def iaf(dim: int, layers: int = 4, hidden=(64, 64), transformer: str = "affine", bins: int = 8,
        bound: float = 5.0) -> Flow:
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
    """
    return _autoregressive_flow("iaf", dim, layers, hidden, transformer, bins, bound, invert=False)


def maf(dim: int, layers: int = 4, hidden=(64, 64), transformer: str = "affine", bins: int = 8,
        bound: float = 5.0) -> Flow:
    """Masked autoregressive flow: one pass for ``log_prob``, ``dim`` passes to sample.

    The inverse of `iaf`; the natural choice for forward KL (`flowvi.fit_samples`).
    Arguments as for `iaf`.
    """
    return _autoregressive_flow("maf", dim, layers, hidden, transformer, bins, bound, invert=True)
