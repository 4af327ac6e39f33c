"""NumPyro runner: autoguides under ``SVI`` with ``Trace_ELBO`` (vectorised particles).

The target log density is wrapped as a model with one improper flat site ``x``
plus ``numpyro.factor``. ``svi.run(progress_bar=False)`` compiles the whole loop
(``lax.fori_loop``); the ``_pbar`` methods use ``progress_bar=True``, a Python loop
over a jitted step, as most users run it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks.runners.common import count_params, draw_in_chunks, sizes, timed_fit, version
from benchmarks.targets import get_target


def make_guide(method: str, model, dim: int):
    """The autoguide for `method` and its size configuration."""
    from numpyro.infer import autoguide

    kind = method.removeprefix("numpyro_").removesuffix("_pbar")
    s = sizes(dim)
    if kind == "iaf":
        cfg = {"num_flows": s["layers"], "hidden_dims": list(s["hidden"])}
        return autoguide.AutoIAFNormal(model, **cfg), cfg
    if kind == "bnaf":
        cfg = {"num_flows": s["bnaf_layers"], "hidden_factors": list(s["bnaf_blocks"])}
        return autoguide.AutoBNAFNormal(model, **cfg), cfg
    if kind == "normal":
        return autoguide.AutoNormal(model), {}
    if kind == "mvn":
        return autoguide.AutoMultivariateNormal(model), {}
    raise ValueError(f"unknown numpyro method {method!r}")


def _log_q_sampler(guide, params):
    """``(key, m) -> (draws, log_q)`` of the fitted guide over the unconstrained latent ``x``."""
    import numpyro.distributions as dist
    from numpyro.infer.autoguide import AutoNormal

    if isinstance(guide, AutoNormal):
        q = dist.Normal(params["x_auto_loc"], params["x_auto_scale"]).to_event(1)
    else:
        q = guide.get_posterior(params)

    @jax.jit
    def draw(key, m_shape):
        if isinstance(q, dist.TransformedDistribution):  # avoid numerical inverses (BNAF)
            x, inter = q.sample_with_intermediates(key, m_shape.shape)
            return x, q.log_prob(x, inter)
        x = q.sample(key, m_shape.shape)
        return x, q.log_prob(x)

    return lambda key, m: draw(key, jnp.zeros((m,)))


def run(target_name, method, steps, num_samples, learning_rate, seed, time_budget,
        num_draws=20_000, timing="full", **_options) -> dict:
    """Fit `target_name` with a NumPyro autoguide and return draws, log q and timings."""
    import numpyro
    import numpyro.distributions as dist
    import optax
    from numpyro.distributions import constraints
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.optim import optax_to_numpyro

    target = get_target(target_name)

    def model():
        x = numpyro.sample("x", dist.ImproperUniform(constraints.real_vector, (), (target.dim,)))
        numpyro.factor("log_density", target.log_density(x))

    guide, cfg = make_guide(method, model, target.dim)
    pbar = method.endswith("_pbar")
    svi = SVI(model, guide, optax_to_numpyro(optax.adam(learning_rate)),
              Trace_ELBO(num_particles=num_samples, vectorize_particles=True))

    def fit(n):
        return svi.run(jax.random.key(seed), n, progress_bar=pbar).params

    params, times = timed_fit(fit, steps, time_budget, timing)
    draws, log_q = draw_in_chunks(_log_q_sampler(guide, params), jax.random.key(seed + 1),
                                  num_draws)
    return {"draws": draws, "log_q": log_q, "n_params": count_params(params), "config": cfg,
            "versions": version("numpyro"), **times}
