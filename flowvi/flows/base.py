"""The `Flow` type shared by every family, and the pieces every family uses."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from flowvi.bijectors import LayerScan, Orthogonal, RationalQuadraticSpline

# Lower bound on every learned scale: keeps log-determinants finite.
SCALE_FLOOR = 1e-3
# Raw value 0 maps to scale 1: softplus(0 + _SHIFT) + SCALE_FLOOR == 1.
_SHIFT = float(np.log(np.expm1(1.0 - SCALE_FLOOR)))


class Flow(NamedTuple):
    """A flow family instance: pure functions over a parameter pytree.

    Attributes:
        name: family name, e.g. ``"spline_coupling"``.
        dim: event size.
        hyperparameters: sorted ``(name, value)`` pairs (hashable; see `options`).
        init: ``key -> params``; the untrained flow is its base distribution.
        apply: ``(params, context=None) -> distrax.Transformed`` over a standard
            normal base. A conditional flow (``context_dim > 0``) takes the
            context ``(..., context_dim)`` here, never in its parameters: its
            batch axes broadcast against those of the points the distribution
            is evaluated at (``(context_dim,)`` for all of them, or one context
            per point, for ``log_prob`` and the bijector's maps; distrax's
            ``sample`` draws point by point, so it takes one context); an
            unconditional one ignores it.
        inverse_cost: ``"one pass"``, ``"sequential"`` (``dim`` passes) or
            ``"numerical"`` (root finding): the cost of ``log_prob`` at an
            arbitrary point.
        sample_cost: the same for sampling (``"one pass"`` unless inverted).
    """

    name: str
    dim: int
    hyperparameters: tuple
    init: Callable[[jax.Array], Any]
    apply: Callable[[Any], distrax.Transformed]
    inverse_cost: str
    sample_cost: str = "one pass"

    @property
    def options(self) -> dict:
        """The hyperparameters as a dict (the keyword arguments of the family)."""
        return dict(self.hyperparameters)

    @property
    def context_dim(self) -> int:
        """Size of the context a conditional flow takes (0: unconditional)."""
        return int(self.options.get("context_dim", 0))

    def num_params(self) -> int:
        """Number of trainable scalars."""
        shapes = jax.eval_shape(self.init, jax.random.key(0))
        return int(sum(np.prod(s.shape) for s in jax.tree.leaves(shapes)))


def layered_flow(name: str, dim: int, hyperparameters: tuple, num_layers: int,
                 init_layer: Callable[[jax.Array], Any],
                 make_layer: Callable[[Any, Any, jax.Array | None], distrax.Bijector],
                 consts: Any, inverse_cost: str) -> Flow:
    """A flow of `num_layers` stacked layers (scanned) followed by a learnable elementwise affine map.

    Args:
        name: family name.
        dim: event size.
        hyperparameters: sorted ``(name, value)`` pairs.
        num_layers: number of stacked layers.
        init_layer: ``key -> layer params`` (identity at init); vmapped over layers.
        make_layer: ``(layer params, layer consts, context) -> distrax.Bijector``; the
            context is None for an unconditional flow.
        consts: non-trainable per-layer arrays (leading axis `num_layers`).
        inverse_cost: cost of ``log_prob`` at an arbitrary point (see `Flow`).

    Params are ``{"layers": stacked layer params, "affine": elementwise affine}``.
    """
    def init(key: jax.Array) -> dict:
        layers = jax.vmap(init_layer)(jax.random.split(key, num_layers))
        return {"layers": layers, "affine": init_elementwise_affine(dim)}

    context_dim = dict(hyperparameters).get("context_dim", 0)

    def apply(params: dict, context: jax.Array | None = None) -> distrax.Transformed:
        context = context_for(name, context_dim, context)
        stack = LayerScan(lambda layer, const: make_layer(layer, const, context), params["layers"], consts)
        return transformed(dim, distrax.Chain([elementwise_affine(params["affine"]), stack]))

    return Flow(name, dim, hyperparameters, jax.jit(init), apply, inverse_cost)


def check_context_dim(context_dim) -> int:
    """`context_dim` as an int >= 0 (0: an unconditional flow)."""
    if isinstance(context_dim, bool) or not isinstance(context_dim, int | np.integer) or context_dim < 0:
        raise ValueError(f"context_dim must be an int >= 0 (the size of the context; 0 for an unconditional "
                         f"flow), got {context_dim!r}.")
    return int(context_dim)


def with_context_dim(hyperparameters: tuple, context_dim: int) -> tuple:
    """A family's sorted ``(name, value)`` pairs, with ``("context_dim", k)`` for a conditional one.

    An unconditional family's pairs are left as they were before flows took contexts,
    so its saved files and compilation caches are unchanged.
    """
    extra = (("context_dim", context_dim),) if context_dim else ()
    return tuple(sorted(tuple(hyperparameters) + extra))


def context_for(name: str, context_dim: int, context):
    """The context a family's ``apply`` passes to its conditioners: None for an unconditional flow.

    Raises:
        ValueError: a conditional flow without a context, or a context whose last axis is not `context_dim`.
    """
    if not context_dim:
        return None
    if context is None:
        raise ValueError(f"flow={name!r} is conditional (context_dim={context_dim}): pass a context of shape "
                         f"({context_dim},) or (n, {context_dim}).")
    context = jnp.asarray(context, jnp.result_type(float))
    if context.shape[-1:] != (context_dim,):
        raise ValueError(f"context must have last axis context_dim={context_dim}, got shape {context.shape}.")
    return context


def with_context(h: jax.Array, context: jax.Array | None) -> jax.Array:
    """A conditioner's input ``h: (..., n)`` with the context appended: ``(..., n + context_dim)``.

    ``context: (context_dim,)`` or with batch axes that broadcast to ``h``'s; None leaves ``h`` as it is.
    """
    if context is None:
        return h
    context = jnp.broadcast_to(context.astype(h.dtype), h.shape[:-1] + context.shape[-1:])
    return jnp.concatenate([h, context], axis=-1)


def invert(flow: Flow) -> Flow:
    """The same family with its directions swapped: ``x = T^{-1}(u)``.

    The density of an arbitrary point then costs one pass and sampling costs
    what ``log_prob`` cost before. This is how `flowvi.fit_samples` orients
    ``iaf`` and ``bnaf`` (data to noise, as in the BNAF paper's density
    estimation). The parameters are the same pytree.
    """
    if flow.options.get("whitened", False):
        raise ValueError("invert a flow before whitening it.")
    if flow.options.get("standardised", False):
        raise ValueError("invert a flow before standardising it: invert(standardised(f)) would put the fixed "
                         "data affine on the noise side.")

    def apply(params, context: jax.Array | None = None) -> distrax.Transformed:
        return transformed(flow.dim, distrax.Inverse(flow.apply(params, context).bijector))

    hyper = tuple(sorted(dict(flow.hyperparameters, inverted=True).items()))
    return Flow(flow.name, flow.dim, hyper, flow.init, apply, flow.sample_cost, flow.inverse_cost)


@functools.lru_cache(maxsize=256)
def standardised(flow: Flow) -> Flow:
    """`flow` followed by a fixed elementwise affine map ``x = loc + scale * y``: a flow fitted to standardised data.

    `flowvi.fit_samples` fits `flow` to ``z = (data - mean) / sd`` and returns this
    flow, with ``loc = mean`` and ``scale = sd`` (`with_standardisation`). The
    fixed map is outside the learned layers, so any finite positive scale works
    (the learned scales are floored at `SCALE_FLOOR`), in either orientation of
    `flow` (the map is on the data side either way), and the untrained flow has
    the data's mean and sd. ``loc`` and ``scale`` are parameters only to be stored
    with the fit; they are constants to gradients (``stop_gradient``).

    Params are ``{"flow": flow's params, "data": {"loc": (dim,), "scale": (dim,)}}``;
    `init` gives loc 0 and scale 1. A conditional `flow` also standardises its
    context: ``"context": {"loc": (context_dim,), "scale": (context_dim,)}``, and
    the inner flow sees ``(context - loc) / scale``. The family name stays the same and the
    hyperparameters gain ``standardised=True`` (so ``make_flow`` rebuilds it).
    """
    if flow.options.get("standardised", False):
        raise ValueError("the flow is already standardised.")
    dim = flow.dim

    context_dim = flow.context_dim

    def init(key: jax.Array) -> dict:
        params = {"flow": flow.init(key), "data": {"loc": jnp.zeros(dim), "scale": jnp.ones(dim)}}
        if context_dim:
            params["context"] = {"loc": jnp.zeros(context_dim), "scale": jnp.ones(context_dim)}
        return params

    def apply(params: dict, context: jax.Array | None = None) -> distrax.Transformed:
        data = jax.lax.stop_gradient(params["data"])
        fixed = distrax.Block(distrax.ScalarAffine(shift=data["loc"], scale=data["scale"]), 1)
        if context_dim and context is not None:
            c = jax.lax.stop_gradient(params["context"])
            context = (context - c["loc"]) / c["scale"]
        return transformed(dim, distrax.Chain([fixed, flow.apply(params["flow"], context).bijector]))

    hyper = tuple(sorted(dict(flow.hyperparameters, standardised=True).items()))
    return Flow(flow.name, dim, hyper, jax.jit(init), apply, flow.inverse_cost, flow.sample_cost)


def with_standardisation(params: Any, loc, scale, context_loc=None, context_scale=None) -> dict:
    """Parameters of `standardised(flow)`: `flow`'s ``params`` and the fixed map ``x = loc + scale * y``.

    Args:
        params: the inner flow's parameters (no batch axis).
        loc: ``(dim,)`` data mean.
        scale: ``(dim,)`` data sd, finite and positive (any magnitude the float type holds).
        context_loc: ``(context_dim,)`` the context's mean, for a conditional flow (None: unconditional).
        context_scale: ``(context_dim,)`` the context's sd (positive), with `context_loc`.
    """
    dtype = jnp.result_type(float)
    out = {"flow": params, "data": {"loc": jnp.asarray(loc, dtype), "scale": jnp.asarray(scale, dtype)}}
    if context_loc is not None:
        out["context"] = {"loc": jnp.asarray(context_loc, dtype), "scale": jnp.asarray(context_scale, dtype)}
    return out


@functools.lru_cache(maxsize=256)
def whitened(flow: Flow) -> Flow:
    """`flow` followed by a fixed full-rank affine map: ``x = loc + scale_out * (Q (scale_in * y))``.

    This is how `flowvi.fit` starts from a Gaussian approximation of the target
    (`flowvi.warm_start`): the Gaussian ``N(loc, S S^T)`` with
    ``S = diag(scale_out) Q diag(scale_in)`` (``Q`` orthogonal) becomes the map
    from `flow`'s coordinates to the target's, so the untrained flow *is* that
    Gaussian and the learned layers only model what is not Gaussian, in
    coordinates where the target has unit scale. The two diagonal factors keep
    a badly scaled Gaussian exact in float32: ``scale_out`` carries the
    coordinates' own scales (any magnitudes) and ``Q``, ``scale_in`` the
    correlations. The map's parameters are stored with the fit and are
    constants to gradients (``stop_gradient``).

    Params are ``{"flow": flow's params, "whitening": {"loc": (dim,),
    "scale_out": (dim,), "rotation": (dim, dim), "scale_in": (dim,)}}``; `init`
    gives the identity map. The hyperparameters gain ``whitened=True``.
    """
    if flow.options.get("whitened", False):
        raise ValueError("the flow is already whitened.")
    if flow.options.get("standardised", False):
        raise ValueError("a standardised flow (from fit_samples) cannot also be whitened.")
    dim = flow.dim

    def init(key: jax.Array) -> dict:
        return {"flow": flow.init(key), "whitening": identity_whitening(dim)}

    def apply(params: dict, context: jax.Array | None = None) -> distrax.Transformed:
        w = jax.lax.stop_gradient(params["whitening"])
        fixed = distrax.Chain([distrax.Block(distrax.ScalarAffine(shift=w["loc"], scale=w["scale_out"]), 1),
                               Orthogonal(w["rotation"]),
                               distrax.Block(distrax.ScalarAffine(shift=jnp.zeros(dim), scale=w["scale_in"]), 1)])
        return transformed(dim, distrax.Chain([fixed, flow.apply(params["flow"], context).bijector]))

    hyper = tuple(sorted(dict(flow.hyperparameters, whitened=True).items()))
    return Flow(flow.name, dim, hyper, jax.jit(init), apply, flow.inverse_cost, flow.sample_cost)


def identity_whitening(dim: int) -> dict:
    """The whitening parameters of the identity map (see `whitened`)."""
    return {"loc": jnp.zeros(dim), "scale_out": jnp.ones(dim), "rotation": jnp.eye(dim), "scale_in": jnp.ones(dim)}


def with_whitening(params: dict, whitening: dict) -> dict:
    """`params` of a `whitened` flow with its fixed map replaced (a new pytree; any leading batch axes).

    Args:
        params: the whitened flow's parameters.
        whitening: ``{"loc", "scale_out", "rotation", "scale_in"}`` without batch axes; broadcast to `params`'.
    """
    old = params["whitening"]
    new = {k: jnp.broadcast_to(jnp.asarray(whitening[k], old[k].dtype), old[k].shape) for k in old}
    return {**params, "whitening": new}


def positive_scale(raw: jax.Array) -> jax.Array:
    """Map an unconstrained array to scales >= SCALE_FLOOR, with raw 0 -> scale 1."""
    return jax.nn.softplus(raw + _SHIFT) + SCALE_FLOOR


def standard_normal(dim: int) -> distrax.Distribution:
    """The base distribution: standard normal on R^dim."""
    return distrax.MultivariateNormalDiag(jnp.zeros(dim), jnp.ones(dim))


def init_elementwise_affine(dim: int) -> dict:
    """Identity parameters for `elementwise_affine`: loc 0, scale 1."""
    return {"loc": jnp.zeros(dim), "raw_scale": jnp.zeros(dim)}


def raw_scale_of(scale) -> jax.Array:
    """The inverse of `positive_scale` in float32 for any finite scale >= 0 (floored at ``2 * SCALE_FLOOR``).

    ``softplus^{-1}(s) = s + log(-expm1(-s))`` has no overflow, unlike ``log(expm1(s))``,
    which is inf in float32 for s above about 88.
    """
    s = jnp.maximum(jnp.asarray(scale, jnp.float32) - SCALE_FLOOR, SCALE_FLOOR)
    return s + jnp.log(-jnp.expm1(-s)) - _SHIFT


def _is_standardised(params: Any) -> bool:
    """True for the params of a `standardised` or `whitened` flow: a fixed map around an inner flow."""
    return isinstance(params, dict) and set(params) in ({"flow", "data"}, {"flow", "data", "context"},
                                                         {"flow", "whitening"})


def has_final_affine(params: Any) -> bool:
    """True when `params` end in the elementwise affine layer every family has (a custom Flow may not)."""
    if _is_standardised(params):
        return has_final_affine(params["flow"])
    return isinstance(params, dict) and isinstance(params.get("affine"), dict) and "loc" in params["affine"]


def final_affine(params: dict) -> dict:
    """The parameters ``{"loc", "raw_scale"}`` of a flow's last elementwise affine layer.

    For a `standardised` or `whitened` flow, the inner flow's last learned one (before the fixed map).
    """
    return final_affine(params["flow"]) if _is_standardised(params) else params["affine"]


def with_final_affine(params: dict, loc=None, scale=None, shift=None) -> dict:
    """`params` with the flow's last elementwise affine layer set (a new pytree; nothing is modified).

    Every family ends in ``x = loc + scale * y``, so this is how a flow is made to
    start at a location and scale (data moments, an initial point, spread-out runs).

    Args:
        params: the flow's parameters (any leading batch axes).
        loc: ``(..., dim)`` new location, or None to keep it.
        scale: ``(..., dim)`` new positive scale, or None to keep it.
        shift: ``(..., dim)`` added to the location, or None.

    For a `standardised` or `whitened` flow the layer is the inner flow's, so loc and
    scale are in the standardised or whitened coordinates (before the fixed map).
    """
    if _is_standardised(params):
        return {**params, "flow": with_final_affine(params["flow"], loc, scale, shift)}
    affine = dict(final_affine(params))
    if loc is not None:
        affine["loc"] = jnp.broadcast_to(jnp.asarray(loc, affine["loc"].dtype), affine["loc"].shape)
    if shift is not None:
        affine["loc"] = affine["loc"] + jnp.asarray(shift, affine["loc"].dtype)
    if scale is not None:
        raw = raw_scale_of(scale).astype(affine["raw_scale"].dtype)
        affine["raw_scale"] = jnp.broadcast_to(raw, affine["raw_scale"].shape)
    return {**params, "affine": affine}


def elementwise_affine(params: dict) -> distrax.Bijector:
    """``y = loc + scale * x`` per coordinate; the layer that makes any diagonal Gaussian reachable."""
    return distrax.Block(distrax.ScalarAffine(shift=params["loc"], scale=positive_scale(params["raw_scale"])), 1)


def transformed(dim: int, bijector: distrax.Bijector) -> distrax.Transformed:
    """Standard normal base on R^dim pushed through `bijector`."""
    return distrax.Transformed(standard_normal(dim), bijector)


def affine_transformer(params: jax.Array) -> distrax.Bijector:
    """Elementwise affine transformer from ``params: (..., dim, 2)`` (shift, raw scale)."""
    return distrax.ScalarAffine(shift=params[..., 0], scale=positive_scale(params[..., 1]))


def spline_transformer(bound: float) -> Callable[[jax.Array], distrax.Bijector]:
    """Elementwise affine map followed by a rational-quadratic spline on [-bound, bound].

    The spline has identity (linear) tails; the affine map in front lets a
    layer shift and scale mass that lies outside the spline's interval, so a
    spline layer can do everything an affine layer can.
    ``params: (..., dim, 3 * bins + 3)``: shift, raw scale, then the spline's
    ``3 * bins + 1``. All-zero params give the identity.
    """
    def make(params: jax.Array) -> distrax.Bijector:
        spline = RationalQuadraticSpline(params[..., 2:], range_min=-bound, range_max=bound,
                                         min_bin_size=1e-3, min_knot_slope=1e-3)
        return distrax.Chain([spline, affine_transformer(params[..., :2])])
    return make


def transformer_param_size(transformer: str, bins: int) -> int:
    """Number of conditioner outputs per coordinate for a transformer."""
    return 2 if transformer == "affine" else 3 * bins + 3
