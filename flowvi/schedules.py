"""The default optimiser, and a learning-rate schedule that is data in the optimiser state.

optax schedules close over the total number of steps, so a fit of 2000 steps
and one of 3000 would compile different programs. Here the horizon of the
cosine decay, and a factor on the rate, live in the optimiser state and `fit`
sets them (`with_horizon`, `with_rate_factor`): refits of any length reuse one
compilation, and the stopping rule of ``fit(steps=None)`` (`flowvi.stopping`)
lowers the rate between chunks without recompiling.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from flowvi.validation import check_positive_float

CLIP_NORM = 10.0
"""Global-norm clipping threshold of the default optimiser."""


@functools.lru_cache(maxsize=32)
def default_optimizer(learning_rate: float, decay: bool = True) -> optax.GradientTransformation:
    """Adam with global-norm gradient clipping at `CLIP_NORM`.

    With `decay`, the learning rate follows a cosine decay to 2% of its start
    over the fit's steps (the horizon is set in the optimiser state by
    `with_horizon`, so fits of any length share one compilation): the late,
    small steps average out Monte Carlo noise in the reverse-KL gradient.
    Cached so that refits reuse compilations.
    """
    scale = scale_by_cosine_decay(learning_rate) if decay else optax.scale(-learning_rate)
    return optax.chain(optax.clip_by_global_norm(CLIP_NORM), optax.scale_by_adam(), scale)


def choose_optimizer(optimizer, learning_rate, decay: bool = True) -> optax.GradientTransformation:
    """`optimizer` if given (an optax GradientTransformation), else `default_optimizer` at `learning_rate`.

    Raises:
        TypeError: `optimizer` is not a GradientTransformation.
        ValueError: no `optimizer` and a `learning_rate` that is not a positive float.
    """
    if optimizer is None:
        return default_optimizer(check_positive_float("learning_rate", learning_rate), decay=decay)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}.")
    return optimizer


class CosineDecayState(NamedTuple):
    """Steps taken, the number of steps over which to decay (0: no decay), and a factor on the rate."""

    count: jax.Array
    horizon: jax.Array
    factor: jax.Array


def scale_by_cosine_decay(learning_rate: float, alpha: float = 0.02) -> optax.GradientTransformation:
    """Multiply updates by ``-lr_t``, with ``lr_t`` decaying from `learning_rate` to ``alpha * learning_rate``.

    ``lr_t = factor * learning_rate * (alpha + (1 - alpha) * (1 + cos(pi * min(t / horizon, 1))) / 2)``;
    the horizon starts at 1 and is set with `with_horizon`; a horizon of 0 means
    no decay (``lr_t = factor * learning_rate``). The factor starts at 1 and is
    set with `with_rate_factor`.
    """
    def init(params: Any) -> CosineDecayState:
        del params
        return CosineDecayState(jnp.zeros((), jnp.int32), jnp.ones((), jnp.int32), jnp.ones((), jnp.float32))

    def update(updates, state: CosineDecayState, params=None):
        del params
        frac = jnp.where(state.horizon > 0, jnp.minimum(state.count / jnp.maximum(state.horizon, 1), 1.0), 0.0)
        rate = state.factor * learning_rate * (alpha + (1.0 - alpha) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac)))
        updates = jax.tree.map(lambda u: (-rate * u).astype(u.dtype), updates)
        return updates, state._replace(count=state.count + 1)

    return optax.GradientTransformation(init, update)


def _replace_in(opt_state: Any, **fields) -> Any:
    """`opt_state` with `fields` of every `CosineDecayState` set (broadcast to their shapes)."""
    def replace(node):
        if isinstance(node, CosineDecayState):
            return node._replace(**{k: jnp.broadcast_to(jnp.asarray(v, getattr(node, k).dtype),
                                                        getattr(node, k).shape) for k, v in fields.items()})
        return node
    return jax.tree.map(replace, opt_state, is_leaf=lambda n: isinstance(n, CosineDecayState))


def with_horizon(opt_state: Any, steps) -> Any:
    """Set the decay horizon of every `CosineDecayState` in `opt_state` to `steps` (0: no decay)."""
    return _replace_in(opt_state, horizon=steps)


def with_rate_factor(opt_state: Any, factor) -> Any:
    """Set the rate factor of every `CosineDecayState` in `opt_state`: a scalar, or ``(runs,)`` for vmapped states."""
    return _replace_in(opt_state, factor=factor)


def has_rate_factor(opt_state: Any) -> bool:
    """True when `opt_state` has a `CosineDecayState` (the default optimiser's), whose rate the host can set."""
    leaves = jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, CosineDecayState))
    return any(isinstance(n, CosineDecayState) for n in leaves)
