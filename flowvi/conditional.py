"""Conditional fits: a flow ``q(x | c)`` held at one context, and checks of the contexts users pass.

A conditional flow (``context_dim > 0``, every family) takes its context in
``flow.apply(params, context)``. `at_context` turns it into an ordinary
unconditional flow whose parameters carry the context, so everything built for
unconditional fits (sampling, densities, diagnostics, the ArviZ export) works
for ``q(x | c)`` at one ``c``; the flow's programs are not compiled again for a
new context, which is an array argument, not part of the program.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from flowvi.flows import Flow
from flowvi.objectives import base_draws
from flowvi.target import Target
from flowvi.validation import check_array


@functools.lru_cache(maxsize=256)
def at_context(flow: Flow) -> Flow:
    """`flow` (conditional) held at a context carried in its parameters: an unconditional `Flow`.

    Params are ``{"flow": flow's params, "context": (context_dim,)}``; the
    context is a constant to gradients (``stop_gradient``). The hyperparameters
    swap ``context_dim`` for ``given_context`` (so ``context_dim`` is 0); such a
    flow is not saved (save the conditional fit).
    """
    k = flow.context_dim
    if not k:
        raise ValueError(f"flow={flow.name!r} is not conditional (context_dim=0).")

    def init(key: jax.Array) -> dict:
        return {"flow": flow.init(key), "context": jnp.zeros(k)}

    def apply(params: dict, context=None):
        return flow.apply(params["flow"], jax.lax.stop_gradient(params["context"]))

    options = dict(flow.hyperparameters)
    options["given_context"] = options.pop("context_dim")
    return Flow(flow.name, flow.dim, tuple(sorted(options.items())), jax.jit(init), apply, flow.inverse_cost,
                flow.sample_cost)


def at_context_params(params, context: jax.Array) -> dict:
    """Parameters of `at_context(flow)` from `flow`'s (leading run axis) and one ``context: (context_dim,)``."""
    runs = jax.tree.leaves(params)[0].shape[0]
    return {"flow": params, "context": jnp.broadcast_to(context, (runs, context.shape[-1]))}


def target_at(target: Target, context: jax.Array) -> Target:
    """The target ``x -> log p~(x | context)`` of a conditional `target` (``log_density(x, c)``)."""
    log_density = target.log_density
    return Target(lambda x: log_density(x, context), target.dim, target.names)


def check_context(context, context_dim: int, num: int | None = None, what: str = "this fit") -> jax.Array:
    """`context` as ``(context_dim,)`` or ``(n, context_dim)`` finite floats.

    Args:
        context: what the user passed (None allowed only when `context_dim` is 0).
        context_dim: the flow's context size (0: unconditional).
        num: the number of points or draws an ``(n, context_dim)`` context must match (None: any).
        what: how errors name the object.

    Raises:
        ValueError: a context for an unconditional fit, none for a conditional one, or the wrong
            shape, type or non-finite values (naming ``context``).
    """
    if not context_dim:
        if context is not None:
            raise ValueError(f"context was given, but {what} is not conditional (context_dim=0); leave it out, "
                             "or fit with a context (fit_samples(x, context=c) or fit(target, contexts=C)).")
        return None
    if context is None:
        raise ValueError(f"context is required: {what} is conditional (context_dim={context_dim}); pass one of "
                         f"shape ({context_dim},) or (n, {context_dim}).")
    context = check_array("context", context)
    if context.ndim not in (1, 2) or context.shape[-1] != context_dim:
        raise ValueError(f"context must have shape ({context_dim},) or (n, {context_dim}), got {context.shape}.")
    if context.ndim == 2 and num is not None and context.shape[0] != num:
        raise ValueError(f"context has {context.shape[0]} rows but there are {num} points (or draws): pass one "
                         f"context of shape ({context_dim},), or one per point, ({num}, {context_dim}).")
    bad = ~np.isfinite(np.asarray(context))
    if bad.any():
        raise ValueError(f"context holds {int(bad.sum())} NaN/inf value(s).")
    return context


@functools.partial(jax.jit, static_argnums=0)
def sample_pairs(flow: Flow, params, key: jax.Array, context: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One draw per context ``context: (n, context_dim)``: ``x: (n, dim)``, ``log q(x | context): (n,)``.

    `params` are one run's (no run axis); draw ``i`` pushes base draw ``i`` through the flow at ``context[i]``.
    """
    u = base_draws(flow.apply(params, context[0]), key, context.shape[0])

    def one(u, c):
        dist = flow.apply(params, c)
        x, log_det = dist.bijector.forward_and_log_det(u)
        return x, dist.distribution.log_prob(u) - log_det

    return jax.vmap(one)(u, context)
