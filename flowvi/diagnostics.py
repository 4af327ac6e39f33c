"""Did the fit work? ELBO, log-evidence estimates, Pareto k-hat, importance ESS, R-hat across runs.

Every number comes from draws of the fitted flow, ``x ~ q``, and their log
importance weights ``log w = log p~(x) - log q(x)``:

- the ELBO, ``mean(log w)``, a lower bound on log Z;
- the importance-sampling estimate ``log Z ~= log mean(w)`` and the
  importance-weighted bound ``E[log (1/K) sum_k w_k]`` (Burda et al. 2016),
  which lies between the two;
- the Pareto k-hat of the weights' right tail (PSIS; Yao, Vehtari, Simpson and
  Gelman 2018, "Yes, but did it work?: evaluating variational inference"),
  computed by ArviZ, which says whether those estimates can be trusted:
  k-hat < 0.5 good, 0.5-0.7 usable with care, > 0.7 unreliable;
- the importance effective sample size of the PSIS-smoothed weights, and
  PSIS-corrected posterior means and standard deviations;
- with several runs, R-hat and ESS across runs (chains = runs; ArviZ), which
  expose runs that landed in different modes or failed; PSIS cannot see a
  mode that no run found.

k-hat alone can say "good" about a fit that is wrong, so the verdict is never
"good" when any of these holds (`judge`):

- k-hat is NaN or ``+inf`` (it could not be estimated), or some weights are
  ``+inf`` (the target's log density is ``+inf`` at a draw): "unreliable";
- more than `ZERO_WEIGHT_SHARE` (1%) of the draws have zero weight (the
  target's log density is ``-inf`` there: the flow puts mass outside the
  target's support): at most "usable with care". A ``-inf`` k-hat (constant
  weights) is "good" only when every weight is finite and positive: then the
  flow equals the target up to a constant on every draw;
- the fit halted (a stop reason "stopped at step ..." or naming non-finite
  values: "unreliable") or was interrupted ("usable with care");
- the raw draws are biased: a coordinate's raw mean differs from its
  PSIS-corrected mean by more than `RAW_BIAS_TOL` (0.25) PSIS sds, or its raw
  sd from the PSIS sd by more than a factor ``1 + RAW_BIAS_TOL``, beyond a
  Monte Carlo allowance of 4 standard errors (from the number of draws and the
  importance ESS). Over-dispersed flows have bounded weights and a low k-hat,
  yet their raw draws are too wide; the verdict says to use the PSIS-corrected
  estimates or ``resample=True``: at most "usable with care".

Several runs: the draws of every run are pooled, each draw weighted with the
density of the run that drew it, ``w = p~(x) / q_r(x)`` (not the mixture
density, whose inverse is slow for ``iaf`` and ``bnaf``). With equal draws per
run, the pooled log Z estimate is the log of the average of the runs' own
estimates of Z, and the ELBO the average of their ELBOs; both stay valid
(unbiased for Z, a lower bound for log Z) when runs differ, and per-run values
are reported too.

Mode coverage (several runs): from `MODE_DRAWS` draws of each run and every
run's density at them, which runs found one mode (their Bhattacharyya overlap
is above `flowvi.mixture.OVERLAP`) and the stacking weight of each mode
(`flowvi.mixture`). Runs split over several modes make independent runs
"unreliable" ("the runs disagree: they found N separated modes ...", with
whether the runs' mixture covers the target); `Posterior.mixture` combines them.

A mixture (`Posterior.mixture`): the draws are the mixture's own
(``num_runs * num_draws`` of them, stratified over the runs by weight) and each
is weighted against the mixture density, ``w = p~(x) / sum_r w_r q_r(x)``, so
every number describes the mixture as one distribution (no R-hat: it is not a
set of chains); the verdict says "found N separated modes; the mixture covers
them" when it has several modes and k-hat is at most 0.7, and "the runs
disagree" when it misses mass.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
from scipy.special import logsumexp

from flowvi.mixture import ModeCoverage, coverage
from flowvi.validation import as_key, check_optional_positive_int, check_positive_int

K_GOOD = 0.5
"""Pareto k-hat below this: the importance weights have finite variance; the fit is good."""
K_UNRELIABLE = 0.7
"""Pareto k-hat above this: estimates from the weights are unreliable (Yao et al. 2018)."""
ESS_MIN = 0.5
"""Importance ESS, as a share of the draws, below which a k-hat between `K_GOOD` and `K_UNRELIABLE` is "unreliable".

k-hat sees the heaviest tail only: a flow too narrow by a factor r along one
Gaussian direction has k = 1 - r^2, so k <= 0.7 admits r = 0.55. The ESS share
is 1 / (1 + chi^2(p || q)) and sees every direction at once. Measured on the
shipped models (`benchmarks.vs_nuts`, defaults, 4000 draws), the two fits with
k-hat in 0.5-0.7 whose sds were 38% and 48% short had ESS shares of 13.5% and
5.3% (hierarchical_regression, hsgp_heteroscedastic); the two within 0.9-1.1 of
the reference had 98% and 99% (ar_timeseries, flat_prior_regression). Below
0.5 at least half the draws carry almost no weight, and the PSIS estimates rest
on the few that remain."""
RHAT_MAX = 1.1
"""R-hat across runs above this: the runs disagree."""
_ELBO_GAP = 1.0
"""A run whose ELBO is this many nats (and 5 standard errors) below the best run's is flagged."""
ZERO_WEIGHT_SHARE = 0.01
"""Share of draws with zero weight (target log density ``-inf``) above which the verdict is not "good".

Each such draw is a raw draw that the target rules out (an impossible value in
an exported posterior). Up to 1% of them the verdict counts them but keeps its
level: the ESS loses at most 1%, and the raw moments move by about 1% of the
distance of those draws from the target's mass."""
RAW_BIAS_TOL = 0.25
"""Raw draws are biased when a raw mean is this many PSIS sds from the PSIS mean, or a raw sd
differs from the PSIS sd by more than a factor ``1 + RAW_BIAS_TOL`` (beyond 4 Monte Carlo
standard errors). A flow within it is at most a quarter sd off: about what k-hat < 0.5 lets
through for a too-narrow Gaussian in one coordinate (k = 1 - r^2 < 0.5 for an sd ratio r > 0.71)."""
MODE_DRAWS = 256
"""Draws per run for the mode-coverage check: ``runs^2 * MODE_DRAWS`` flow densities. Each
Bhattacharyya overlap then has a standard error below ``1 / sqrt(256) = 0.0625`` (see `flowvi.mixture`)."""
_MODE_STREAM = 0x4D4F4445
"""fold_in constant of the key of a mixture's per-run draws for the mode check."""
_MC_ALLOWANCE = 4.0
"""Monte Carlo standard errors allowed on top of `RAW_BIAS_TOL` before raw draws count as biased."""


def arviz_major() -> int:
    """Major version of the installed ArviZ (0 for the InferenceData series, 1+ for DataTree)."""
    import arviz
    return int(arviz.__version__.split(".")[0])


_CONSTANT_SPREAD = 1e-5
"""Log weights that all lie within this of each other are constant (q = p up to a constant)."""


def psis(log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray | float]:
    """Pareto-smoothed log weights and k-hat, computed by ArviZ.

    Weights that are constant to within a relative 1e-5 (the flow equals the
    target up to a constant, and float32 rounding) have no tail to fit: their
    k-hat is reported as ``-inf`` (ArviZ 0.x would say ``inf``, 1.x raise).
    Weights with a ``+inf`` among them have k-hat ``+inf`` (their mass is shared
    by the ``+inf`` draws); weights that are all zero (``-inf``) have k-hat and
    smoothed weights NaN.

    Args:
        log_weights: array of shape ``(..., n)``: log importance weights, one
            set of ``n`` independent draws per leading index; ``-inf`` allowed.

    Returns:
        ``smoothed: (..., n)`` log weights normalised to log-sum-exp 0 over the
        last axis, and ``k_hat`` of shape ``(...)`` (a float for 1-D input).
    """
    lw = np.array(log_weights, dtype=np.float64)
    rows = lw.reshape(-1, lw.shape[-1])
    out = [_psis_1d(row) for row in rows]
    smoothed = np.stack([o[0] for o in out]).reshape(lw.shape)
    k_hat = np.array([o[1] for o in out]).reshape(lw.shape[:-1])
    return smoothed, (float(k_hat) if lw.ndim == 1 else k_hat)


def _psis_1d(lw: np.ndarray) -> tuple[np.ndarray, float]:
    if np.any(lw == np.inf):
        # Unbounded weights: all the mass sits on the +inf draws; there is no tail to fit.
        top = lw == np.inf
        return np.where(top, -np.log(top.sum()), -np.inf), np.inf
    finite = lw[np.isfinite(lw)]
    if not finite.size:
        return np.full_like(lw, np.nan), np.nan
    if np.ptp(finite) < _CONSTANT_SPREAD:
        return lw - logsumexp(lw), -np.inf
    if arviz_major() >= 1:
        from arviz_stats.base import array_stats
        # arviz-stats smooths weights exp(-ary) (its input is a log likelihood, as in PSIS-LOO).
        smoothed, k_hat = array_stats.psislw(-lw, r_eff=1, axis=-1)
    else:
        import arviz
        smoothed, k_hat = arviz.psislw(lw, reff=1.0, normalize=True)
    return np.asarray(smoothed, dtype=np.float64), float(k_hat)


def across_runs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank-normalised split R-hat and bulk ESS of each coordinate, chains = runs (ArviZ).

    Args:
        x: array of shape ``(runs, n, dim)``, ``runs >= 2``.

    Returns:
        ``rhat: (dim,)`` and ``ess: (dim,)``.
    """
    import arviz
    x = np.asarray(x, dtype=np.float64)
    # A (chain, draw) array per coordinate is what both ArviZ series accept.
    rhat = np.array([float(arviz.rhat(x[:, :, j])) for j in range(x.shape[-1])])
    ess = np.array([float(arviz.ess(x[:, :, j])) for j in range(x.shape[-1])])
    return rhat, ess


@dataclasses.dataclass(frozen=True, eq=False)
class Diagnostics:
    """How good a fit is, from ``num_draws`` draws of each of ``num_runs`` runs.

    Attributes:
        elbo, elbo_se: ELBO and its Monte Carlo standard error.
        log_z, log_z_se: importance-sampling estimate of log Z (the log
            normalising constant of the target) and its delta-method standard
            error (meaningful only when ``k_hat < 0.7``).
        iw_bound, iw_bound_se, iw_k: importance-weighted bound with ``iw_k``
            draws per estimate, and its standard error (NaN when not computed).
        k_hat: Pareto k-hat of the (pooled) importance weights (``-inf`` when
            they are constant, ``+inf`` with a ``+inf`` weight, NaN when no
            weight is positive).
        ess, ess_fraction: importance ESS of the PSIS-smoothed weights, absolute
            and as a fraction of all draws.
        verdict: the judgement in words; starts with "good", "usable with
            care" or "unreliable" (see `judge` for what rules out "good").
        psis_mean, psis_sd: ``(dim,)`` PSIS-corrected posterior means and
            standard deviations of the flat coordinates.
        rhat, ess_runs: ``(dim,)`` R-hat and ESS across runs; None for one run.
        num_draws: draws per run; num_runs: runs.
        names: coordinate names.
        elbo_runs, log_z_runs, k_hat_runs: ``(num_runs,)`` per-run values.
        num_nonfinite_weights: draws whose weight is ``+inf`` or NaN (the
            target's log density is ``+inf`` there).
        num_zero_weights: draws whose weight is zero (the target's log density
            is ``-inf`` there: outside the target's support).
        raw_mean, raw_sd: ``(dim,)`` means and sds of the raw (unweighted)
            draws, pooled over runs; None when not computed.
        raw_biased: ``(dim,)`` bool, True where the raw draws' mean or sd
            disagrees with the PSIS-corrected one by more than `RAW_BIAS_TOL`
            beyond Monte Carlo error; None when not computed.
        stop_reasons: why each run of the fit stopped (empty when unknown).
        labels: how the printed table labels the coordinates (default `names`;
            a NumPyro target's say which are unconstrained, e.g. ``log(tau)``).
        unconstrained: True when the coordinates are the flat, unconstrained
            ones of a target with named sites (the table's header says so).
        modes: with several runs, the `flowvi.mixture.ModeCoverage`: which runs
            found which mode, the weight of each mode, and whether the runs'
            mixture covers the target; None for one run.
        mixture_of: the number of runs of a mixture (`Posterior.mixture`),
            whose draws were diagnosed as one distribution; None otherwise.
    """

    elbo: float
    elbo_se: float
    log_z: float
    log_z_se: float
    iw_bound: float
    iw_bound_se: float
    iw_k: int | None
    k_hat: float
    ess: float
    ess_fraction: float
    verdict: str
    psis_mean: np.ndarray
    psis_sd: np.ndarray
    rhat: np.ndarray | None
    ess_runs: np.ndarray | None
    num_draws: int
    num_runs: int
    names: tuple[str, ...]
    elbo_runs: np.ndarray
    log_z_runs: np.ndarray
    k_hat_runs: np.ndarray
    num_nonfinite_weights: int = 0
    num_zero_weights: int = 0
    raw_mean: np.ndarray | None = None
    raw_sd: np.ndarray | None = None
    raw_biased: np.ndarray | None = None
    stop_reasons: tuple[str, ...] = ()
    labels: tuple[str, ...] | None = None
    unconstrained: bool = False
    modes: ModeCoverage | None = None
    mixture_of: int | None = None

    @property
    def num_modes(self) -> int | None:
        """Number of separated modes the runs found (None for one run)."""
        return None if self.modes is None else self.modes.num_modes

    @property
    def reliable(self) -> bool:
        """True unless the verdict is "unreliable" (see `judge`)."""
        return not self.verdict.startswith("unreliable")

    def __str__(self) -> str:
        runs = f"{self.num_runs} runs x {self.num_draws} draws, pooled" if self.num_runs > 1 \
            else f"{self.num_draws} draws"
        if self.mixture_of is not None:
            runs = f"mixture of {self.mixture_of} runs, {self.num_draws} draws"
        total = self.num_runs * self.num_draws
        rows = [
            ("ELBO", f"{self.elbo:.4f} ± {self.elbo_se:.4f}"),
            ("log Z (importance sampling)", f"{self.log_z:.4f} ± {self.log_z_se:.4f}"),
        ]
        if self.iw_k is not None:
            rows.append((f"IW bound (K={self.iw_k})", f"{self.iw_bound:.4f} ± {self.iw_bound_se:.4f}"))
        rows += [("Pareto k-hat", k_text(self.k_hat, 3)),
                 ("importance ESS", f"{self.ess:.0f} ({100 * self.ess_fraction:.1f}%)"),
                 ("non-finite weights", f"{self.num_nonfinite_weights} of {total}"),
                 ("zero weights (log p = -inf)", f"{self.num_zero_weights} of {total}")]
        if self.rhat is not None:
            rows.append(("max R-hat across runs", f"{np.nanmax(self.rhat):.3f}"))
        if self.modes is not None:
            rows.append(("separated modes found", f"{self.modes.num_modes}"))
        width = max(len(r[0]) for r in rows)
        lines = [f"flowvi diagnostics ({runs})"]
        lines += [f"  {name:<{width}}  {value}" for name, value in rows]
        lines += ["", *_wrap(f"verdict: {self.verdict}", 88, "  "), ""]
        labels = self.labels if self.labels is not None else self.names
        raw = self.raw_mean is not None and self.raw_sd is not None
        biased = self.raw_biased if self.raw_biased is not None else np.zeros(len(labels), bool)
        head = ["flat coordinate (unconstrained)" if self.unconstrained else "coordinate", "PSIS mean", "PSIS sd"]
        head += (["raw mean", "raw sd"] if raw else []) + (["R-hat", "ESS(runs)"] if self.rhat is not None else [])
        table = []
        for i, name in enumerate(labels[:_MAX_ROWS]):
            row = [name, f"{self.psis_mean[i]:.4g}", f"{self.psis_sd[i]:.4g}"]
            if raw:
                mark = (" *" if biased[i] else "  ") if biased.any() else ""
                row += [f"{self.raw_mean[i]:.4g}", f"{self.raw_sd[i]:.4g}{mark}"]
            if self.rhat is not None:
                row += [f"{self.rhat[i]:.3f}", f"{self.ess_runs[i]:.0f}"]
            table.append(row)
        lines += _table(head, table)
        if len(labels) > _MAX_ROWS:
            lines.append(f"  ... ({len(labels) - _MAX_ROWS} more coordinates)")
        if biased.any():
            lines.append("  * the raw draws are biased here: use the PSIS columns, or resample=True")
        if self.num_runs > 1:
            lines.append("")
            lines += _table(["run", "ELBO", "log Z", "k-hat"],
                            [[str(r), f"{self.elbo_runs[r]:.4f}", f"{self.log_z_runs[r]:.4f}",
                              f"{self.k_hat_runs[r]:.3f}"] for r in range(self.num_runs)])
        if self.modes is not None:
            m = self.modes
            mode_of = {r: i for i, g in enumerate(m.groups) for r in g}
            lines += ["", f"  modes (runs overlapping by Bhattacharyya coefficient > {_overlap_min():.2f}, "
                          f"{m.num_draws} draws per run; weights: {m.weights_from})"]
            lines += _table(["run", "mode", "weight", "mode weight"],
                            [[str(r), str(mode_of[r]), f"{m.run_weights[r]:.3f}",
                              f"{m.mode_weights[mode_of[r]]:.3f}"] for r in range(len(m.run_weights))])
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Diagnostics(elbo={self.elbo:.4g}, log_z={self.log_z:.4g}, k_hat={self.k_hat:.3g}, "
                f"ess={self.ess:.0f}, num_runs={self.num_runs}, num_draws={self.num_draws}, "
                f"verdict={self.verdict.split(':')[0]!r})")


_MAX_ROWS = 20


def _overlap_min() -> float:
    from flowvi.mixture import OVERLAP
    return OVERLAP


def k_text(k: float, digits: int = 2) -> str:
    """`k` with `digits` decimals, or more where fewer would print a threshold it is not (0.7004 -> "0.7004")."""
    for shown in range(digits, 7):
        text = f"{k:.{shown}f}"
        if float(text) not in (K_GOOD, K_UNRELIABLE) or float(text) == k:
            return text
    return text


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(c) for c in col) for col in zip(head, *rows, strict=True)]
    fmt = lambda cells: "  " + "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return [fmt(head)] + [fmt(r) for r in rows]


def _wrap(text: str, width: int, indent: str) -> list[str]:
    import textwrap
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent + "  ")


@functools.partial(jax.jit, static_argnums=0)
def _log_density_batch(log_density, x: jax.Array) -> jax.Array:
    flat = x.reshape(-1, x.shape[-1])
    return jax.vmap(log_density)(flat).reshape(x.shape[:-1])


def importance_draws(post, key: jax.Array, num_draws: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draws of every run with the target's and the run's own log density.

    Args:
        post: a `flowvi.Posterior` with a target.
        key: PRNG key.
        num_draws: draws per run.

    Returns:
        ``x: (num_runs, num_draws, dim)``, ``log_p: (num_runs, num_draws)``
        (unnormalised target) and ``log_q: (num_runs, num_draws)`` (each
        draw's own run), as float64 numpy arrays.
    """
    return mixture_importance_draws(post, key, num_draws)[:3]


def mixture_importance_draws(post, key: jax.Array, num_draws: int
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """`importance_draws` plus the run of each draw of a mixture.

    For a mixture (`Posterior.mixture`) the draws are ``num_runs * num_draws``
    draws of the mixture as one set, ``x: (1, num_runs * num_draws, dim)``, with
    its density ``log_q`` and ``run: (1, num_runs * num_draws)``; otherwise each
    run's own draws and ``run`` None.
    """
    if post.target is None:
        raise ValueError("diagnostics need the target's log density, and this Posterior has none "
                         "(a fit_samples fit, or flowvi.load without target=); load it with its target.")
    x, log_q, run = flow_draws(post, key, num_draws)
    log_p = _log_density_batch(post.target.log_density, x)
    return (np.asarray(x, dtype=np.float64), np.asarray(log_p, dtype=np.float64),
            np.asarray(log_q, dtype=np.float64), run)


def flow_draws(post, key: jax.Array, num_draws: int) -> tuple[jax.Array, jax.Array, np.ndarray | None]:
    """The flow's draws as `mixture_importance_draws` lays them out, without the target.

    Returns:
        ``x: (num_runs, num_draws, dim)`` and ``log_q: (num_runs, num_draws)`` (each run's
        own draws and density) and ``run`` None; for a mixture ``x: (1, num_runs * num_draws, dim)``,
        the mixture's ``log_q`` and ``run: (1, num_runs * num_draws)``, the run of each draw.
    """
    num_draws = check_positive_int("num_draws", num_draws)
    if getattr(post, "is_mixture", False):
        x, log_q, run = post.sample_mixture(as_key(key), post.num_runs * num_draws)
        return x[None], log_q[None], np.asarray(run)[None]
    x, log_q = post.sample_runs(as_key(key), num_draws)
    return x, log_q, None


def mode_coverage(post, key: jax.Array, x: np.ndarray, log_p: np.ndarray) -> ModeCoverage | None:
    """Which runs of `post` found which mode (see `flowvi.mixture.coverage`); None for one run.

    Independent runs use the first `MODE_DRAWS` of their draws ``x: (runs, n, dim)``
    (with ``log_p: (runs, n)``) and estimate stacking weights; a mixture draws
    `MODE_DRAWS` per run afresh (``fold_in(key, ...)``) and keeps its own weights.
    None also when the draws are not fit for it (NaN target values or non-finite
    flow densities, which `diagnose` reports itself).
    """
    if post.num_runs < 2:
        return None
    if getattr(post, "is_mixture", False):
        _, log_p, cross = post.cross_draws(jax.random.fold_in(key, _MODE_STREAM), MODE_DRAWS)
        weights = post.run_weights
    else:
        m = min(x.shape[1], MODE_DRAWS)
        log_p = log_p[:, :m]
        cross = post.cross_log_prob(x[:, :m])
        weights = None
    own = cross[np.arange(post.num_runs), np.arange(post.num_runs)]
    if np.isnan(log_p).any() or not np.all(np.isfinite(own)) or not np.any(np.isfinite(log_p)):
        return None
    return coverage(log_p, cross, run_weights=weights, k_hat=None if weights is None else float("nan"))


def diagnose(post, key: jax.Array, num_draws: int = 4000, *, iw_k: int | None = 100) -> Diagnostics:
    """Diagnose a fit from fresh draws of every run.

    With several runs the draws are pooled and each is weighted with its own
    run's density (see the module docstring); R-hat and ESS across runs are
    computed on the flat coordinates, and `mode_coverage` says which runs
    found which mode. A mixture (`flowvi.Posterior.mixture`) is diagnosed as one
    distribution: ``num_runs * num_draws`` of its draws, weighted against its
    density. How the fit stopped (``post.stop_reasons``) goes into the
    verdict: a fit that halted is never "good".

    Args:
        post: a `flowvi.Posterior` fitted with `flowvi.fit` (it needs the target).
        key: PRNG key; the same key gives the same diagnostics.
        num_draws: draws per run.
        iw_k: draws per importance-weighted bound estimate (the bound is
            averaged over ``num_draws // iw_k`` groups in each run); None skips it.

    Returns:
        `Diagnostics`; ``print`` it for a table and a verdict in words.

    Raises:
        ValueError: no target, ``num_draws < 2 * iw_k``, or the target's log
            density is NaN at some draws.

    Examples:
        >>> import jax, flowvi
        >>> post = flowvi.fit(lambda x: -0.5 * (x ** 2).sum(), dim=2, flow="gaussian",
        ...                   steps=300, key=jax.random.key(0))
        >>> d = flowvi.diagnostics.diagnose(post, jax.random.key(1), num_draws=1000)
        >>> d.verdict.split(":")[0]
        'good'
    """
    key = as_key(key)
    x, log_p, log_q = importance_draws(post, key, num_draws)
    modes = mode_coverage(post, key, x, log_p)
    target = post.target
    return _analyse(x, log_p, log_q, names=target.names, iw_k=iw_k, stop_reasons=post.stop_reasons,
                    labels=target.labels, unconstrained=target.site_shapes is not None, modes=modes,
                    mixture_of=post.num_runs if getattr(post, "is_mixture", False) else None)[0]


def from_draws(x: np.ndarray, log_p: np.ndarray, log_q: np.ndarray, *, names=None,
               iw_k: int | None = 100, stop_reasons=None, labels=None, unconstrained: bool = False,
               cross_log_q: np.ndarray | None = None) -> Diagnostics:
    """`Diagnostics` from draws already made.

    Args:
        x: array of shape ``(runs, n, dim)``: each run's own draws.
        log_p: ``(runs, n)`` unnormalised target log density at the draws.
        log_q: ``(runs, n)`` log density of each draw under its own run.
        names: ``dim`` coordinate names (default ``x[0]``, ...).
        iw_k: draws per importance-weighted bound estimate; None skips it.
        stop_reasons: why each run of the fit stopped (``post.stop_reasons``),
            or None when unknown; a halted or interrupted fit is never "good".
        labels: ``dim`` labels for the printed table and the verdict (default
            `names`), e.g. ``log(tau)`` for an unconstrained coordinate.
        unconstrained: the coordinates are the flat, unconstrained ones of a
            target with named sites (the printed table says so).
        cross_log_q: ``(runs, runs, n)`` with ``[s, r, i] = log q_s(x[r, i])``,
            every run's log density at every run's draws: adds the mode
            coverage (`flowvi.mixture.coverage`, stacking weights estimated).

    Returns:
        `Diagnostics`.
    """
    modes = None
    if cross_log_q is not None:
        modes = coverage(np.asarray(log_p, np.float64), np.asarray(cross_log_q, np.float64))
    return _analyse(x, log_p, log_q, names=names, iw_k=iw_k, stop_reasons=stop_reasons, labels=labels,
                    unconstrained=unconstrained, modes=modes)[0]


def _analyse(x, log_p, log_q, *, names=None, iw_k=100, stop_reasons=None, labels=None,
             unconstrained=False, modes: ModeCoverage | None = None,
             mixture_of: int | None = None) -> tuple[Diagnostics, np.ndarray]:
    """`Diagnostics` plus the pooled PSIS-smoothed log weights, shaped ``(runs, n)``."""
    x = np.asarray(x, dtype=np.float64)
    log_p = np.asarray(log_p, dtype=np.float64)
    log_q = np.asarray(log_q, dtype=np.float64)
    if x.ndim != 3 or log_p.shape != x.shape[:2] or log_q.shape != x.shape[:2]:
        raise ValueError(f"expected x: (runs, n, dim), log_p and log_q: (runs, n); got shapes "
                         f"{x.shape}, {log_p.shape}, {log_q.shape}.")
    runs, n, dim = x.shape
    names = tuple(str(v) for v in names) if names is not None else tuple(f"x[{i}]" for i in range(dim))
    if len(names) != dim:
        raise ValueError(f"names has {len(names)} entries but the draws have dim={dim}.")
    labels = tuple(str(v) for v in labels) if labels is not None else names
    if len(labels) != dim:
        raise ValueError(f"labels has {len(labels)} entries but the draws have dim={dim}.")
    stop_reasons = () if stop_reasons is None else tuple(str(r) for r in stop_reasons)
    iw_k = check_optional_positive_int("iw_k", iw_k)
    if iw_k is not None and n < 2 * iw_k:
        raise ValueError(f"iw_k={iw_k} needs num_draws >= 2 * iw_k per run (got num_draws={n}); "
                         "pass a smaller iw_k, more draws, or iw_k=None to skip the bound.")
    bad_q = ~np.isfinite(log_q)
    if bad_q.any():
        raise ValueError(f"the flow's log density is non-finite at {int(bad_q.sum())} of {runs * n} of its own "
                         "draws; the fit has degenerated (see post.stop_reasons).")
    if np.isnan(log_p).any():
        raise ValueError(f"the target's log density is NaN at {int(np.isnan(log_p).sum())} of {runs * n} draws "
                         "of the flow; diagnostics need it finite or -inf (zero density).")
    log_w = log_p - log_q
    num_nonfinite = int(np.sum(np.isnan(log_w) | (log_w == np.inf)))
    num_zero = int(np.sum(log_w == -np.inf))

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        elbo_runs = log_w.mean(axis=1)
        elbo = float(elbo_runs.mean())
        elbo_se = _stratified_se(log_w)
        elbo_se_runs = _se_per_run(log_w)

        finite = log_w[np.isfinite(log_w)]
        top = float(np.max(finite)) if finite.size else 0.0
        w = np.exp(log_w - top)  # +inf weights stay +inf (log Z = +inf), zero ones 0
        z_runs = w.mean(axis=1)
        z = z_runs.mean()
        log_z = float(top + np.log(z))
        log_z_runs = top + np.log(z_runs)
        log_z_se = float(_stratified_se(w) / z)

        iw_bound = iw_bound_se = float("nan")
        if iw_k is not None:
            iw_k = int(iw_k)
            groups = n // iw_k
            grouped = log_w[:, :groups * iw_k].reshape(runs, groups, iw_k)
            iw = logsumexp(grouped, axis=-1) - np.log(iw_k)
            iw_bound, iw_bound_se = float(iw.mean()), _stratified_se(iw)

    smoothed, k_hat = psis(log_w.reshape(-1))
    k_hat_runs = np.array([k_hat]) if runs == 1 else psis(log_w)[1]
    weights = np.exp(smoothed - logsumexp(smoothed)) if np.isfinite(smoothed).any() else np.full(smoothed.shape, np.nan)
    ess = float(1.0 / np.sum(weights ** 2))
    flat = x.reshape(-1, dim)
    psis_mean = weights @ flat
    psis_sd = np.sqrt(weights @ (flat - psis_mean) ** 2)
    raw_mean, raw_sd, raw_biased = raw_bias(flat, weights, ess)

    rhat = ess_runs = None
    if runs > 1:
        rhat, ess_runs = across_runs(x)
    if modes is not None and mixture_of is not None:
        modes = dataclasses.replace(modes, k_hat=float(k_hat))
    verdict = judge(k_hat, rhat=rhat, elbo_runs=elbo_runs, elbo_se_runs=elbo_se_runs, names=labels,
                    stop_reasons=stop_reasons, num_zero_weights=num_zero, num_nonfinite_weights=num_nonfinite,
                    num_weights=runs * n, raw_biased=raw_biased, modes=modes, mixture=mixture_of is not None,
                    ess_fraction=ess / (runs * n))
    diag = Diagnostics(
        elbo=elbo, elbo_se=elbo_se, log_z=log_z, log_z_se=log_z_se, iw_bound=iw_bound,
        iw_bound_se=iw_bound_se, iw_k=iw_k, k_hat=k_hat, ess=ess, ess_fraction=ess / (runs * n),
        verdict=verdict, psis_mean=psis_mean, psis_sd=psis_sd, rhat=rhat, ess_runs=ess_runs,
        num_draws=n, num_runs=runs, names=names, elbo_runs=elbo_runs, log_z_runs=log_z_runs,
        k_hat_runs=np.asarray(k_hat_runs, dtype=np.float64), num_nonfinite_weights=num_nonfinite,
        num_zero_weights=num_zero, raw_mean=raw_mean, raw_sd=raw_sd, raw_biased=raw_biased,
        stop_reasons=stop_reasons, labels=labels, unconstrained=bool(unconstrained), modes=modes,
        mixture_of=mixture_of)
    return diag, smoothed.reshape(runs, n)


def raw_bias(x: np.ndarray, weights: np.ndarray, ess: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw moments of draws and whether they disagree with the importance-weighted ones.

    A coordinate is biased when ``|raw mean - PSIS mean| / PSIS sd`` exceeds
    `RAW_BIAS_TOL` plus 4 Monte Carlo standard errors of the difference, or
    ``|log(raw sd / PSIS sd)|`` exceeds ``log(1 + RAW_BIAS_TOL)`` plus 4 of
    its standard errors. The standard errors add the two estimates' variances
    (ignoring their positive correlation, which only makes the allowance
    wider): ``sd / sqrt(n)`` for a mean of ``n`` draws, and
    ``sqrt((kurtosis - 1) / (4 n))`` for a log sd, with ``n`` the number of
    draws for the raw moments and the importance ESS for the weighted ones.

    Args:
        x: ``(n, dim)`` draws of the proposal.
        weights: ``(n,)`` normalised (PSIS-smoothed) importance weights.
        ess: their effective sample size.

    Returns:
        ``raw_mean: (dim,)``, ``raw_sd: (dim,)`` and ``biased: (dim,)`` bool
        (False wherever the weighted moments are not finite or the PSIS sd is 0).
    """
    n = x.shape[0]
    raw_mean = x.mean(axis=0)
    centred = x - raw_mean
    raw_var = np.mean(centred ** 2, axis=0)
    raw_sd = np.sqrt(raw_var)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean = weights @ x
        var = weights @ (x - mean) ** 2
        sd = np.sqrt(var)
        raw_kurt = np.mean(centred ** 4, axis=0) / raw_var ** 2
        kurt = (weights @ (x - mean) ** 4) / var ** 2
        se_mean = np.sqrt(raw_var / n + var / ess) / sd
        se_log_sd = np.sqrt(np.maximum(raw_kurt - 1, 0) / (4 * n) + np.maximum(kurt - 1, 0) / (4 * ess))
        off_mean = np.abs(raw_mean - mean) / sd > RAW_BIAS_TOL + _MC_ALLOWANCE * se_mean
        off_sd = np.abs(np.log(raw_sd / sd)) > np.log1p(RAW_BIAS_TOL) + _MC_ALLOWANCE * se_log_sd
    judged = np.isfinite(mean) & np.isfinite(sd) & (sd > 0)
    return raw_mean, raw_sd, judged & (off_mean | off_sd)


def _se_per_run(values: np.ndarray) -> np.ndarray:
    return values.std(axis=1, ddof=1) / np.sqrt(values.shape[1])


def _stratified_se(values: np.ndarray) -> float:
    """Standard error of the mean over runs of per-run means: ``values: (runs, m)``."""
    return float(np.sqrt(np.sum(_se_per_run(values) ** 2)) / values.shape[0])


_LEVELS = ("good", "usable with care", "unreliable")


def _mode_notes(modes: ModeCoverage, mixture: bool, disagree: bool) -> list[str]:
    """What the verdict says about the modes the runs found."""
    n, k = modes.num_modes, modes.k_hat
    covered = not np.isnan(k) and k <= K_UNRELIABLE
    which = modes.describe()
    if mixture:
        if n == 1:
            return [f"The draws of the {len(modes.run_weights)} runs overlap (one group of runs: one mode, or "
                    "modes that the runs each span)."]
        if covered:
            return [f"Found {n} separated modes; the mixture covers them ({which})."]
        return [f"The runs disagree: they found {n} separated modes ({which}), and the mixture still misses "
                f"mass the target has (Pareto k-hat {k_text(k)} > {K_UNRELIABLE}): fit more runs, with a wider "
                "init_spread, or a more flexible flow."]
    if n == 1:
        return []
    lead = "They" if disagree else "The runs disagree: they"
    if covered:
        return [f"{lead} found {n} separated modes ({which}; stacking weights), and the mixture of the runs "
                f"covers them (Pareto k-hat {k_text(k)} against it): post.mixture(key) makes them one posterior."]
    return [f"{lead} found {n} separated modes ({which}; stacking weights), and even together the runs miss "
            f"mass the target has (Pareto k-hat {k_text(k)} of their mixture > {K_UNRELIABLE}): fit more runs, with "
            "a wider init_spread, or a more flexible flow."]


def _worse(level: str, cap: str) -> str:
    return max(level, cap, key=_LEVELS.index)


def fit_stopped_early(stop_reasons) -> tuple[list[int], list[int]]:
    """Runs whose fit halted (stopped for non-finite values) and runs that were interrupted.

    Args:
        stop_reasons: ``post.stop_reasons``, one sentence per run.

    Returns:
        ``(halted, interrupted)``: lists of run indices. A run halted when its
        reason starts with "stopped at step" or "stopped in epoch", or mentions
        non-finite values; it was interrupted when its reason starts with
        "interrupted" (Ctrl-C). Early stopping at a plateau and "completed all
        steps" are neither.
    """
    halted, interrupted = [], []
    for r, reason in enumerate(stop_reasons or ()):
        text = str(reason).lower()
        if text.startswith("interrupted"):
            interrupted.append(r)
        elif text.startswith(("stopped at step", "stopped in epoch")) or "non-finite" in text:
            halted.append(r)
    return halted, interrupted


def _first_clause(reason: str) -> str:
    return str(reason).split(":")[0].strip()


def _runs(indices: list[int], num_runs: int) -> str:
    return "" if num_runs == 1 else f"run{'s' if len(indices) > 1 else ''} {', '.join(map(str, indices))} "


def judge(k_hat: float, *, rhat: np.ndarray | None = None, elbo_runs: np.ndarray | None = None,
          elbo_se_runs: np.ndarray | None = None, names=None, stop_reasons=None, num_zero_weights: int = 0,
          num_nonfinite_weights: int = 0, num_weights: int | None = None,
          raw_biased: np.ndarray | None = None, modes: ModeCoverage | None = None, mixture: bool = False,
          ess_fraction: float | None = None) -> str:
    """The verdict in words, from k-hat (Yao et al. 2018 thresholds) and what else is known of the fit.

    k-hat sets the level: < 0.5 "good", 0.5-0.7 "usable with care" (but
    "unreliable" when the importance ESS is below `ESS_MIN` of the draws), > 0.7
    or not estimable (NaN, ``+inf``) "unreliable". ``-inf`` (constant weights)
    is "good". Then the level only gets worse:

    - "unreliable": some weight is ``+inf`` or NaN; runs disagree (R-hat > 1.1);
      a run halted (`fit_stopped_early`);
    - at most "usable with care": more than `ZERO_WEIGHT_SHARE` of the weights
      are zero; a run was interrupted; the raw draws are biased (``raw_biased``;
      only judged when k-hat <= 0.7, since otherwise the PSIS estimates are no
      reference).

    With `modes` (several runs): independent runs that found more than one mode
    are "unreliable" ("the runs disagree: they found N separated modes", and
    whether their mixture covers the target, i.e. its k-hat is at most 0.7); a
    `mixture` that found several modes says "found N separated modes; the
    mixture covers them" when its own k-hat is at most 0.7, and "the runs
    disagree" otherwise.

    Args:
        k_hat: Pareto k-hat of the importance weights.
        rhat: ``(dim,)`` R-hat across runs, or None.
        elbo_runs: ``(runs,)`` per-run ELBOs, or None.
        elbo_se_runs: ``(runs,)`` their standard errors.
        names: coordinate names (or labels) for the R-hat and bias messages.
        stop_reasons: ``post.stop_reasons``, or None when unknown.
        num_zero_weights: draws with zero weight (target log density ``-inf``).
        num_nonfinite_weights: draws with weight ``+inf`` or NaN.
        num_weights: all draws (needed for the zero-weight share; default:
            the zero weights are not judged).
        raw_biased: ``(dim,)`` bool from `raw_bias`, or None.
        modes: the runs' `flowvi.mixture.ModeCoverage`, or None.
        mixture: the draws are a mixture's (`flowvi.Posterior.mixture`), weighted against its density.
        ess_fraction: the importance ESS as a share of the draws, or None (not judged).

    Returns:
        A sentence or several; the first word(s) are "good", "usable with care" or "unreliable".
    """
    disagree = rhat is not None and np.nanmax(rhat) > RHAT_MAX
    split = modes is not None and modes.num_modes > 1 and not mixture
    halted, interrupted = fit_stopped_early(stop_reasons)
    num_runs = len(stop_reasons) if stop_reasons is not None else (len(elbo_runs) if elbo_runs is not None else 1)
    zero_share = num_zero_weights / num_weights if num_weights else 0.0
    material_zeros = zero_share > ZERO_WEIGHT_SHARE
    # Good weights only say that each run fits what it covers (runs that disagree), and say
    # nothing of a fit that failed or of the mass on impossible points.
    trust = ("" if disagree or split or halted or num_nonfinite_weights or material_zeros else
             "; the ELBO, the log Z estimate and importance-weighted estimates are reliable")
    k_judged = not (np.isnan(k_hat) or k_hat > K_UNRELIABLE)
    if np.isnan(k_hat) or k_hat == np.inf:
        level = "unreliable"
        text = ("Pareto k-hat could not be estimated (too few distinct finite weights, or an infinite "
                "one): the flow and the target hardly overlap.")
    elif k_hat == -np.inf:
        level = "good"
        text = (f"the importance weights are constant: the flow matches the target up to a constant{trust}."
                if not num_zero_weights else
                "the non-zero importance weights are constant: where the target has mass, the flow matches "
                f"it up to a constant{trust}.")
    elif k_hat < K_GOOD:
        level = "good"
        text = f"Pareto k-hat {k_text(k_hat)} < {K_GOOD}: the importance weights are well behaved{trust}."
    elif k_hat <= K_UNRELIABLE and ess_fraction is not None and ess_fraction < ESS_MIN:
        level = "unreliable"
        text = (f"Pareto k-hat {k_text(k_hat)} is between {K_GOOD} and {K_UNRELIABLE} and the importance ESS is "
                f"{100 * ess_fraction:.3g}% of the draws (below {100 * ESS_MIN:g}%): the flow is too narrow in much "
                "of the target, not only in one tail, and the PSIS estimates rest on a few draws; neither they "
                "nor the draws should be trusted. Fit longer, use a more flexible flow, or use NeuTra.")
    elif k_hat <= K_UNRELIABLE:
        level = "usable with care"
        text = (f"Pareto k-hat {k_text(k_hat)} is between {K_GOOD} and {K_UNRELIABLE}: the importance weights "
                "have infinite variance, so the flow is somewhat too narrow somewhere; use the "
                "PSIS-corrected estimates, and fit longer or with a more flexible flow for more.")
    else:
        level = "unreliable"
        text = (f"Pareto k-hat {k_text(k_hat)} > {K_UNRELIABLE}: the flow misses mass the target has (too "
                "narrow, wrongly shaped, or missing a mode); the ELBO, the log Z estimate and the draws "
                "should not be trusted. Fit longer, use a more flexible flow, or try several runs.")
    notes = []
    if halted:
        level = "unreliable"
        which = "; ".join(f"{_runs([r], num_runs)}{_first_clause(stop_reasons[r])}" for r in halted)
        notes.append(f"The fit halted ({which}; see post.stop_reasons): these diagnostics describe the flow "
                     "where it stopped, not a trained one. Fix the cause and fit again.")
    if interrupted:
        level = _worse(level, "usable with care")
        which = "; ".join(f"{_runs([r], num_runs)}{_first_clause(stop_reasons[r])}" for r in interrupted)
        notes.append(f"The fit did not finish ({which}): these diagnostics describe a partly trained flow.")
    if num_nonfinite_weights:
        level = "unreliable"
        notes.append(f"{num_nonfinite_weights} importance weight(s) are infinite (the target's log density is "
                     "+inf at those draws): the target is unbounded there, and no estimate from the weights "
                     "means anything.")
    if num_zero_weights and num_weights:
        share = f"{num_zero_weights} of {num_weights} draws ({100 * zero_share:.3g}%)"
        if material_zeros:
            level = _worse(level, "usable with care")
            notes.append(f"{share} have zero weight (the target's log density is -inf there): the flow puts "
                         "mass where the target has none, so the raw draws include impossible points and the "
                         "ELBO is -inf. Use the PSIS-corrected estimates or resample=True, and give the flow "
                         "an unconstrained target (transform constrained coordinates to R).")
        else:
            notes.append(f"{share} have zero weight (the target's log density is -inf there; at most "
                         f"{100 * ZERO_WEIGHT_SHARE:g}% is tolerated).")
    biased = np.flatnonzero(raw_biased) if raw_biased is not None and k_judged else np.zeros(0, int)
    if biased.size:
        level = _worse(level, "usable with care")
        shown = [names[i] if names is not None else f"x[{i}]" for i in biased[:3]]
        more = f" and {biased.size - 3} more" if biased.size > 3 else ""
        fine = k_hat < K_GOOD and not (num_nonfinite_weights or material_zeros)
        notes.append(f"{'The weights are fine but the' if fine else 'The'} raw draws are biased: use "
                     f"resample=True (or the PSIS-corrected estimates). For {', '.join(shown)}{more} "
                     f"the raw mean or sd differs from the PSIS-corrected one by more than {RAW_BIAS_TOL:g} PSIS "
                     f"sd (or a factor {1 + RAW_BIAS_TOL:g} in sd) beyond Monte Carlo error (the flow is too wide, "
                     "shifted or wrongly shaped there).")
    if disagree:
        level = "unreliable"
        worst = int(np.nanargmax(rhat))
        name = names[worst] if names is not None else f"x[{worst}]"
        notes.append(f"The runs disagree (R-hat {rhat[worst]:.2f} > {RHAT_MAX} for {name}): they landed in "
                     "different modes or some failed, so each run misses part of the target, and "
                     "k-hat cannot see a mode that no run found.")
    if modes is not None:
        notes += _mode_notes(modes, mixture, disagree)
        if split:
            level = "unreliable"
    if elbo_runs is not None and len(elbo_runs) > 1 and np.isfinite(elbo_runs).any():
        best = np.nanmax(elbo_runs)
        se = np.zeros_like(elbo_runs) if elbo_se_runs is None else np.nan_to_num(elbo_se_runs, nan=np.inf)
        gap = best - elbo_runs
        lagging = [r for r in range(len(elbo_runs))
                   if not np.isfinite(elbo_runs[r]) or (gap[r] > _ELBO_GAP and gap[r] > 5 * se[r])]
        if lagging:
            notes.append(f"Run(s) {', '.join(map(str, lagging))} reached a lower ELBO than the best run "
                         f"(by {', '.join(f'{gap[r]:.3g}' for r in lagging)} nats): a worse local optimum "
                         "or a failed fit.")
    return f"{level}: {' '.join([text, *notes])}"


__all__ = ["MODE_DRAWS", "RAW_BIAS_TOL", "ZERO_WEIGHT_SHARE", "Diagnostics", "K_GOOD", "K_UNRELIABLE", "RHAT_MAX",
           "across_runs", "diagnose", "fit_stopped_early", "from_draws", "importance_draws", "judge",
           "mixture_importance_draws", "mode_coverage", "psis", "raw_bias"]
