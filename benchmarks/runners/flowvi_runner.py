"""flowvi runner: ``flowvi.fit`` with each flow family, reverse KL, default estimator, progress bar on.

By default flowvi uses its own optimiser (Adam with gradient clipping and a cosine
decay starting at the shared learning rate), as a user would get;
``--flowvi-optimizer adam`` gives it the peers' plain Adam instead.
"""

from __future__ import annotations

import jax

from benchmarks.runners.common import count_params, draw_in_chunks, sizes, timed_fit, version
from benchmarks.targets import get_target


def family_config(method: str, dim: int) -> tuple[str, dict]:
    """(flow family name, hyperparameters) for a ``flowvi_*`` method."""
    fam = method.removeprefix("flowvi_")
    s = sizes(dim)
    if fam in ("gaussian_diag", "gaussian_full"):
        return "gaussian", {"covariance": fam.split("_")[1]}
    if fam == "affine_coupling":
        return fam, {"layers": s["layers"], "hidden": s["hidden"]}
    if fam == "spline_coupling":
        return fam, {"layers": s["layers"], "hidden": s["hidden"], "bins": s["bins"],
                     "bound": s["bound"]}
    if fam in ("iaf", "maf"):
        return fam, {"layers": s["layers"], "hidden": s["hidden"]}
    if fam == "iaf_spline":
        return "iaf", {"layers": s["layers"], "hidden": s["hidden"], "transformer": "spline",
                       "bins": s["bins"], "bound": s["bound"]}
    if fam == "bnaf":
        return fam, {"layers": s["bnaf_layers"], "block_size": s["bnaf_blocks"]}
    raise ValueError(f"unknown flowvi method {method!r}")


def run(target_name, method, steps, num_samples, learning_rate, seed, time_budget,
        num_draws=20_000, timing="full", flowvi_optimizer="default", **_options) -> dict:
    """Fit `target_name` with flowvi and return draws, log q and timings (see runners)."""
    import optax

    import flowvi

    target = get_target(target_name)
    family, hyper = family_config(method, target.dim)

    # "default": flowvi's own optimiser (clipped Adam, cosine decay from learning_rate);
    # "adam": plain optax.adam(learning_rate), the optimiser every peer uses.
    optimizer = None if flowvi_optimizer == "default" else optax.adam(learning_rate)

    def fit(n):
        return flowvi.fit(target.log_density, dim=target.dim, flow=family, steps=n,
                          key=jax.random.key(seed), num_samples=num_samples,
                          learning_rate=learning_rate, optimizer=optimizer, progress=True,
                          **hyper)

    post, times = timed_fit(fit, steps, time_budget, timing)
    draws, log_q = draw_in_chunks(post.sample_and_log_prob, jax.random.key(seed + 1), num_draws)
    return {"draws": draws, "log_q": log_q, "n_params": count_params(post.params),
            "config": {"flow": family, **hyper, "optimizer": flowvi_optimizer}, "versions": version("flowvi"), **times}
