"""What the command line prints and draws after a fit: az.summary and report.png."""

from __future__ import annotations

import numpy as np

MAX_SUMMARY_ROWS = 30
MAX_PAIR_COLUMNS = 4


def summary_table(idata, target=None) -> str:
    """``az.summary`` of the posterior as text, at most `MAX_SUMMARY_ROWS` rows.

    NumPyro models list their latent sites before the deterministic ones. With
    one chain R-hat and ESS are not defined, so only the statistics are shown.
    """
    import warnings

    import arviz as az
    import pandas as pd

    chains = int(idata.posterior.sizes["chain"])
    with warnings.catch_warnings():
        # Constant entries (the fixed first row of a Cholesky factor, a simplex's sum) make
        # ArviZ divide 0 by 0 for their R-hat; the table shows NaN there, which says it.
        warnings.simplefilter("ignore", RuntimeWarning)
        table = az.summary(idata, var_names=_variable_order(idata, target),
                           kind="all" if chains > 1 else "stats")
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        text = table.head(MAX_SUMMARY_ROWS).to_string()
    if len(table) > MAX_SUMMARY_ROWS:
        text += (f"\n... ({len(table) - MAX_SUMMARY_ROWS} more rows; all of them: "
                 "az.summary(az.from_netcdf('posterior.nc')))")
    return text


def pair_columns(idata, target) -> tuple[list[str], np.ndarray]:
    """Up to `MAX_PAIR_COLUMNS` scalar columns of the posterior: names and ``(n, k)`` draws.

    NumPyro models show their latent sites, constrained, before deterministic ones.
    """
    post = idata.posterior
    names, columns = [], []
    for var in _variable_order(idata, target):
        values = np.asarray(post[var].values, dtype=np.float64)
        values = values.reshape(values.shape[0] * values.shape[1], -1)
        labels = _labels(post[var], var)
        for j in range(values.shape[1]):
            if len(names) == MAX_PAIR_COLUMNS:
                return names, np.stack(columns, axis=1)
            names.append(labels[j])
            columns.append(values[:, j])
    return names, np.stack(columns, axis=1)


def _variable_order(idata, target) -> list[str]:
    order = list(idata.posterior.data_vars)
    latent = getattr(target, "site_shapes", None)
    if latent is None:
        return order
    return [v for v in order if v in latent] + [v for v in order if v not in latent]


def _labels(data_array, var: str) -> list[str]:
    extra = [d for d in data_array.dims if d not in ("chain", "draw")]
    if not extra:
        return [var]
    coords = [np.asarray(data_array[d].values) for d in extra]
    return [f"{var}[{', '.join(str(c[i]) for c, i in zip(coords, idx, strict=True))}]"
            for idx in np.ndindex(*[len(c) for c in coords])]


def report_figure(post, idata, key, weights_key, *, data: np.ndarray | None = None, num_draws: int = 1000):
    """The report figure: loss traces, weights tail, and the density (2-D) or a pair plot.

    The importance-weight tail needs a target; a fit to samples shows its data
    beside the learned density instead. A diverged fit still gets its figure:
    each panel leaves out NaN or infinite values and says so (see `flowvi.plots`).

    Args:
        post: the `flowvi.Posterior`.
        idata: its ArviZ export (for the pair plot), or None (the export
            failed): the pair plot then shows the flat coordinates.
        key: PRNG key for the draws of the density panel.
        weights_key: PRNG key for the weights panel; the key given to
            `Posterior.diagnose` (with the same `num_draws`) shows the same k-hat.
        data: the fitted samples (`fit_samples` fits), drawn beside the flow's density.
        num_draws: draws per run for the weights panel.

    Returns:
        A ``matplotlib.figure.Figure`` (not registered with pyplot).
    """
    from matplotlib.figure import Figure

    from flowvi import plots

    fig = Figure(figsize=(15, 7), layout="constrained")
    outer = fig.add_gridspec(1, 2, width_ratios=[1, 1.7])
    left = outer[0].subgridspec(2, 1)
    loss_ax = fig.add_subplot(left[0])
    plots.losses(post, ax=loss_ax)
    if post.validation_losses is not None and len(post.validation_losses):
        epochs = np.arange(1, len(post.validation_losses) + 1)
        loss_ax.plot(epochs, post.validation_losses, color="k", linestyle="--", label="held-out NLL")
        finite = np.asarray(post.validation_losses)[np.isfinite(post.validation_losses)]
        if finite.size:
            low, high = loss_ax.get_ylim()
            loss_ax.set_ylim(min(low, finite.min()), max(high, np.quantile(finite, 0.9)))
        loss_ax.legend(loc="upper right", fontsize="small")
    low_ax = fig.add_subplot(left[1])
    if post.target is not None:
        plots.weights(post, weights_key, num_draws=num_draws, ax=low_ax)
    else:
        _text_panel(low_ax, "no importance weights: a fit to samples has no target density.\n"
                            f"{post.stop_reason}")
    if post.dim == 2:
        right = outer[1].subgridspec(1, 2)
        axes = [fig.add_subplot(right[0]), fig.add_subplot(right[1])]
        if post.target is not None:
            plots.density(post, key, axes=axes)
        else:
            plots.density(post, key, axes=axes[:1])
            _data_panel(axes[1], data, axes[0])
    else:
        if idata is not None:
            names, columns = pair_columns(idata, post.target)
        else:
            x = np.asarray(post.sample_runs(key, -(-num_draws // post.num_runs))[0], dtype=np.float64)
            names = (post.target.names if post.target is not None else
                     [f"x[{i}]" for i in range(post.dim)])[:MAX_PAIR_COLUMNS]
            columns = x.reshape(-1, post.dim)[:, :MAX_PAIR_COLUMNS]
        _pair_plot(fig, outer[1], names, columns)
    fig.suptitle(f"flowvi: {post.flow.name}, {post.num_runs} run{'s' if post.num_runs > 1 else ''}")
    return fig


def _text_panel(ax, text: str) -> None:
    ax.axis("off")
    ax.text(0.02, 0.5, text, wrap=True, va="center", fontsize="small")


def _data_panel(ax, data: np.ndarray | None, like) -> None:
    if data is None:
        ax.axis("off")
        return
    ax.hist2d(data[:, 0], data[:, 1], bins=120, range=[like.get_xlim(), like.get_ylim()], cmap="viridis")
    ax.set_title(f"the {len(data)} fitted samples")
    ax.set_xlabel(like.get_xlabel())
    ax.set_ylabel(like.get_ylabel())


def _pair_plot(fig, spec, names: list[str], columns: np.ndarray) -> None:
    """Lower triangle: 2-D histograms; diagonal: marginal histograms (of the draws that are finite)."""
    k = len(names)
    finite = np.all(np.isfinite(columns), axis=1)
    if finite.sum() < 2:
        _text_panel(fig.add_subplot(spec), f"no pair plot: {int((~finite).sum())} of {len(columns)} draws "
                                           "are NaN or infinite (the fit diverged).")
        return
    left_out = len(columns) - int(finite.sum())
    columns = columns[finite]
    grid = spec.subgridspec(k, k)
    low, high = np.quantile(columns, [0.005, 0.995], axis=0)
    flat = ~(high > low)  # one value (or one value in float64): give it a width
    width = 0.5 * np.maximum(1.0, np.abs(low))
    low, high = np.where(flat, low - width, low), np.where(flat, high + width, high)
    if left_out:
        fig.text(0.99, 0.01, f"pair plot: {left_out} of {len(finite)} draws NaN or infinite (left out)",
                 ha="right", fontsize="small", color="C3")
    for i in range(k):
        for j in range(i + 1):
            ax = fig.add_subplot(grid[i, j])
            if i == j:
                ax.hist(columns[:, i], bins=50, range=(low[i], high[i]), color="C0")
                ax.set_yticks([])
            else:
                ax.hist2d(columns[:, j], columns[:, i], bins=50, range=[(low[j], high[j]), (low[i], high[i])],
                          cmap="viridis")
            if i == k - 1:
                ax.set_xlabel(names[j])
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i])
            elif j > 0:
                ax.set_yticklabels([])
