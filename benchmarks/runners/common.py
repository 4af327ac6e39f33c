"""Shared pieces of the runners: flow sizes, timing protocol, parameter counting.

Timing protocol (identical for every method, each library treated as a black box):
a cold fit of N steps after ``jax.clear_caches()`` takes ``T_cold`` (compilation
included) and gives the state the draws come from; warm fits of K and M steps take
``T_K`` and ``T_M`` (each the best of two), with K = min(N, ``timing_steps``) and
M = 2K, grown 4-fold (up to 128K) until ``T_M - T_K`` exceeds timing noise (0.5 s,
and a quarter of ``T_K``); if it never does, ``rate_resolved`` is False and the
rate is dominated by timer noise (NaN when ``T_M <= T_K``).
``s_per_step = (T_M - T_K) / (M - K)`` cancels any fixed per-call cost (set-up,
re-tracing, or recompilation in libraries that do so on every call), and
``compile_s = T_cold - N * s_per_step`` is the cost of a first call beyond its
steps (compilation plus set-up). Capping K keeps long runs affordable: the rate is
measured on shorter fits of the same compiled step.
At tiny N (``--quick``) the per-step figure is rough. ``timing="fast"`` (the
``--quick`` default) replaces the K- and M-step fits by one warm N-step fit:
``s_per_step = T_N / N``, which then includes any fixed per-call cost, and
``compile_s = T_cold - T_N``.

Equal-time mode: the protocol above at N = ``--steps`` gives ``s_per_step``; a final
warm fit then runs ``round(time_budget / s_per_step)`` steps, so ``time_budget`` is
training seconds excluding compilation (``train_s`` records the actual seconds).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import metadata

import jax
import numpy as np


def sizes(dim: int) -> dict:
    """Comparable flow sizes for every library at event size `dim` (n_params records the result).

    Hidden widths are at least 2 * dim: masked autoregressive networks need a
    hidden layer no narrower than the input (NumPyro's IAF refuses otherwise).
    """
    width = max(32, 2 * dim)
    return {
        "layers": 4,  # coupling / autoregressive layers
        "hidden": (width, width),  # conditioner hidden widths
        "bins": 8,  # spline bins (knots)
        "bound": 5.0,  # spline interval half-width
        "bnaf_layers": 1,  # BNAF: stacked networks
        "bnaf_blocks": (8, 8),  # BNAF: hidden block sizes (units per coordinate)
    }


def version(*packages: str) -> dict:
    """Installed versions of `packages` (plus jax), for the results file."""
    out = {}
    for p in ("jax", *packages):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def count_params(tree) -> int:
    """Number of scalar entries in the inexact (float) array leaves of a pytree."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        a = np.asarray(leaf) if hasattr(leaf, "shape") else None
        if a is not None and np.issubdtype(a.dtype, np.inexact):
            total += a.size
    return int(total)


def _timed(fit: Callable[[int], object], steps: int, cold: bool) -> tuple[object, float]:
    if cold:
        jax.clear_caches()
    t0 = time.perf_counter()
    state = fit(steps)
    jax.block_until_ready([x for x in jax.tree.leaves(state) if isinstance(x, jax.Array)])
    return state, time.perf_counter() - t0


def _best(fit, steps: int, repeats: int) -> float:
    return min(_timed(fit, steps, cold=False)[1] for _ in range(repeats))


def measure(fit: Callable[[int], object], steps: int, timing: str = "full", repeats: int = 2,
            min_extra_s: float = 0.5, max_factor: int = 128, timing_steps: int = 500) -> tuple[object, dict]:
    """Cold fit (its state is returned), then warm fits of K and M > K steps; see module docstring."""
    state, t_cold = _timed(fit, steps, cold=True)
    if timing == "fast":
        k = m = steps
        t_k = _timed(fit, steps, cold=False)[1]
        per_step, resolved = t_k / steps, True
    else:
        k = min(steps, timing_steps)
        t_k = _best(fit, k, repeats)
        m = 2 * k
        while True:
            t_m = _best(fit, m, repeats)
            resolved = t_m - t_k >= max(min_extra_s, 0.25 * t_k)
            if resolved or m >= max_factor * k:
                break
            m *= 4
        per_step = (t_m - t_k) / (m - k) if t_m > t_k else float("nan")
    compile_s = t_cold - steps * per_step if per_step == per_step else float("nan")
    return state, {"steps": steps, "fit_s": t_cold, "warm_fit_s": t_k, "timing": timing,
                   "timing_steps": [k, m], "rate_resolved": resolved, "compile_s": max(compile_s, 0.0),
                   "s_per_1000": 1000.0 * per_step}


def timed_fit(fit: Callable[[int], object], steps: int, time_budget: float | None = None,
              timing: str = "full", max_factor: int = 20) -> tuple[object, dict]:
    """Run the timing protocol; return (state of the measured fit, timing dict).

    `fit(n)` must run a fresh fit of n steps (same seed each time) and return a
    state that the runner can draw from. With `time_budget`, `steps` is the
    calibration length and the final fit runs ``time_budget / s_per_step`` steps
    (at most ``max_factor * steps``; ``capped`` records when that bound bit).
    """
    if time_budget is None:
        return measure(fit, steps, timing)
    _, calib = measure(fit, steps, timing)
    per_step = calib["s_per_1000"] / 1000.0
    usable = per_step > 0  # False for a NaN rate too
    n = max_factor * steps if not usable else int(round(time_budget / per_step))
    capped = not usable or n > max_factor * steps
    n = max(1, min(n, max_factor * steps))
    state, t_n = _timed(fit, n, cold=False)
    return state, {**calib, "steps": n, "train_s": t_n, "calib_steps": steps, "capped": capped}


def draw_in_chunks(draw: Callable, key, n: int, chunk: int = 5000):
    """Call ``draw(key, m) -> (x, log_q)`` in chunks; return NumPy (n, dim), (n,)."""
    xs, lqs = [], []
    for i, k in enumerate(jax.random.split(key, -(-n // chunk))):
        m = min(chunk, n - i * chunk)
        x, lq = draw(k, m)
        xs.append(np.asarray(x))
        lqs.append(np.asarray(lq))
    return np.concatenate(xs), np.concatenate(lqs)
