"""Control variates for a subsampled likelihood: a Taylor expansion around a reference point.

With ``subsample=B`` each step's log density is the minibatch estimate
``f_B(x; key) = log prior + N / B * sum over B rows`` of the full-data
``f(x)`` (`flowvi.data_target`). Its noise grows with N: at a million rows the
gradient noise is orders of magnitude larger than the posterior width. The
difference estimator (Bardenet, Doucet and Holmes 2017, "On Markov chain Monte
Carlo methods for tall data", section 7; for the gradient, Baker, Fearnhead,
Fox and Nemeth 2019, "Control variates for stochastic gradient MCMC")
subtracts from it a function whose minibatch noise is nearly the same and whose
full-data value is known exactly: the second-order Taylor expansion around a
reference point ``xhat``,

    ``T(x) = f(xhat) + g . (x - xhat) + 1/2 (x - xhat)' H (x - xhat)``,

``g`` and ``H`` the gradient and Hessian of ``f`` at ``xhat``. With ``T_B`` the
same expansion of the step's minibatch estimate ``f_B`` (the same rows), the
estimate is

    ``f_B(x) - T_B(x) + T(x)``.

It is unbiased for any ``xhat`` (``E[T_B] = T`` because ``f_B`` is unbiased
for ``f`` at every point, and so are its derivatives), and its value and
gradient are exact at ``xhat``; what is left to subsample is the remainder
``f - T``, whose rows spread with their third derivatives times
``|x - xhat|^3`` (the gradient's, ``|x - xhat|^2``). Over a posterior of
width ``1 / sqrt(N)``, in its whitened coordinates, the plain estimator's
gradient noise grows like ``sqrt(N / B)`` and the controlled one's shrinks
like ``1 / sqrt(N B)``. A likelihood quadratic in ``x`` (a Gaussian mean,
linear regression with known noise) has no remainder: the estimate is the
full-data density.

Only ``f_B`` as a function of ``(x, key)`` is needed, so this works for any
target with a data axis: the keyword `flowvi.Target` and NumPyro models with
data plates (whose ``f_B`` is NumPyro's plate subsampling), and over a mesh
(``f(xhat)``, ``g`` and ``H`` come from the sharded full-data density, so the
reduction over rows is sharded like the rest of the fit).

Costs. Once per fit: the full-data value, gradient and ``dim`` Hessian-vector
products at ``xhat`` (in chunks of `HESSIAN_CHUNK` columns, to bound memory).
Once per step (shared by all draws of the step, like its minibatch): the
Hessian of ``f_B`` at ``xhat``, ``dim`` forward-over-reverse passes over the
B rows, about as much as ``dim`` of the step's draws; above
`MAX_SECOND_ORDER_DIM` coordinates it is left out and the expansion is
first-order (``T = f(xhat) + g . (x - xhat)``; one gradient of the batch per
step), the form of Baker et al.

Why this form: it needs nothing but ``f_B`` (no per-row gradients, which
NumPyro's potential energy does not expose), it makes the estimate exact at
``xhat``, and the second-order term also removes the noise that grows linearly
in ``x - xhat``, which dominates over a posterior's width. Measured on a
logistic regression (N = 2000, B = 50, d = 3; tests/test_control_variates.py)
at one posterior sd from ``xhat``: the gradient's variance over minibatches is
7e-6 of the plain estimator's with the second-order expansion and 3e-3 with
the first-order one (at three sds: 5e-4 and 3e-2). The reference point is
where the warm start's Gaussian is centred (`flowvi.warm_start`; for a
near-Gaussian posterior, the mode of the full-data density after L-BFGS), so
that ``x - xhat`` is of the order of a posterior sd.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

CHOICES = ("auto", True, False)
MAX_SECOND_ORDER_DIM = 200
"""Above this many coordinates the expansion is first-order (the per-step Hessian costs ``dim`` batch passes)."""
HESSIAN_CHUNK = 8
"""Columns of the full-data Hessian computed together (memory ``HESSIAN_CHUNK * N`` per intermediate)."""


class Expansion(NamedTuple):
    """A Taylor expansion of a log density around ``center``.

    Attributes:
        center: ``(dim,)``, the reference point ``xhat``.
        value: scalar ``f(xhat)``.
        grad: ``(dim,)`` gradient at ``xhat``.
        hess: ``(dim, dim)`` Hessian at ``xhat``; None for a first-order expansion.
    """

    center: jax.Array
    value: jax.Array
    grad: jax.Array
    hess: jax.Array | None

    def __call__(self, x: jax.Array) -> jax.Array:
        """The expansion's value at ``x: (dim,)``: scalar."""
        delta = x - self.center
        out = self.value + self.grad @ delta
        if self.hess is not None:
            out = out + 0.5 * delta @ (self.hess @ delta)
        return out


def expand(f: Callable, center: jax.Array, order: int, chunk: int | None = None) -> Expansion:
    """The order-1 or order-2 Taylor expansion of ``f: (dim,) -> scalar`` at ``center: (dim,)``.

    The Hessian is ``jax.hessian`` (all columns at once) without a `chunk`, or
    Hessian-vector products `chunk` columns at a time (``jax.lax.map``).
    """
    value, grad = jax.value_and_grad(f)(center)
    if order == 1:
        return Expansion(center, value, grad, None)
    if chunk is None:
        hess = jax.hessian(f)(center)
    else:
        column = lambda v: jax.jvp(jax.grad(f), (center,), (v,))[1]  # noqa: E731
        hess = jax.lax.map(column, jnp.eye(center.shape[0], dtype=center.dtype), batch_size=chunk)
    return Expansion(center, value, grad, 0.5 * (hess + hess.T))


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def full_expansion(log_density: Callable, data: Any, center: jax.Array, order: int,
                   sharding: jax.sharding.Sharding | None = None) -> Expansion:
    """The expansion of the full-data ``log_density(x, data, None)`` at ``center: (dim,)``.

    On ``data`` split over a mesh the sums over rows are sharded reductions;
    `sharding` (e.g. replicated over the mesh) constrains the result.
    """
    found = expand(lambda x: log_density(x, data, None), center, order, chunk=min(HESSIAN_CHUNK, center.shape[0]))
    return found if sharding is None else jax.lax.with_sharding_constraint(found, sharding)


@dataclasses.dataclass(frozen=True)
class ControlledDensity:
    """``f_B(x) - T_B(x) + T(x)``: a minibatch log density with the Taylor control variate.

    Called as ``(x: (dim,), (data, expansion), key) -> scalar``, the signature of
    `flowvi.data_target.DataSpec.log_density`: ``data`` is what
    ``log_density`` takes, ``expansion`` the full-data `Expansion` ``T``, and
    ``key`` the step's minibatch key. ``T_B`` depends on the key and the data
    only, not on ``x``, so under ``jax.vmap`` over the draws of a step it is
    computed once per step.

    Attributes:
        log_density: the minibatch estimate ``(x, data, key) -> scalar``.
        order: 1 or 2, the order of the expansion.
    """

    log_density: Callable
    order: int

    def __call__(self, x: jax.Array, data: Any, key: jax.Array) -> jax.Array:
        """``x: (dim,)`` -> scalar estimate of the full-data log density."""
        rows, full = data
        batch = expand(lambda z: self.log_density(z, rows, key), full.center, self.order)
        return self.log_density(x, rows, key) - batch(x) + full(x)


def check_control_variates(value: Any, subsample: int | None, num_data: int | None, warm_start: bool) -> Any:
    """Validate the ``control_variates`` option of `flowvi.fit` before anything is computed.

    Args:
        value: ``"auto"``, True or False.
        subsample: the fit's ``subsample`` (None: the full data).
        num_data: the target's number of observations N (None: no data axis).
        warm_start: whether the fit runs the warm start (``init="auto"``), which gives the reference point.

    Returns:
        ``"auto"``, True or False.

    Raises:
        ValueError: another value; True without ``subsample`` (or with ``subsample=N``) or without the
            warm start.
    """
    ok = isinstance(value, bool | np.bool_) or (isinstance(value, str) and value == "auto")
    if not ok:
        raise ValueError(f"control_variates must be 'auto', True or False, got {value!r}.")
    value = value if isinstance(value, str) else bool(value)
    if value is True and subsample is None:
        raise ValueError("control_variates=True needs subsample=B: control variates reduce the noise of a "
                         "subsampled likelihood, and this fit uses the full data.")
    if value is True and num_data is not None and subsample >= num_data:
        raise ValueError(f"control_variates=True needs subsample below the number of observations N={num_data}: "
                         "subsample=N is the full data, which has no minibatch noise to reduce.")
    if value is True and not warm_start:
        raise ValueError("control_variates=True needs init='auto': the reference point of the expansion is "
                         "where the warm start's Gaussian is centred, and this fit has no warm start.")
    return value


def choose_order(value: Any, subsampled: bool, center: np.ndarray | None, why_no_center: str,
                 dim: int) -> tuple[int | None, str]:
    """The expansion's order (None: no control variate) and why, for ``settings["control_variates"]``.

    Args:
        value: a checked ``control_variates`` (`check_control_variates`).
        subsampled: the fit subsamples (``subsample`` given and below N).
        center: ``(dim,)`` reference point, or None when there is none.
        why_no_center: why there is none (when `center` is None).
        dim: number of coordinates.

    Raises:
        ValueError: ``control_variates=True`` and no finite reference point.
    """
    if value is False:
        return None, "off (control_variates=False)"
    if not subsampled:
        return None, "off (no subsampling)"
    if center is None or not np.all(np.isfinite(center)):
        why = why_no_center or "the reference point is not finite"
        if value is True:
            raise ValueError(f"control_variates=True needs a reference point from the warm start, and there is "
                             f"none: {why}.")
        return None, f"off (no reference point: {why})"
    if dim > MAX_SECOND_ORDER_DIM:
        return 1, (f"first-order Taylor expansion at the warm start's centre (dim={dim} is above "
                   f"{MAX_SECOND_ORDER_DIM}, where a Hessian per step costs too much)")
    return 2, "second-order Taylor expansion at the warm start's centre (one batch Hessian per step)"


def with_control_variates(log_density: Callable, full_log_density: Callable, data: Any, center: jax.Array,
                          order: int, sharding: jax.sharding.Sharding | None = None
                          ) -> tuple[ControlledDensity, tuple]:
    """The controlled minibatch density and its data ``(data, expansion)``.

    Args:
        log_density: the minibatch estimate ``(x, data, key) -> scalar``.
        full_log_density: the full-data density with the same ``data`` (``key`` unused).
        data: the data as placed for the fit (split over a mesh, or on one device).
        center: ``(dim,)`` reference point (a JAX array; over a mesh, placed replicated on it).
        order: 1 or 2.
        sharding: where the expansion's arrays go (replicated over a mesh); None: where JAX puts them.

    Returns:
        ``(density, (data, expansion))``.
    """
    expansion = full_expansion(full_log_density, data, center, order, sharding)
    return ControlledDensity(log_density, order), (data, expansion)
