"""The default optimiser, and a learning-rate decay whose horizon is data in the optimiser state.

optax schedules close over the total number of steps, so a fit of 2000 steps
and one of 3000 would compile different programs. Here the horizon lives in the
optimiser state and `fit` sets it, so refits of any length reuse one compilation.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

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


class CosineDecayState(NamedTuple):
    """Steps taken and the number of steps over which to decay."""

    count: jax.Array
    horizon: jax.Array


def scale_by_cosine_decay(learning_rate: float, alpha: float = 0.02) -> optax.GradientTransformation:
    """Multiply updates by ``-lr_t``, with ``lr_t`` decaying from `learning_rate` to ``alpha * learning_rate``.

    ``lr_t = learning_rate * (alpha + (1 - alpha) * (1 + cos(pi * min(t / horizon, 1))) / 2)``;
    the horizon starts at 1 and is set with `with_horizon`.
    """
    def init(params: Any) -> CosineDecayState:
        del params
        return CosineDecayState(jnp.zeros((), jnp.int32), jnp.ones((), jnp.int32))

    def update(updates, state: CosineDecayState, params=None):
        del params
        frac = jnp.minimum(state.count / jnp.maximum(state.horizon, 1), 1.0)
        rate = learning_rate * (alpha + (1.0 - alpha) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac)))
        updates = jax.tree.map(lambda u: (-rate * u).astype(u.dtype), updates)
        return updates, CosineDecayState(state.count + 1, state.horizon)

    return optax.GradientTransformation(init, update)


def with_horizon(opt_state: Any, steps: int) -> Any:
    """Set the decay horizon of every `CosineDecayState` in `opt_state` to `steps`."""
    def set_horizon(node):
        if isinstance(node, CosineDecayState):
            return node._replace(horizon=jnp.full_like(node.horizon, steps))
        return node
    return jax.tree.map(set_horizon, opt_state, is_leaf=lambda n: isinstance(n, CosineDecayState))
