"""Reversal of the coordinate order: a volume-preserving permutation."""

import distrax
import jax
import jax.numpy as jnp


class Reverse(distrax.Bijector):
    """Reverses the last axis, ``y = x[..., ::-1]``, where `flag` is True; identity otherwise.

    log|det J| = 0. Autoregressive layers are conjugated by it on alternate
    layers (``Reverse(f) . layer . Reverse(f)``) so that consecutive layers
    condition in opposite orders while the composition has no net permutation
    (an untrained stack stays the identity map for any number of layers).

    Args:
        flag: boolean scalar (may be traced), default True.
    """

    def __init__(self, flag: jax.Array | bool = True):
        super().__init__(event_ndims_in=1)
        self._flag = flag

    def _apply(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return jnp.where(self._flag, x[..., ::-1], x), jnp.zeros(x.shape[:-1], x.dtype)

    def forward_and_log_det(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: (..., dim) -> (y: (..., dim), log_det: (...))."""
        return self._apply(x)

    def inverse_and_log_det(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """y: (..., dim) -> (x: (..., dim), log_det: (...))."""
        return self._apply(y)
