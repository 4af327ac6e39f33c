"""Masked autoregressive bijector (the building block of IAF and MAF).

Forward: ``y_i = tau(x_i; theta_i(x_{<i}))`` with an elementwise monotone
transformer ``tau`` whose parameters come from a MADE conditioner applied to
the *input*. So the forward pass and its log-determinant cost one conditioner
pass, while the inverse needs ``dim`` sequential passes. Used as is it is an
inverse autoregressive flow (Kingma et al. 2016: cheap sampling, the right
orientation for reverse KL); wrapped in `distrax.Inverse` it is a masked
autoregressive flow (Papamakarios et al. 2017: cheap density, for forward KL).
"""

from collections.abc import Callable

import distrax
import jax
import jax.numpy as jnp


class MaskedAutoregressive(distrax.Bijector):
    """Autoregressive bijector with a one-pass forward and a sequential inverse.

    Args:
        conditioner: ``x: (..., dim) -> params: (..., dim, P)``, autoregressive:
            ``params[..., i, :]`` depends on ``x[..., :i]`` only.
        transformer: ``params: (..., dim, P) -> distrax.Bijector`` acting
            elementwise (``event_ndims_in=0``) on ``(..., dim)``.
        dim: event size.
    """

    def __init__(self, conditioner: Callable[[jax.Array], jax.Array],
                 transformer: Callable[[jax.Array], distrax.Bijector], dim: int):
        super().__init__(event_ndims_in=1)
        self._conditioner = conditioner
        self._transformer = transformer
        self._dim = dim

    def forward_and_log_det(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: (..., dim) -> (y: (..., dim), log_det: (...)); one conditioner pass."""
        y, log_det = self._transformer(self._conditioner(x)).forward_and_log_det(x)
        return y, log_det.sum(-1)

    def inverse_and_log_det(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """y: (..., dim) -> (x: (..., dim), log_det: (...)); ``dim`` sequential passes.

        Fixed-point iteration: after pass k, coordinates ``0..k`` are exact,
        because coordinate k depends only on earlier ones.
        """
        def step(_, x):
            return self._transformer(self._conditioner(x)).inverse(y)

        x = jax.lax.fori_loop(0, self._dim - 1, step, jnp.zeros_like(y))
        x, log_det = self._transformer(self._conditioner(x)).inverse_and_log_det(y)
        return x, log_det.sum(-1)
