"""flowjax runner: MAF with rational-quadratic splines and BNAF, reverse KL, ``invert=False``.

Fitted with ``flowjax.train.fit_to_key_based_loss`` and ``ElboLoss`` (flowjax's
own loop: a Python loop over a jitted step), Adam at the shared learning rate.
The Adam object is built once so repeated fits reuse flowjax's compiled step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks.runners.common import count_params, draw_in_chunks, sizes, timed_fit, version
from benchmarks.targets import get_target


def make_flow(method: str, dim: int, key):
    """The untrained flowjax flow for `method`, plus its size configuration."""
    from flowjax.bijections import RationalQuadraticSpline
    from flowjax.distributions import Normal
    from flowjax.flows import block_neural_autoregressive_flow, masked_autoregressive_flow

    base = Normal(jnp.zeros(dim))
    s = sizes(dim)
    if method == "flowjax_maf_rqs":
        cfg = {"flow_layers": s["layers"], "nn_width": s["hidden"][0], "nn_depth": len(s["hidden"]),
               "knots": s["bins"], "interval": s["bound"]}
        spline = RationalQuadraticSpline(knots=cfg["knots"], interval=cfg["interval"])
        flow = masked_autoregressive_flow(key, base_dist=base, transformer=spline,
                                          flow_layers=cfg["flow_layers"], nn_width=cfg["nn_width"],
                                          nn_depth=cfg["nn_depth"], invert=False)
        return flow, cfg
    if method == "flowjax_bnaf":
        cfg = {"flow_layers": s["bnaf_layers"], "nn_depth": len(s["bnaf_blocks"]),
               "nn_block_dim": s["bnaf_blocks"][0]}
        return block_neural_autoregressive_flow(key, base_dist=base, invert=False, **cfg), cfg
    raise ValueError(f"unknown flowjax method {method!r}")


def run(target_name, method, steps, num_samples, learning_rate, seed, time_budget,
        num_draws=20_000, timing="full", **_options) -> dict:
    """Fit `target_name` with flowjax and return draws, log q and timings (see runners)."""
    import equinox as eqx
    import optax
    import paramax
    from flowjax.train import fit_to_key_based_loss
    from flowjax.train.losses import ElboLoss

    target = get_target(target_name)
    init_key, fit_key = jax.random.split(jax.random.key(seed))
    flow0, cfg = make_flow(method, target.dim, init_key)
    loss = ElboLoss(target.log_density, num_samples=num_samples)
    optimizer = optax.adam(learning_rate)  # one object, so flowjax's jitted step is reused

    def fit(n):
        flow, _ = fit_to_key_based_loss(fit_key, flow0, loss_fn=loss, steps=n,
                                        optimizer=optimizer, show_progress=False)
        return flow

    flow, times = timed_fit(fit, steps, time_budget, timing)
    params, _ = eqx.partition(flow, eqx.is_inexact_array,
                              is_leaf=lambda x: isinstance(x, paramax.NonTrainable))
    sample = eqx.filter_jit(lambda k, m: flow.sample_and_log_prob(k, (m,)))
    draws, log_q = draw_in_chunks(lambda k, m: sample(k, m), jax.random.key(seed + 1), num_draws)
    return {"draws": draws, "log_q": log_q, "n_params": count_params(params), "config": cfg,
            "versions": version("flowjax", "equinox"), **times}
