"""A flowvi flow as a NumPyro `Transform`, so it slots into `dist.TransformedDistribution`.

NumPyro samples a site with ``sample_with_intermediates`` and scores it with
``log_prob(value, intermediates)``. `FlowTransform` returns the flow's
log-determinant as its intermediate, so the density of the flow's own draws
costs the one forward pass that drew them; only points that did not come
from the flow need the inverse (``dim`` passes for IAF, root finding for BNAF).
"""

from __future__ import annotations

from typing import Any

import distrax
import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import Transform

from flowvi.flows import Flow


class FlowTransform(Transform):
    """The bijector of ``flow.apply(params)`` on events of shape ``(dim,)``.

    Args:
        flow: a `flowvi.flows.Flow`.
        params: its parameter pytree (the arrays are this transform's pytree data).
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector

    def __init__(self, flow: Flow, params: Any):
        self.flow = flow
        self.params = params

    @property
    def bijector(self) -> distrax.Bijector:
        """The distrax bijector (built from params on each use; never stored)."""
        return self.flow.apply(self.params).bijector

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x: (..., dim) -> y: (..., dim)``."""
        return self.bijector.forward(x)

    def call_with_intermediates(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``y`` and ``log|det J(x)|: (...)``, the intermediate `log_abs_det_jacobian` reuses."""
        return self.bijector.forward_and_log_det(x)

    def _inverse(self, y: jax.Array) -> jax.Array:
        return self.bijector.inverse(y)

    def log_abs_det_jacobian(self, x: jax.Array, y: jax.Array, intermediates: Any = None) -> jax.Array:
        """``log|det dy/dx|: (...)``; free when `intermediates` came from `call_with_intermediates`."""
        if intermediates is not None:
            return intermediates
        return self.bijector.forward_and_log_det(x)[1]

    def tree_flatten(self):
        """Params are pytree data; the flow (functions) is static."""
        return (self.params,), (("params",), {"flow": self.flow})


def flow_distribution(flow: Flow, params: Any) -> dist.TransformedDistribution:
    """The flow as a NumPyro distribution: standard normal on R^dim through `FlowTransform`.

    Examples:
        >>> import jax, flowvi
        >>> from flowvi.numpyro import flow_distribution
        >>> flow = flowvi.flows.make_flow("iaf", 2, layers=2, hidden=(8,))
        >>> d = flow_distribution(flow, flow.init(jax.random.key(0)))
        >>> x, inter = d.sample_with_intermediates(jax.random.key(1), (5,))
        >>> d.log_prob(x, inter).shape
        (5,)
    """
    base = dist.Normal(jnp.zeros(flow.dim), 1.0).to_event(1)
    return dist.TransformedDistribution(base, FlowTransform(flow, params))
