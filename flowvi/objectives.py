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
from flowvi.validation import check_choice

ESTIMATORS = ("reparam", "stl")
SUPPORT_PRICE = 4.0
"""The objective's price per nat of ``-log m``, ``m`` the share of the flow's mass where the target is
not ``-inf`` (see `negative_elbo`): large enough that a flexible flow leaves well under 1% of its mass
outside (measured: 6% at price 0.5, 0.3% at 4, 0.2% at 9, for a spline IAF on a half-normal), small
enough to keep the score-function term's noise moderate."""
# fold_in constant that turns a step's key into its minibatch key (the draws use the key itself).
DATA_STREAM = 0x0DA7A


def check_reverse_kl_flow(flow: Flow, estimator: str) -> None:
    """Refuse a flow that cannot be trained by reverse KL with `estimator` (after checking its name).

    Raises:
        ValueError: an unknown estimator; a flow that samples by root finding (no
            reparameterisation gradient); ``"stl"`` with a flow whose ``log_prob`` is not one pass.
    """
    check_choice("estimator", estimator, ESTIMATORS)
    if flow.sample_cost == "numerical":
        raise ValueError(f"flow={flow.name!r} is inverted: it samples by numerical root finding, which "
                         "gives no reparameterisation gradient. Use it with fit_samples, or without inverted=True.")
    if estimator == "stl" and flow.inverse_cost != "one pass":
        raise ValueError(f"estimator='stl' needs a flow whose log_prob at a new point is one pass; "
                         f"flow={flow.name!r} inverts with {flow.inverse_cost} passes. "
                         "Use 'reparam', or one of gaussian, affine_coupling, spline_coupling, maf.")


def negative_elbo(params, key: jax.Array, flow: Flow, log_density: Callable, num_samples: int,
                  estimator: str = "reparam", data: Any = None,
                  draws_sharding: jax.sharding.Sharding | None = None, support_penalty: bool = False,
                  beta: jax.Array | None = None) -> jax.Array:
    """Monte Carlo estimate of ``-ELBO = E_q[log q(x) - log p~(x)]`` with ``x = T(u)``, ``u ~ N(0, I)``.

    Draws where the target is ``-inf`` (zero density, e.g. outside a truncation)
    get zero weight. With ``A`` the draws where ``log p~`` is not ``-inf``,
    ``n_A`` of the ``n = num_samples``, and ``c = 1 + SUPPORT_PRICE``, the loss is

        ``sum_{i in A} (log q(x_i) - log p~(x_i)) / n_A  -  c log(n_A / n)``,

    an estimate of ``KL(q_A || p) + SUPPORT_PRICE * (-log m) - log Z``: ``q_A`` is
    the flow restricted to the target's support and renormalised, ``m`` the share
    of the flow's mass inside the support, Z the target's normaliser. (The reverse
    KL itself is infinite for any flow with mass where the target has none; this
    charges a finite price for that mass instead.) With every draw in the support,
    the usual case, it is the plain ``mean(log q - log p~)``.

    The target's gradient at excluded draws is never used (it may be NaN), so they
    cannot poison the step. The gradient is the reparameterised gradient over the
    draws in A (it leaves out the terms for mass crossing the support's boundary,
    which vanish when ``q_A`` matches the target) plus, with `support_penalty`, a
    score-function estimate of ``-c grad log m``,
    ``c sum_{i not in A} grad_phi log q_phi(x_i) / n_A`` with the excluded draws
    held fixed, which moves mass out of the zero-density region. It needs
    ``log_prob`` at given points (an inverse pass), computed only in steps that
    have excluded draws. Measured on a half-normal (a standard normal with
    ``-inf`` for ``x < 0``): a spline IAF keeps 0.3-0.6% of its mass outside and
    gets the mean within 0.015 of the truth 0.798; a Gaussian, which cannot
    match it, gets 0.86 with 3% outside. NaN or ``+inf`` values, or a non-finite
    gradient at a draw in A, make the loss non-finite, and the fit skips the step.

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
        support_penalty: add the push out of the zero-density region (above);
            `flowvi.fit` turns it on when the target is ``-inf`` at some probe
            points (and refuses flows whose ``log_prob`` has no gradient, bnaf).
        beta: a scalar in (0, 1]: fit ``p~^beta`` instead (`flowvi.tempering`); None is 1.

    Returns:
        Scalar loss; its value is the same for both estimators, only the gradient differs.
    """
    dist = flow.apply(params)
    x, log_q = _draws(dist, key, num_samples, draws_sharding)
    if estimator == "stl":
        log_q = flow.apply(jax.lax.stop_gradient(params)).log_prob(x)
    fixed = jax.lax.stop_gradient(x)
    values, grads = target_values(log_density, fixed, key, data)
    if beta is not None:
        values, grads = beta * values, beta * grads
    inside = values != -jnp.inf

    def every_draw_inside(x, log_q):
        # The usual case, and the same loss and gradient as below with n_A = n: the masks, the
        # support price and the push cost 15-20% of a small flow's step (iaf, d=10), so they
        # are only run in steps with a draw where the target is -inf.
        log_p = values + jnp.sum(jax.lax.stop_gradient(grads) * (x - fixed), axis=-1)
        return jnp.mean(log_q - log_p)

    def some_draws_outside(x, log_q):
        log_p = _surrogate(values, grads, inside, x, fixed)
        num_inside = jnp.sum(inside)
        share = num_inside / num_samples
        price = 1.0 + SUPPORT_PRICE
        loss = jnp.sum(jnp.where(inside, log_q - log_p, 0.0)) / num_inside - price * jnp.log(share)
        if support_penalty:
            outside_log_q = flow.apply(params).log_prob(fixed)
            score = price * jnp.sum(jnp.where(inside, 0.0, outside_log_q)) / num_inside
            loss = loss + (score - jax.lax.stop_gradient(score))
        return jnp.where(num_inside > 0, loss, jnp.inf)

    return jax.lax.cond(jnp.all(inside), every_draw_inside, some_draws_outside, x, log_q)


def target_values(log_density: Callable, x: jax.Array, key: jax.Array, data: Any = None):
    """The target's value and gradient at each draw, ``(values: (n,), grads: (n, dim))``, at ``x: (n, dim)``.

    With ``data``, the log density gets it and the step's minibatch key ``fold_in(key, DATA_STREAM)``.
    """
    if data is None:
        return jax.vmap(jax.value_and_grad(log_density))(x)
    data_key = jax.random.fold_in(key, DATA_STREAM)
    return jax.vmap(jax.value_and_grad(log_density), in_axes=(0, None, None))(x, data, data_key)


def target_terms(log_density: Callable, x: jax.Array, key: jax.Array, data: Any = None):
    """``log p~`` at the draws ``x: (n, dim)`` with the target's gradient, and which draws count.

    Returns ``(log_p, inside)``, both ``(n,)``: ``inside`` is False where the
    target is ``-inf``. ``log_p`` has the target's value and, as a function of
    ``x``, its gradient at the draws inside and zero elsewhere (the target is
    differentiated draw by draw and its gradient placed by a first-order
    surrogate, so a NaN gradient at an excluded draw goes nowhere), and 0 at
    excluded draws. NaN and ``+inf`` values stay, and poison the loss.
    """
    fixed = jax.lax.stop_gradient(x)
    values, grads = target_values(log_density, fixed, key, data)
    inside = values != -jnp.inf
    return _surrogate(values, grads, inside, x, fixed), inside


def _surrogate(values, grads, inside, x, fixed):
    """``values`` (0 where not `inside`) plus the first-order term that carries ``grads`` (0 where not `inside`)."""
    values = jnp.where(inside, values, 0.0)
    grads = jax.lax.stop_gradient(jnp.where(inside[:, None], grads, 0.0))
    return values + jnp.sum(grads * (x - fixed), axis=-1)


def _draws(dist, key: jax.Array, num_samples: int, sharding: jax.sharding.Sharding | None):
    """``x: (num_samples, dim)`` and ``log q(x)``: the numbers of distrax's ``sample_and_log_prob``.

    For a `distrax.Transformed` (every flow) the base draws are made here
    (`base_draws`), so that they can carry a sharding constraint and compile
    quickly; the rest is distrax's own arithmetic (`push_forward`).
    """
    if not isinstance(dist, distrax.Transformed):
        x, log_q = dist.sample_and_log_prob(seed=key, sample_shape=(num_samples,))
        return _constrain(x, sharding), log_q
    u = _constrain(base_draws(dist, key, num_samples), sharding)
    return push_forward(dist, u)


def base_draws(dist: distrax.Transformed, key: jax.Array, num: int) -> jax.Array:
    """``u: (num, dim)``: ``dist.distribution.sample(seed=key, sample_shape=(num,))`` for a flow's standard normal base.

    The same numbers, drawn as one flat vector and reshaped: on CPU, XLA
    compiles JAX's threefry generator for a 2-D shape in about five times the
    time of a 1-D one (measured 1.1-1.6 s against 0.2-0.3 s for (64, 10)), and
    every program that draws pays it. (Under `jax.vmap` the draws are 2-D again;
    `flowvi.posterior` draws several runs' base draws in a loop instead.)
    """
    base = dist.distribution
    (dim,) = base.event_shape
    return jax.random.normal(key, (num * dim,), base.dtype).reshape(num, dim)


def push_forward(dist: distrax.Transformed, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``x = T(u): (num, dim)`` and ``log q(x) = log p(u) - log|det J_T(u)|: (num,)`` at base draws ``u: (num, dim)``.

    The first is the pushed-forward draw, the second its log density under the flow `dist`.
    """
    x, log_det = jax.vmap(dist.bijector.forward_and_log_det)(u)
    return x, dist.distribution.log_prob(u) - log_det


def _constrain(u: jax.Array, sharding: jax.sharding.Sharding | None) -> jax.Array:
    return u if sharding is None else jax.lax.with_sharding_constraint(u, sharding)


def negative_log_likelihood(params, batch: jax.Array, flow: Flow) -> jax.Array:
    """Mean negative log density of ``batch: (n, dim)`` under the flow (forward KL up to a constant).

    For a conditional flow ``batch: (n, dim + context_dim)``: each row is a point and then its
    context, and the loss is the mean of ``-log q(x_i | c_i)``.
    """
    if flow.context_dim:
        return -jnp.mean(flow.apply(params, batch[:, flow.dim:]).log_prob(batch[:, :flow.dim]))
    return -jnp.mean(flow.apply(params).log_prob(batch))
