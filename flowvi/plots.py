"""Pictures of a fit (matplotlib).

The loss trace, the learned density beside the target's, what the flow does
to its base samples, and the importance-weight tail with its Pareto k-hat.

Every function draws on the axes it is given (or on new ones) and returns them
(`losses`, `weights`: an ``Axes``; `density`, `transformation`: a ``Figure``).
Functions that draw need a key; without one they use ``jax.random.key(0)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flowvi.diagnostics import K_GOOD, K_UNRELIABLE, _log_density_batch, importance_draws, psis
from flowvi.validation import as_key


def _key(key):
    return jax.random.key(0) if key is None else as_key(key)


def _new_axes(num: int, axes, width: float = 4.0):
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, num, figsize=(width * num, width), squeeze=False)
        return fig, list(axes[0])
    axes = list(np.atleast_1d(axes))
    if len(axes) != num:
        raise ValueError(f"axes must hold {num} matplotlib Axes, got {len(axes)}.")
    return axes[0].figure, axes


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[:window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def losses(post, ax=None, *, smooth: int | None = None):
    """The loss trace of every run: negative ELBO per step (training NLL per epoch for `fit_samples`).

    Args:
        post: a `flowvi.Posterior`.
        ax: matplotlib Axes to draw on (new figure when None).
        smooth: moving-average window; default ``steps // 50`` (at least 1).

    Returns:
        The Axes: per run, the raw trace (faint) and its moving average.
    """
    _, (ax,) = _new_axes(1, None if ax is None else [ax], width=5.0)
    traces = np.atleast_2d(np.asarray(post.losses, dtype=np.float64))
    reverse_kl = post.settings.get("objective", "reverse_kl") == "reverse_kl"
    label = "negative ELBO" if reverse_kl else "training NLL"
    shown = []
    for r, trace in enumerate(traces):
        trace = trace[np.isfinite(trace)]
        if trace.size == 0:
            continue
        window = smooth if smooth is not None else max(1, trace.size // 50)
        steps = np.arange(1, trace.size + 1)
        line, = ax.plot(steps, trace, alpha=0.25, linewidth=0.8)
        ax.plot(steps, _moving_average(trace, window), color=line.get_color(), linewidth=1.6,
                label=f"run {r}" if len(traces) > 1 else label)
        shown.append(trace[trace.size // 10:])
    if shown:
        # Early steps of a fit can be orders of magnitude above the rest: keep the plateau readable.
        tail = np.concatenate(shown)
        low, high = np.min(tail), np.quantile(tail, 0.98)
        pad = 0.05 * (high - low) if high > low else 1.0
        ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("step" if reverse_kl else "epoch")
    ax.set_ylabel(label)
    ax.set_title(f"{post.flow.name}: {label}" + (f", {len(traces)} runs" if len(traces) > 1 else ""))
    ax.legend(loc="upper right", fontsize="small")
    return ax


def _bounds(post, key, num_draws: int) -> np.ndarray:
    x = np.asarray(post.sample_runs(key, -(-num_draws // post.num_runs))[0]).reshape(-1, post.dim)
    low, high = np.quantile(x, 0.005, axis=0), np.quantile(x, 0.995, axis=0)
    pad = 0.25 * (high - low) + 1e-6
    return np.stack([low - pad, high + pad], axis=1)


def density(post, key=None, *, bounds=None, grid: int = 120, num_draws: int = 2000, axes=None):
    """The learned density beside the target's, for 2-D targets.

    Args:
        post: a `flowvi.Posterior` of a 2-D target (with several runs, the
            equal-weight mixture of the runs).
        key: PRNG key for the draws that set the default bounds.
        bounds: ``((x0_min, x0_max), (x1_min, x1_max))``; default: the flow's
            0.5%-99.5% quantiles, padded by 25%.
        grid: points per axis.
        num_draws: draws used for the default bounds.
        axes: two Axes (one when the posterior has no target).

    Returns:
        The Figure. Both panels are densities on the same colour scale; the
        target's is normalised on the grid.

    Raises:
        ValueError: the target is not 2-D.
    """
    if post.dim != 2:
        raise ValueError(f"density plots need a 2-D target; this one has dim={post.dim}.")
    bounds = _bounds(post, _key(key), num_draws) if bounds is None else np.asarray(bounds, dtype=np.float64)
    if bounds.shape != (2, 2):
        raise ValueError(f"bounds must be ((x0_min, x0_max), (x1_min, x1_max)), got {bounds.tolist()}.")
    g0, g1 = np.linspace(*bounds[0], grid), np.linspace(*bounds[1], grid)
    mesh = np.stack(np.meshgrid(g0, g1), axis=-1).reshape(-1, 2)
    panels = [("flow q(x)", np.exp(np.asarray(post.log_prob(jnp.asarray(mesh)), dtype=np.float64)))]
    if post.target is not None:
        log_p = np.asarray(_log_density_batch(post.target.log_density, jnp.asarray(mesh)), dtype=np.float64)
        p = np.exp(log_p - np.max(log_p[np.isfinite(log_p)]))
        cell = (g0[1] - g0[0]) * (g1[1] - g1[0])
        panels.append(("target p(x), normalised on the grid", p / (np.nansum(p) * cell)))
    fig, axes = _new_axes(len(panels), axes)
    vmax = max(np.nanmax(values) for _, values in panels)
    names = post.target.names if post.target is not None else ["x[0]", "x[1]"]
    for ax, (title, values) in zip(axes, panels, strict=True):
        ax.pcolormesh(g0, g1, values.reshape(grid, grid), shading="auto", cmap="viridis", vmin=0, vmax=vmax)
        ax.set_title(title)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    return fig


def transformation(post, key=None, *, num_points: int = 2000, run: int = 0, axes=None):
    """Base samples coloured by where they are, and where the flow sends them.

    Colour is hue = angle and saturation = radius of the base point in its
    first two coordinates, so each colour on the right marks where that region
    of the base distribution ended up.

    Args:
        post: a `flowvi.Posterior` (dim >= 2; the first two coordinates are shown).
        key: PRNG key for the base samples.
        num_points: base samples.
        run: which run's flow to show.
        axes: two Axes.

    Returns:
        The Figure.
    """
    from matplotlib.colors import hsv_to_rgb

    if post.dim < 2:
        raise ValueError(f"transformation plots need dim >= 2; this posterior has dim={post.dim}.")
    u = jax.random.normal(_key(key), (num_points, post.dim))
    bijector = post.run(run).distribution.bijector
    x = np.asarray(jax.jit(jax.vmap(bijector.forward))(u))
    u = np.asarray(u)
    angle = (np.arctan2(u[:, 1], u[:, 0]) / (2 * np.pi)) % 1.0
    radius = np.clip(np.hypot(u[:, 0], u[:, 1]) / 2.5, 0.0, 1.0)
    colours = hsv_to_rgb(np.stack([angle, 0.15 + 0.85 * radius, np.full(num_points, 0.9)], axis=1))
    fig, axes = _new_axes(2, axes)
    names = post.target.names if post.target is not None else [f"x[{i}]" for i in range(post.dim)]
    for ax, points, title, labels in ((axes[0], u, "base u ~ N(0, I)", ["u[0]", "u[1]"]),
                                      (axes[1], x, f"flow x = T(u), run {run}", names[:2])):
        ax.scatter(points[:, 0], points[:, 1], c=colours, s=4, linewidths=0)
        ax.set_title(title)
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
    return fig


def weights(post, key=None, *, num_draws: int = 4000, ax=None):
    """The largest importance weights, raw and Pareto-smoothed, with k-hat.

    The draws of all runs are pooled (each weighted with its own run's
    density, as in `flowvi.diagnostics`). Log weights are shifted so that the
    mean weight is 1 (log 0); a long rising left end means a few draws carry
    most of the weight, which is what a large k-hat measures.

    Args:
        post: a `flowvi.Posterior` with a target.
        key: PRNG key.
        num_draws: draws per run.
        ax: Axes to draw on.

    Returns:
        The Axes: raw weights (points), smoothed weights (line), the tail that
        PSIS fits a generalised Pareto distribution to (shaded) and k-hat in the title.
    """
    _, (ax,) = _new_axes(1, None if ax is None else [ax], width=5.0)
    _, log_p, log_q = importance_draws(post, _key(key), num_draws)
    log_w = (log_p - log_q).reshape(-1)
    n = log_w.size
    smoothed, k_hat = psis(log_w)
    log_mean = np.logaddexp.reduce(log_w) - np.log(n)
    raw = np.sort(log_w)[::-1] - log_mean
    smooth = np.sort(smoothed)[::-1] + np.log(n)  # smoothed weights sum to 1: mean 1/n
    shown = min(n, max(200, n // 5))
    rank = np.arange(1, shown + 1)
    tail = int(np.ceil(min(n / 5.0, 3 * np.sqrt(n))))
    ax.axvspan(1, tail, color="0.9", label=f"tail fitted by PSIS ({tail} draws)")
    ax.scatter(rank, raw[:shown], s=6, color="C0", label="raw log weight")
    ax.plot(rank, smooth[:shown], color="C3", linewidth=1.5, label="PSIS-smoothed")
    ax.set_xscale("log")
    ax.set_xlabel("rank of weight (1 = largest)")
    ax.set_ylabel("log weight - log mean weight")
    level = "good" if k_hat < K_GOOD else "usable with care" if k_hat <= K_UNRELIABLE else "unreliable"
    ax.set_title(f"Pareto k-hat = {k_hat:.2f} ({level})")
    ax.legend(loc="upper right", fontsize="small")
    return ax


__all__ = ["density", "losses", "transformation", "weights"]
