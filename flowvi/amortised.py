"""Amortised reverse KL: one conditional flow ``q(x | c)`` for a family of targets ``p~(x | c)``.

(``flowvi.fit(target, contexts=C)``.) The objective is the mean over contexts
of each context's negative ELBO,

    ``L(phi) = E_c E_{x ~ q_phi(. | c)} [log q_phi(x | c) - log p~(x | c)]``,

estimated at every step from ``num_contexts`` contexts (drawn uniformly, with
replacement, from the training set ``C: (m, context_dim)``, or from a sampler
``key -> (batch, context_dim)``) and ``num_samples`` reparameterised draws of
the flow at each. Each context's term is `flowvi.objectives.negative_elbo`
at that context (`flowvi.conditional.at_context`), so the zero-density
handling and the gradient estimators are those of an ordinary fit. The
training loop, its non-finite guards and the stopping rule are `flowvi.fit`'s.

There is no Gaussian warm start: it is one target's approximation, and the
flow must serve all of them; the flow starts at the standard normal for every
context (each family's context network starts at zero).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flowvi.conditional import at_context
from flowvi.flows import Flow, resolve_flow
from flowvi.host_loop import ended_worse_than_start, ran_away_downwards
from flowvi.objectives import check_reverse_kl_flow, negative_elbo
from flowvi.posterior import Posterior
from flowvi.schedules import choose_optimizer, has_rate_factor
from flowvi.stopping import ConvergenceRule
from flowvi.target import Target
from flowvi.training import scan_steps
from flowvi.validation import check_positive_int

CONTEXT_STREAM = 0xC0
"""fold_in constant that turns a step's key into its key for drawing contexts."""


@dataclasses.dataclass(frozen=True)
class AmortisedConfig:
    """Everything static about an amortised run (the jit cache key); the fields `_train` reads included."""

    flow: Flow
    log_density: Callable
    sampler: Callable | None
    optimizer: optax.GradientTransformation
    num_contexts: int
    num_samples: int
    estimator: str
    chunk: int
    max_bad_streak: int
    layout: None = None


def check_contexts(contexts, target: Target, key: jax.Array
                   ) -> tuple[jax.Array | None, Callable | None, int, int | None, str]:
    """``(C or None, sampler or None, context_dim, sampler's batch or None, description)`` for ``fit(contexts=)``.

    Raises:
        ValueError: an array that is not ``(m, context_dim)`` finite floats, a sampler whose output
            is not ``(batch, context_dim)`` finite floats, or a target whose ``log_density(x, c)`` is
            not a scalar at the first context (naming `contexts` or `target`).
    """
    if callable(contexts):
        try:
            drawn = np.asarray(contexts(key), dtype=float)
        except Exception as err:  # noqa: BLE001 - reported with what was expected
            raise ValueError(f"contexts is a callable, so it must map a PRNG key to contexts (batch, context_dim); "
                             f"calling it failed: {type(err).__name__}: {err}") from None
        if drawn.ndim != 2 or drawn.shape[0] < 1 or drawn.shape[1] < 1:
            raise ValueError(f"contexts (a sampler) must return an array (batch, context_dim), got {drawn.shape}.")
        array, sampler, first, what = None, contexts, drawn[0], f"sampler of batches of {drawn.shape[0]}"
    else:
        try:
            array = np.asarray(contexts, dtype=float)
        except (TypeError, ValueError) as err:
            raise ValueError(f"contexts must be an array (m, context_dim) or a callable key -> (batch, "
                             f"context_dim): {err}") from None
        if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
            raise ValueError(f"contexts must have shape (m, context_dim), got {array.shape}.")
        drawn, sampler, first, what = array, None, array[0], f"{array.shape[0]} contexts"
    bad = ~np.isfinite(drawn)
    if bad.any():
        raise ValueError(f"contexts hold {int(bad.sum())} NaN/inf value(s).")
    try:
        value = jnp.asarray(target.log_density(jnp.zeros(target.dim), jnp.asarray(first, jnp.result_type(float))))
    except Exception as err:  # noqa: BLE001 - reported with what was expected
        raise ValueError(f"with contexts=, target.log_density must take (x: ({target.dim},), c: "
                         f"({drawn.shape[1]},)) and return a scalar; calling it at x = 0 and the first context "
                         f"failed: {type(err).__name__}: {err}") from None
    if value.shape != ():
        raise ValueError(f"target.log_density(x, c) must return a scalar, got shape {value.shape}.")
    dtype = jnp.result_type(float)
    batch = None if sampler is None else drawn.shape[0]
    return (None if array is None else jnp.asarray(array, dtype)), sampler, drawn.shape[1], batch, what


def amortised_negative_elbo(params, key: jax.Array, config: AmortisedConfig, contexts: jax.Array | None):
    """The mean of ``num_contexts`` contexts' negative ELBOs (module docstring); `contexts` (m, k) or None (sampler)."""
    context_key = jax.random.fold_in(key, CONTEXT_STREAM)
    if config.sampler is not None:
        batch = jnp.asarray(config.sampler(context_key), jnp.result_type(float))
    else:
        batch = contexts[jax.random.randint(context_key, (config.num_contexts,), 0, contexts.shape[0])]
    flow, log_density = at_context(config.flow), config.log_density

    def one(context, k):
        return negative_elbo({"flow": params, "context": context}, k, flow,
                             lambda x: log_density(x, context), config.num_samples, config.estimator)

    return jnp.mean(jax.vmap(one)(batch, jax.random.split(key, batch.shape[0])))


@functools.partial(jax.jit, static_argnums=0)
def run_chunk(config: AmortisedConfig, states, run_keys, total_steps, active, contexts=None):
    """`scan_steps` of the amortised loss for the one run (`flowvi.reverse_kl._run_chunk`'s signature)."""
    def loss_fn(params, key, step):
        return amortised_negative_elbo(params, key, config, contexts)

    squeeze = functools.partial(jax.tree.map, lambda a: a[0])
    states, info = scan_steps(loss_fn, config.optimizer, squeeze(states), run_keys[0], total_steps, config.chunk,
                              config.max_bad_streak, active[0])
    return jax.tree.map(lambda a: a[None], (states, info))


def warn_about_runs(states, losses: list[np.ndarray], skipped: list[np.ndarray], reasons: list[str],
                    dim: int) -> None:
    """Warn about a halt, skipped steps, and a loss trace that ended worse or ran away (one run)."""
    trace, skips = losses[0], skipped[0]
    problems = []
    if bool(np.asarray(states.halted)[0]):
        problems.append(reasons[0])
    elif skips.any():
        problems.append(f"{int(skips.sum())} of its {skips.size} steps were skipped because the loss or gradient "
                        "was non-finite at some context (each rolled back to the last finite parameters)")
    problems += [p for p in (ended_worse_than_start(trace, dim), ran_away_downwards(trace, dim)) if p]
    for problem in problems:
        warnings.warn(f"flowvi.fit (amortised): {problem}", RuntimeWarning, stacklevel=4)


def settings(config: AmortisedConfig, what: str, context_dim: int, steps: int | None, max_steps: int | None,
             learning_rate: float | None, patience: int | None) -> dict:
    """``post.settings`` of an amortised fit."""
    return {"objective": "amortised_reverse_kl", "contexts": what, "context_dim": context_dim,
            "num_contexts": config.num_contexts, "num_samples": config.num_samples, "steps": steps,
            "max_steps": max_steps, "init": "standard", "estimator": config.estimator,
            "learning_rate": learning_rate, "num_runs": 1, "patience": patience}


def fit_amortised(target: Target, contexts, *, key: jax.Array, flow, flow_hyperparameters: dict,
                  steps: int | None, max_steps: int, num_contexts: int, num_samples: int, learning_rate: float,
                  optimizer, estimator: str, patience: int | None, progress: bool | None, max_bad_streak: int,
                  chunk_size: int, options: tuple[str, ...], train: Callable, init_states: Callable):
    """`flowvi.fit` with ``contexts=`` (see the module docstring); `train` and `init_states` are `flowvi.reverse_kl`'s.

    Returns:
        A `flowvi.Posterior` of the conditional flow (``context_dim`` from the contexts) with the
        conditional target; `flowvi.Posterior.given` gives it at one context.
    """
    start = time.perf_counter()
    contexts, sampler, context_dim, batch, what = check_contexts(contexts, target, key)
    if isinstance(flow, Flow):
        if flow.context_dim != context_dim:
            raise ValueError(f"flow has context_dim={flow.context_dim} but the contexts have {context_dim} "
                             "columns; build it with context_dim=.")
    elif flow_hyperparameters.get("context_dim", context_dim) != context_dim:
        raise ValueError(f"context_dim={flow_hyperparameters['context_dim']!r} was given, but the contexts have "
                         f"{context_dim} columns.")
    else:
        flow_hyperparameters = {**flow_hyperparameters, "context_dim": context_dim}
    flow = resolve_flow(flow, target.dim, flow_hyperparameters, options)
    check_reverse_kl_flow(flow, estimator)
    if patience is not None:
        patience = check_positive_int("patience", patience)
    auto_steps = steps is None
    steps = check_positive_int("max_steps" if auto_steps else "steps", max_steps if auto_steps else steps)
    num_contexts = batch if sampler is not None else check_positive_int("num_contexts", num_contexts)
    num_samples = check_positive_int("num_samples", num_samples)
    custom_optimizer = optimizer is not None
    optimizer = choose_optimizer(optimizer, learning_rate)
    config = AmortisedConfig(flow, target.log_density, sampler, optimizer, num_contexts, num_samples, estimator,
                             min(check_positive_int("chunk_size", chunk_size), steps),
                             check_positive_int("max_bad_streak", max_bad_streak))
    init_key, train_key = jax.random.split(key)
    params = jax.tree.map(lambda a: a[None], flow.init(init_key))
    states = init_states(optimizer, params, jnp.asarray(0 if auto_steps else steps, jnp.int32))
    rule = ConvergenceRule(1, can_lower=has_rate_factor(states.opt_state)) if auto_steps else None
    states, losses, skipped, reasons = train(config, states, train_key[None], steps, patience, progress, 1,
                                             contexts, rule, run_chunk=run_chunk)
    warn_about_runs(states, losses, skipped, reasons, target.dim)
    return Posterior(
        flow=flow, params=states.last_good, target=target, losses=losses[0], stop_reasons=reasons,
        steps_run=np.asarray(states.step), skipped_steps=np.asarray(states.skipped),
        fit_seconds=time.perf_counter() - start,
        settings=settings(config, what, context_dim, None if auto_steps else steps,
                          steps if auto_steps else None, None if custom_optimizer else learning_rate, patience))
