"""A fixed orthogonal linear map: a rotation (or reflection), volume-preserving."""

import distrax
import jax
import jax.numpy as jnp


class Orthogonal(distrax.Bijector):
    """``y = Q x`` for an orthogonal ``Q: (dim, dim)``; the inverse is ``Q^T y`` and log|det J| = 0.

    Used by the whitening map of a warm-started flow (`flowvi.flows.whitened`),
    where ``Q`` holds the eigenvectors of a Hessian. ``Q`` is not checked:
    it must be orthogonal to the float type's precision.
    """

    def __init__(self, matrix: jax.Array):
        super().__init__(event_ndims_in=1)
        self._matrix = matrix

    def forward_and_log_det(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: (..., dim) -> (y: (..., dim), log_det: (...))."""
        return x @ self._matrix.T, jnp.zeros(x.shape[:-1], x.dtype)

    def inverse_and_log_det(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """y: (..., dim) -> (x: (..., dim), log_det: (...))."""
        return y @ self._matrix, jnp.zeros(y.shape[:-1], y.dtype)
