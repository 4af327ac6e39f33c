"""Gaussian baselines: diagonal (mean-field) and full-rank."""

import distrax
import jax
import jax.numpy as jnp

from flowvi.flows.base import Flow, elementwise_affine, init_elementwise_affine, transformed
from flowvi.validation import check_choice

COVARIANCES = ("diag", "full")
"""The covariance structures of the Gaussian family."""


def gaussian(dim: int, covariance: str = "diag") -> Flow:
    """Gaussian ``x = loc + L u`` with ``L`` diagonal or lower-triangular.

    Args:
        dim: event size.
        covariance: ``"diag"`` (mean field) or ``"full"`` (full rank, Cholesky factor).

    Returns:
        A `Flow`; at initialisation it is the standard normal.
    """
    check_choice("covariance", covariance, COVARIANCES)

    def init(key: jax.Array) -> dict:
        params = {"affine": init_elementwise_affine(dim)}
        if covariance == "full":
            params["lower"] = jnp.zeros((dim, dim))
        return params

    def apply(params: dict) -> distrax.Transformed:
        bijector = elementwise_affine(params["affine"])
        if covariance == "full":
            # Unit-diagonal lower-triangular factor; the scales live in the affine layer.
            lower = jnp.tril(params["lower"], -1) + jnp.eye(dim)
            bijector = distrax.Chain([bijector, distrax.TriangularLinear(lower, is_lower=True)])
        return transformed(dim, bijector)

    return Flow("gaussian", dim, (("covariance", covariance),), jax.jit(init), apply, "one pass")
