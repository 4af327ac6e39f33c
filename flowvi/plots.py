"""Pictures of a fit (matplotlib).

The loss trace, the learned density beside the target's, what the flow does
to its base samples, and the importance-weight tail with its Pareto k-hat.

Every function draws on the axes it is given (or on new ones) and returns them
(`losses`, `weights`: an ``Axes``; `density`, `transformation`: a ``Figure``).
Functions that draw need a key; without one they use ``jax.random.key(0)``.

A fit that diverged can leave NaN or infinite losses, draws, densities or
weights: every function leaves those out and says on the figure how many it
left out, and a panel with nothing left to draw says why instead of failing.
"""

from __future__ import annotations

import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from flowvi.diagnostics import K_GOOD, K_UNRELIABLE, _log_density_batch, importance_draws, k_text, psis
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


def _note(ax, text: str) -> None:
    """Write on `ax` why (part of) it is empty."""
    ax.text(0.5, 0.5, textwrap.fill(text, 44), transform=ax.transAxes, ha="center", va="center",
            fontsize="small", color="C3")


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
    if traces.size == 0:
        traces = np.zeros((1, 0))
    reverse_kl = post.settings.get("objective", "reverse_kl") == "reverse_kl"
    label = "negative ELBO" if reverse_kl else "training NLL"
    shown, left_out, total = [], 0, 0
    ran = np.asarray(post.steps_run).reshape(-1)
    for r, trace in enumerate(traces):
        if len(traces) > 1 and r < ran.size:
            trace = trace[:int(ran[r])]  # the rest is padding
        finite = np.isfinite(trace)
        left_out, total = left_out + int(trace.size - finite.sum()), total + trace.size
        if not finite.any():
            continue
        steps, trace = np.flatnonzero(finite) + 1, trace[finite]
        window = smooth if smooth is not None else max(1, trace.size // 50)
        line, = ax.plot(steps, trace, alpha=0.25, linewidth=0.8)
        ax.plot(steps, _moving_average(trace, window), color=line.get_color(), linewidth=1.6,
                label=f"run {r}" if len(traces) > 1 else label)
        shown.append(trace[trace.size // 10:])
    if not shown:
        _note(ax, f"no finite loss to draw: {f'all {total} losses are NaN or infinite' if total else 'no steps ran'}"
                  f" ({post.stop_reason})")
    elif left_out:
        ax.text(0.02, 0.02, f"{left_out} of {total} losses NaN or infinite (not drawn)", transform=ax.transAxes,
                fontsize="small", color="C3")
    if shown:
        # Early steps of a fit can be orders of magnitude above the rest: keep the plateau readable.
        tail = np.concatenate(shown)
        low, high = np.min(tail), np.quantile(tail, 0.98)
        pad = 0.05 * (high - low) if high > low else 1.0
        ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("step" if reverse_kl else "epoch")
    ax.set_ylabel(label)
    ax.set_title(f"{post.flow.name}: {label}" + (f", {len(traces)} runs" if len(traces) > 1 else ""))
    if shown:
        ax.legend(loc="upper right", fontsize="small")
    return ax


def _finite_rows(x: np.ndarray) -> np.ndarray:
    """The rows of ``x: (n, d)`` whose every entry is finite."""
    return x[np.all(np.isfinite(x), axis=1)]


def _bounds(post, key, num_draws: int) -> tuple[np.ndarray | None, str]:
    """``(dim, 2)`` plot bounds from the flow's finite draws (None when there are too few), and a note."""
    x = np.asarray(post.sample_runs(key, -(-num_draws // post.num_runs))[0], dtype=np.float64).reshape(-1, post.dim)
    good = _finite_rows(x)
    bad = len(x) - len(good)
    if len(good) < 2:
        return None, f"nothing to draw: {bad} of {len(x)} draws of the flow are NaN or infinite"
    low, high = np.quantile(good, 0.005, axis=0), np.quantile(good, 0.995, axis=0)
    with np.errstate(over="ignore", invalid="ignore"):
        pad = 0.25 * (high - low) + 1e-6
        bounds = np.stack([low - pad, high + pad], axis=1)
    if not np.all(np.isfinite(bounds)) or not np.all(bounds[:, 1] > bounds[:, 0]):
        span = ", ".join(f"{a:.3g} to {b:.3g}" for a, b in zip(low, high, strict=True))
        return None, f"nothing to draw: the flow's draws ({span}) give no usable plot range"
    return bounds, (f"{bad} of {len(x)} draws NaN or infinite (left out of the bounds)" if bad else "")


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
    note = ""
    if bounds is None:
        bounds, note = _bounds(post, _key(key), num_draws)
    else:
        bounds = np.asarray(bounds, dtype=np.float64)
        if bounds.shape != (2, 2) or not np.all(np.isfinite(bounds)) or not np.all(bounds[:, 1] > bounds[:, 0]):
            raise ValueError(f"bounds must be ((x0_min, x0_max), (x1_min, x1_max)) with finite min < max, "
                             f"got {bounds.tolist()}.")
    titles = ["flow q(x)"] + (["target p(x), normalised on the grid"] if post.target is not None else [])
    fig, axes = _new_axes(len(titles), axes)
    names = post.target.names if post.target is not None else ["x[0]", "x[1]"]
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    if bounds is None:
        for ax in axes:
            _note(ax, note)
        return fig
    g0, g1 = np.linspace(*bounds[0], grid), np.linspace(*bounds[1], grid)
    mesh = np.stack(np.meshgrid(g0, g1), axis=-1).reshape(-1, 2)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        values = [np.exp(np.asarray(post.log_prob(jnp.asarray(mesh)), dtype=np.float64))]
        empty = ["the flow's log density is NaN or infinite at every point of the grid"]
        if post.target is not None:
            log_p = np.asarray(_log_density_batch(post.target.log_density, jnp.asarray(mesh)), dtype=np.float64)
            finite = np.isfinite(log_p)
            p = np.exp(log_p - np.max(log_p[finite])) if finite.any() else np.full_like(log_p, np.nan)
            cell = (g0[1] - g0[0]) * (g1[1] - g1[0])
            values.append(p / (np.sum(p[finite]) * cell) if finite.any() else p)
            empty.append("the target's log density is NaN or -inf at every point of the grid")
    values = [np.ma.masked_invalid(v.reshape(grid, grid)) for v in values]
    peaks = [float(v.max()) for v in values if v.count()]
    vmax = max(peaks) if peaks and max(peaks) > 0 else 1.0
    for ax, v, why in zip(axes, values, empty, strict=True):
        if not v.count():
            _note(ax, why)
            continue
        ax.pcolormesh(g0, g1, v, shading="auto", cmap="viridis", vmin=0, vmax=vmax)
        if v.count() < v.size:
            ax.text(0.02, 0.02, f"{v.size - v.count()} of {v.size} grid values NaN or infinite (blank)",
                    transform=ax.transAxes, fontsize="small", color="C3")
    if note:
        axes[0].text(0.02, 0.95, note, transform=axes[0].transAxes, fontsize="small", color="C3")
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
    good = np.all(np.isfinite(x[:, :2]), axis=1)
    for ax, points, ok, title, labels in ((axes[0], u, np.ones(num_points, bool), "base u ~ N(0, I)",
                                           ["u[0]", "u[1]"]),
                                          (axes[1], x, good, f"flow x = T(u), run {run}", names[:2])):
        ax.set_title(title)
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        if not ok.any():
            _note(ax, f"nothing to draw: the flow sends all {num_points} points to NaN or infinity")
            continue
        ax.scatter(points[ok, 0], points[ok, 1], c=colours[ok], s=4, linewidths=0)
        if not ok.all():
            ax.text(0.02, 0.02, f"{int((~ok).sum())} of {num_points} points sent to NaN or infinity (not drawn)",
                    transform=ax.transAxes, fontsize="small", color="C3")
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
    with np.errstate(invalid="ignore"):
        log_w = (log_p - log_q).reshape(-1)
    drawn = log_w.size
    usable = ~np.isnan(log_w) & (log_w != np.inf)  # -inf: a zero weight (the target is 0 there)
    zero = int(np.sum(log_w == -np.inf))
    ax.set_xlabel("rank of weight (1 = largest)")
    ax.set_ylabel("log weight - log mean weight")
    if np.sum(np.isfinite(log_w)) < 2:
        ax.set_title("Pareto k-hat: not available")
        _note(ax, f"no importance weights to draw: of {drawn} draws, {drawn - int(usable.sum())} have a NaN or "
                  f"infinite weight and {zero} a zero weight (the flow's or the target's log density is "
                  "non-finite there)")
        return ax
    log_w = log_w[usable]
    n = log_w.size
    smoothed, k_hat = psis(log_w)
    log_mean = np.logaddexp.reduce(log_w) - np.log(n)
    raw = np.sort(log_w)[::-1] - log_mean
    smooth = np.sort(smoothed)[::-1] + np.log(n)  # smoothed weights sum to 1: mean 1/n
    shown = min(int(np.sum(np.isfinite(raw))), max(200, n // 5))
    rank = np.arange(1, shown + 1)
    tail = int(np.ceil(min(n / 5.0, 3 * np.sqrt(n))))
    ax.axvspan(1, tail, color="0.9", label=f"tail fitted by PSIS ({tail} draws)")
    ax.scatter(rank, raw[:shown], s=6, color="C0", label="raw log weight")
    ax.plot(rank, smooth[:shown], color="C3", linewidth=1.5, label="PSIS-smoothed")
    ax.set_xscale("log")
    level = "good" if k_hat < K_GOOD else "usable with care" if k_hat <= K_UNRELIABLE else "unreliable"
    if np.isnan(k_hat):
        level = "not estimable"
    left_out = [f"{drawn - n} NaN or infinite (left out)"] if n < drawn else []
    left_out += [f"{zero} zero"] if zero else []
    ax.set_title(f"Pareto k-hat = {k_text(k_hat)} ({level})"
                 + (f"\nof {drawn} weights: {', '.join(left_out)}" if left_out else ""))
    ax.legend(loc="upper right", fontsize="small")
    return ax


__all__ = ["density", "losses", "transformation", "weights"]
