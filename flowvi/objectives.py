"""Objectives: scalar losses of the flow parameters.

Reverse KL (`negative_elbo`) for a density known up to a constant; forward KL
(`negative_log_likelihood`) for samples.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from flowvi.flows import Flow

ESTIMATORS = ("reparam", "stl")


def negative_elbo(params, key: jax.Array, flow: Flow, log_density: Callable, num_samples: int,
                  estimator: str = "reparam") -> jax.Array:
    """Monte Carlo estimate of ``-ELBO = E_q[log q(x) - log p~(x)]`` with ``x = T(u)``, ``u ~ N(0, I)``.

    Args:
        params: flow parameters.
        key: PRNG key for the ``num_samples`` base draws.
        flow: the flow family instance.
        log_density: ``x: (dim,) -> scalar``.
        num_samples: Monte Carlo batch size.
        estimator: ``"reparam"`` (plain reparameterisation gradient) or ``"stl"``
            (sticking the landing, Roeder et al. 2017: the score term is dropped
            by scoring the draws under stopped parameters; lower variance near
            the optimum, needs a cheap inverse).

    Returns:
        Scalar loss; its value is the same for both estimators, only the gradient differs.
    """
    dist = flow.apply(params)
    x, log_q = dist.sample_and_log_prob(seed=key, sample_shape=(num_samples,))
    if estimator == "stl":
        log_q = flow.apply(jax.lax.stop_gradient(params)).log_prob(x)
    log_p = jax.vmap(log_density)(x)
    return jnp.mean(log_q - log_p)


def negative_log_likelihood(params, batch: jax.Array, flow: Flow) -> jax.Array:
    """Mean negative log density of ``batch: (n, dim)`` under the flow (forward KL up to a constant)."""
    return -jnp.mean(flow.apply(params).log_prob(batch))
