"""``fit(flow="auto")``: grow the flow until the diagnostics pass, or the budget is spent.

Each stage is an ordinary `flowvi.fit` of a concrete family (all from the same
Gaussian warm start, so a later stage never starts from scratch), judged by the
Pareto k-hat of its importance weights (`flowvi.diagnostics`). A stage whose
k-hat is below `K_PASS` ends the search; otherwise the next, larger flow is
tried while budget remains. The result is the stage with the largest ELBO,
with every stage recorded in ``post.settings["stages"]``; when none passed its
verdict is whatever `Posterior.diagnose` says of it, "unreliable" for k-hat
above 0.7, and the stages say what was tried.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax

from flowvi.flows import default_family

K_PASS = 0.7
"""A stage passes when its k-hat is below this (the "unreliable" threshold of the verdict)."""
STAGE_DRAWS = 1000
"""Draws per run for judging a stage."""


def stages(dim: int) -> list[tuple[str, dict]]:
    """The families tried in order: the default, then deeper and wider versions of it."""
    family = default_family(dim)
    if family == "spline_coupling":
        return [(family, {}), (family, {"layers": 8}), (family, {"layers": 8, "hidden": (128, 128), "bins": 16})]
    return [(family, {}), (family, {"layers": 8}), (family, {"layers": 8, "hidden": (128, 128)})]


def fit_escalating(fit: Callable, target, key: jax.Array, max_steps: int, time_budget: float | None,
                   fit_kwargs: dict):
    """Fit `stages` in turn until one passes (k-hat < `K_PASS`) or `max_steps` / `time_budget` is spent.

    Args:
        fit: `flowvi.fit` (passed in to keep the import graph one-way).
        target: a `flowvi.Target`.
        key: PRNG key; stage ``i`` fits with ``fold_in(key, i)``.
        max_steps: steps across all stages; each stage gets what is left.
        time_budget: seconds across all stages (None: no limit); checked between stages.
        fit_kwargs: every other option of the fit (``steps`` included).

    Returns:
        The best stage's `flowvi.Posterior` by ELBO, ``settings["stages"]`` listing
        each stage (family, hyperparameters, steps, seconds, elbo, k_hat, passed).
    """
    began = time.perf_counter()
    tried, best, best_elbo, used = [], None, -float("inf"), 0
    for i, (family, hyper) in enumerate(stages(target.dim)):
        stage_began = time.perf_counter()
        post = fit(target, key=jax.random.fold_in(key, i), flow=family, max_steps=max_steps - used,
                   **fit_kwargs, **hyper)
        diagnostics = post.diagnose(jax.random.fold_in(key, 1000 + i), STAGE_DRAWS, iw_k=None)
        used += int(post.steps_run.max())
        passed = bool(diagnostics.k_hat < K_PASS)
        tried.append({"family": family, "hyperparameters": dict(hyper), "steps": int(post.steps_run.max()),
                      "seconds": round(time.perf_counter() - stage_began, 2), "elbo": float(diagnostics.elbo),
                      "k_hat": float(diagnostics.k_hat), "passed": passed})
        if diagnostics.elbo > best_elbo or best is None:
            best, best_elbo = post, float(diagnostics.elbo)
        out_of_time = time_budget is not None and time.perf_counter() - began >= time_budget
        if passed or used >= max_steps or out_of_time:
            break
    best.settings["stages"] = tried
    best.settings["flow"] = "auto"
    best.fit_seconds = time.perf_counter() - began
    return best
