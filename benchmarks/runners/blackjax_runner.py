"""blackjax runner: ``meanfield_vi`` and ``fullrank_vi`` (its defaults, including STL).

Fitted with a Python loop over the jitted ``step``, as in blackjax's examples,
Adam at the shared learning rate; the state starts at blackjax's own initial
values for position zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks.runners.common import count_params, draw_in_chunks, timed_fit, version
from benchmarks.targets import get_target


def run(target_name, method, steps, num_samples, learning_rate, seed, time_budget,
        num_draws=20_000, timing="full", **_options) -> dict:
    """Fit `target_name` with blackjax Gaussian VI and return draws, log q and timings."""
    import blackjax
    import optax
    from blackjax.vi import fullrank_vi, meanfield_vi

    target = get_target(target_name)
    if method == "blackjax_meanfield":
        algo = blackjax.meanfield_vi(target.log_density, optax.adam(learning_rate), num_samples)

        def log_q_fn(state):
            return meanfield_vi.generate_meanfield_logdensity(state.mu, state.rho)

        def params_of(state):
            return (state.mu, state.rho)
    elif method == "blackjax_fullrank":
        algo = blackjax.fullrank_vi(target.log_density, optax.adam(learning_rate), num_samples)

        def log_q_fn(state):
            return fullrank_vi.generate_fullrank_logdensity(state.mu, state.chol_params)

        def params_of(state):
            return (state.mu, state.chol_params)
    else:
        raise ValueError(f"unknown blackjax method {method!r}")

    step = jax.jit(algo.step)

    def fit(n):
        state = algo.init(jnp.zeros(target.dim))
        for k in jax.random.split(jax.random.key(seed), n):
            state, _ = step(k, state)
        return state

    state, times = timed_fit(fit, steps, time_budget, timing)

    @jax.jit
    def draw(key, m_shape):
        x = algo.sample(key, state, m_shape.shape[0])
        return x, jax.vmap(log_q_fn(state))(x)

    draws, log_q = draw_in_chunks(lambda k, m: draw(k, jnp.zeros((m,))), jax.random.key(seed + 1),
                                  num_draws)
    return {"draws": draws, "log_q": log_q, "n_params": count_params(params_of(state)),
            "config": {"stl_estimator": True}, "versions": version("blackjax"), **times}
