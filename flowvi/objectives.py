"""Objectives: scalar losses of the flow parameters.

Reverse KL (`negative_elbo`) for a density known up to a constant; forward KL
(`negative_log_likelihood`) for samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import distrax
import jax
import jax.numpy as jnp

from flowvi.flows import Flow

ESTIMATORS = ("reparam", "stl")
# fold_in constant that turns a step's key into its minibatch key (the draws use the key itself).
DATA_STREAM = 0x0DA7A


def negative_elbo(params, key: jax.Array, flow: Flow, log_density: Callable, num_samples: int,
                  estimator: str = "reparam", data: Any = None,
                  draws_sharding: jax.sharding.Sharding | None = None) -> jax.Array:
    """Monte Carlo estimate of ``-ELBO = E_q[log q(x) - log p~(x)]`` with ``x = T(u)``, ``u ~ N(0, I)``.

    Args:
        params: flow parameters.
        key: PRNG key for the ``num_samples`` base draws (and, through
            ``fold_in(key, DATA_STREAM)``, for the target's minibatch).
        flow: the flow family instance.
        log_density: ``x: (dim,) -> scalar``; with ``data``,
            ``(x: (dim,), data, key) -> scalar`` (see `flowvi.data_target.DataSpec`).
        num_samples: Monte Carlo batch size.
        estimator: ``"reparam"`` (plain reparameterisation gradient) or ``"stl"``
            (sticking the landing, Roeder et al. 2017: the score term is dropped
            by scoring the draws under stopped parameters; lower variance near
            the optimum, needs a cheap inverse).
        data: the target's data arrays, passed to ``log_density``; None for a
            plain log density. One minibatch (if any) serves all draws of a step.
        draws_sharding: sharding constraint on the base draws
            ``u: (num_samples, dim)``, e.g. split over a mesh axis; the rest of
            the batch computation follows it.

    Returns:
        Scalar loss; its value is the same for both estimators, only the gradient differs.
    """
    dist = flow.apply(params)
    x, log_q = _draws(dist, key, num_samples, draws_sharding)
    if estimator == "stl":
        log_q = flow.apply(jax.lax.stop_gradient(params)).log_prob(x)
    if data is None:
        log_p = jax.vmap(log_density)(x)
    else:
        data_key = jax.random.fold_in(key, DATA_STREAM)
        log_p = jax.vmap(log_density, in_axes=(0, None, None))(x, data, data_key)
    return jnp.mean(log_q - log_p)


def _draws(dist, key: jax.Array, num_samples: int, sharding: jax.sharding.Sharding | None):
    """``x: (num_samples, dim)`` and ``log q(x)``, as distrax's ``sample_and_log_prob`` computes them.

    For a `distrax.Transformed` the base draws are made here so that they can
    carry a sharding constraint; the arithmetic is distrax's own, so the
    numbers are the same.
    """
    if not isinstance(dist, distrax.Transformed):
        x, log_q = dist.sample_and_log_prob(seed=key, sample_shape=(num_samples,))
        return _constrain(x, sharding), log_q
    u, log_pu = dist.distribution.sample_and_log_prob(seed=key, sample_shape=(num_samples,))
    u = _constrain(u, sharding)
    x, log_det = jax.vmap(dist.bijector.forward_and_log_det)(u)
    return x, log_pu - log_det


def _constrain(u: jax.Array, sharding: jax.sharding.Sharding | None) -> jax.Array:
    return u if sharding is None else jax.lax.with_sharding_constraint(u, sharding)


def negative_log_likelihood(params, batch: jax.Array, flow: Flow) -> jax.Array:
    """Mean negative log density of ``batch: (n, dim)`` under the flow (forward KL up to a constant)."""
    return -jnp.mean(flow.apply(params).log_prob(batch))
