"""Gaussian baselines: diagonal (mean-field) and full-rank, unconditional or conditional."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from flowvi.flows.base import (
    Flow,
    check_context_dim,
    context_for,
    elementwise_affine,
    init_elementwise_affine,
    transformed,
    with_context_dim,
)
from flowvi.nn import apply_mlp, init_mlp
from flowvi.validation import check_choice, check_int_tuple

COVARIANCES = ("diag", "full")
"""The covariance structures of the Gaussian family."""


DEFAULT_HIDDEN = (64,)
"""Hidden widths of a conditional Gaussian's context network."""


def gaussian(dim: int, covariance: str = "diag", context_dim: int = 0, hidden=DEFAULT_HIDDEN) -> Flow:
    """Gaussian ``x = loc + L u`` with ``L`` diagonal or lower-triangular.

    Args:
        dim: event size.
        covariance: ``"diag"`` (mean field) or ``"full"`` (full rank, Cholesky factor).
        context_dim: size of the context of a conditional Gaussian (0: unconditional).
            Its location, log scales and (``"full"``) the strict lower triangle of its unit-diagonal
            factor are the unconditional parameters plus an MLP of the context (last layer zero at
            init, so the untrained flow is the standard normal at every context).
        hidden: that MLP's hidden widths (conditional only).

    Returns:
        A `Flow`; at initialisation it is the standard normal.
    """
    check_choice("covariance", covariance, COVARIANCES)
    context_dim = check_context_dim(context_dim)
    full = covariance == "full"
    rows, cols = np.tril_indices(dim, -1)
    net_out = 2 * dim + (rows.size if full else 0)
    hyper = (("covariance", covariance),)
    hidden = check_int_tuple("hidden", hidden)
    if not context_dim and hidden != DEFAULT_HIDDEN:
        raise ValueError(f"hidden={hidden} is the context network's widths: it applies to a conditional "
                         "gaussian (context_dim > 0) only.")
    if context_dim:
        hyper = with_context_dim(hyper + (("hidden", hidden),), context_dim)

    def init(key: jax.Array) -> dict:
        params = {"affine": init_elementwise_affine(dim)}
        if full:
            params["lower"] = jnp.zeros((dim, dim))
        if context_dim:
            params["context_net"] = init_mlp(key, (context_dim, *hidden, net_out))
        return params

    def apply(params: dict, context: jax.Array | None = None) -> distrax.Transformed:
        context = context_for("gaussian", context_dim, context)
        affine, lower = params["affine"], params.get("lower")
        if context is not None:
            out = apply_mlp(params["context_net"], context)
            affine = {"loc": affine["loc"] + out[..., :dim], "raw_scale": affine["raw_scale"] + out[..., dim:2 * dim]}
            if full:
                lower = lower + jnp.zeros(out.shape[:-1] + (dim, dim), out.dtype).at[..., rows, cols].set(
                    out[..., 2 * dim:])
        bijector = elementwise_affine(affine)
        if full:
            # Unit-diagonal lower-triangular factor; the scales live in the affine layer.
            unit_lower = jnp.tril(lower, -1) + jnp.eye(dim)
            triangular = (distrax.TriangularLinear(unit_lower, is_lower=True) if unit_lower.ndim == 2
                          else UnitLowerTriangular(unit_lower))
            bijector = distrax.Chain([bijector, triangular])
        return transformed(dim, bijector)

    return Flow("gaussian", dim, hyper, jax.jit(init), apply, "one pass")


class UnitLowerTriangular(distrax.Bijector):
    """``y = L x`` for unit-diagonal lower-triangular ``L: (..., dim, dim)`` with batch axes (log-det 0).

    distrax's `TriangularLinear` takes one matrix; a conditional Gaussian has one per context.
    """

    def __init__(self, lower: jax.Array):
        super().__init__(event_ndims_in=1)
        self._lower = lower

    def forward_and_log_det(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: (..., dim) -> (y: (..., dim), log_det: (...))."""
        y = jnp.einsum("...ij,...j->...i", self._lower, x)
        return y, jnp.zeros(y.shape[:-1], y.dtype)

    def inverse_and_log_det(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """y: (..., dim) -> (x: (..., dim), log_det: (...))."""
        solve = jnp.vectorize(lambda m, v: jax.scipy.linalg.solve_triangular(m, v, lower=True, unit_diagonal=True),
                              signature="(d,d),(d)->(d)")
        x = solve(self._lower, y)
        return x, jnp.zeros(x.shape[:-1], x.dtype)
