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

Several runs: the draws of every run are pooled, each draw weighted with the
density of the run that drew it, ``w = p~(x) / q_r(x)`` (not the mixture
density, whose inverse is slow for ``iaf`` and ``bnaf``). With equal draws per
run, the pooled log Z estimate is the log of the average of the runs' own
estimates of Z, and the ELBO the average of their ELBOs; both stay valid
(unbiased for Z, a lower bound for log Z) when runs differ, and per-run values
are reported too.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
from scipy.special import logsumexp

from flowvi.validation import as_key, check_optional_positive_int, check_positive_int

K_GOOD = 0.5
"""Pareto k-hat below this: the importance weights have finite variance; the fit is good."""
K_UNRELIABLE = 0.7
"""Pareto k-hat above this: estimates from the weights are unreliable (Yao et al. 2018)."""
RHAT_MAX = 1.1
"""R-hat across runs above this: the runs disagree."""
_ELBO_GAP = 1.0
"""A run whose ELBO is this many nats (and 5 standard errors) below the best run's is flagged."""


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
    finite = lw[np.isfinite(lw)]
    if finite.size and np.ptp(finite) < _CONSTANT_SPREAD:
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
            they are constant).
        ess, ess_fraction: importance ESS of the PSIS-smoothed weights, absolute
            and as a fraction of all draws.
        verdict: the judgement in words; starts with "good", "usable with
            care" or "unreliable".
        psis_mean, psis_sd: ``(dim,)`` PSIS-corrected posterior means and
            standard deviations of the flat coordinates.
        rhat, ess_runs: ``(dim,)`` R-hat and ESS across runs; None for one run.
        num_draws: draws per run; num_runs: runs.
        names: coordinate names.
        elbo_runs, log_z_runs, k_hat_runs: ``(num_runs,)`` per-run values.
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

    @property
    def reliable(self) -> bool:
        """True when k-hat <= 0.7 and, with several runs, every R-hat <= 1.1."""
        return not self.verdict.startswith("unreliable")

    def __str__(self) -> str:
        runs = f"{self.num_runs} runs x {self.num_draws} draws, pooled" if self.num_runs > 1 \
            else f"{self.num_draws} draws"
        rows = [
            ("ELBO", f"{self.elbo:.4f} ± {self.elbo_se:.4f}"),
            ("log Z (importance sampling)", f"{self.log_z:.4f} ± {self.log_z_se:.4f}"),
        ]
        if self.iw_k is not None:
            rows.append((f"IW bound (K={self.iw_k})", f"{self.iw_bound:.4f} ± {self.iw_bound_se:.4f}"))
        rows += [("Pareto k-hat", f"{self.k_hat:.3f}"),
                 ("importance ESS", f"{self.ess:.0f} ({100 * self.ess_fraction:.1f}%)")]
        if self.rhat is not None:
            rows.append(("max R-hat across runs", f"{np.nanmax(self.rhat):.3f}"))
        width = max(len(r[0]) for r in rows)
        lines = [f"flowvi diagnostics ({runs})"]
        lines += [f"  {name:<{width}}  {value}" for name, value in rows]
        lines += ["", *_wrap(f"verdict: {self.verdict}", 88, "  "), ""]
        head = ["coordinate", "PSIS mean", "PSIS sd"] + (["R-hat", "ESS(runs)"] if self.rhat is not None else [])
        table = []
        for i, name in enumerate(self.names[:_MAX_ROWS]):
            row = [name, f"{self.psis_mean[i]:.4g}", f"{self.psis_sd[i]:.4g}"]
            if self.rhat is not None:
                row += [f"{self.rhat[i]:.3f}", f"{self.ess_runs[i]:.0f}"]
            table.append(row)
        lines += _table(head, table)
        if len(self.names) > _MAX_ROWS:
            lines.append(f"  ... ({len(self.names) - _MAX_ROWS} more coordinates)")
        if self.num_runs > 1:
            lines.append("")
            lines += _table(["run", "ELBO", "log Z", "k-hat"],
                            [[str(r), f"{self.elbo_runs[r]:.4f}", f"{self.log_z_runs[r]:.4f}",
                              f"{self.k_hat_runs[r]:.3f}"] for r in range(self.num_runs)])
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Diagnostics(elbo={self.elbo:.4g}, log_z={self.log_z:.4g}, k_hat={self.k_hat:.3g}, "
                f"ess={self.ess:.0f}, num_runs={self.num_runs}, num_draws={self.num_draws}, "
                f"verdict={self.verdict.split(':')[0]!r})")


_MAX_ROWS = 20


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
    if post.target is None:
        raise ValueError("diagnostics need the target's log density, and this Posterior has none "
                         "(a fit_samples fit, or flowvi.load without target=); load it with its target.")
    num_draws = check_positive_int("num_draws", num_draws)
    x, log_q = post.sample_runs(as_key(key), num_draws)
    log_p = _log_density_batch(post.target.log_density, x)
    return (np.asarray(x, dtype=np.float64), np.asarray(log_p, dtype=np.float64),
            np.asarray(log_q, dtype=np.float64))


def diagnose(post, key: jax.Array, num_draws: int = 4000, *, iw_k: int | None = 100) -> Diagnostics:
    """Diagnose a fit from fresh draws of every run.

    With several runs the draws are pooled and each is weighted with its own
    run's density (see the module docstring); R-hat and ESS across runs are
    computed on the flat coordinates.

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
    x, log_p, log_q = importance_draws(post, key, num_draws)
    return from_draws(x, log_p, log_q, names=post.target.labels, iw_k=iw_k)


def from_draws(x: np.ndarray, log_p: np.ndarray, log_q: np.ndarray, *, names=None,
               iw_k: int | None = 100) -> Diagnostics:
    """`Diagnostics` from draws already made.

    Args:
        x: array of shape ``(runs, n, dim)``: each run's own draws.
        log_p: ``(runs, n)`` unnormalised target log density at the draws.
        log_q: ``(runs, n)`` log density of each draw under its own run.
        names: ``dim`` coordinate names (default ``x[0]``, ...).
        iw_k: draws per importance-weighted bound estimate; None skips it.

    Returns:
        `Diagnostics`.
    """
    return _analyse(x, log_p, log_q, names=names, iw_k=iw_k)[0]


def _analyse(x, log_p, log_q, *, names=None, iw_k=100) -> tuple[Diagnostics, np.ndarray]:
    """`Diagnostics` plus the pooled PSIS-smoothed log weights, shaped ``(runs, n)``."""
    x = np.asarray(x, dtype=np.float64)
    log_p = np.asarray(log_p, dtype=np.float64)
    log_q = np.asarray(log_q, dtype=np.float64)
    if x.ndim != 3 or log_p.shape != x.shape[:2] or log_q.shape != x.shape[:2]:
        raise ValueError(f"expected x: (runs, n, dim), log_p and log_q: (runs, n); got shapes "
                         f"{x.shape}, {log_p.shape}, {log_q.shape}.")
    runs, n, dim = x.shape
    names = tuple(names) if names is not None else tuple(f"x[{i}]" for i in range(dim))
    if len(names) != dim:
        raise ValueError(f"names has {len(names)} entries but the draws have dim={dim}.")
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

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        elbo_runs = log_w.mean(axis=1)
        elbo = float(elbo_runs.mean())
        elbo_se = _stratified_se(log_w)
        elbo_se_runs = _se_per_run(log_w)

        top = np.max(log_w)
        w = np.exp(log_w - top) if np.isfinite(top) else np.zeros_like(log_w)
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
    weights = np.exp(smoothed - logsumexp(smoothed))
    ess = float(1.0 / np.sum(weights ** 2))
    flat = x.reshape(-1, dim)
    psis_mean = weights @ flat
    psis_sd = np.sqrt(weights @ (flat - psis_mean) ** 2)

    rhat = ess_runs = None
    if runs > 1:
        rhat, ess_runs = across_runs(x)
    verdict = judge(k_hat, rhat=rhat, elbo_runs=elbo_runs, elbo_se_runs=elbo_se_runs, names=names)
    diag = Diagnostics(
        elbo=elbo, elbo_se=elbo_se, log_z=log_z, log_z_se=log_z_se, iw_bound=iw_bound,
        iw_bound_se=iw_bound_se, iw_k=iw_k, k_hat=k_hat, ess=ess, ess_fraction=ess / (runs * n),
        verdict=verdict, psis_mean=psis_mean, psis_sd=psis_sd, rhat=rhat, ess_runs=ess_runs,
        num_draws=n, num_runs=runs, names=names, elbo_runs=elbo_runs, log_z_runs=log_z_runs,
        k_hat_runs=np.asarray(k_hat_runs, dtype=np.float64))
    return diag, smoothed.reshape(runs, n)


def _se_per_run(values: np.ndarray) -> np.ndarray:
    return values.std(axis=1, ddof=1) / np.sqrt(values.shape[1])


def _stratified_se(values: np.ndarray) -> float:
    """Standard error of the mean over runs of per-run means: ``values: (runs, m)``."""
    return float(np.sqrt(np.sum(_se_per_run(values) ** 2)) / values.shape[0])


def judge(k_hat: float, *, rhat: np.ndarray | None = None, elbo_runs: np.ndarray | None = None,
          elbo_se_runs: np.ndarray | None = None, names=None) -> str:
    """The verdict in words, from k-hat (Yao et al. 2018 thresholds) and, with runs, R-hat.

    Args:
        k_hat: Pareto k-hat of the importance weights.
        rhat: ``(dim,)`` R-hat across runs, or None.
        elbo_runs: ``(runs,)`` per-run ELBOs, or None.
        elbo_se_runs: ``(runs,)`` their standard errors.
        names: coordinate names for the R-hat message.

    Returns:
        A sentence or three; the first word(s) are "good", "usable with care" or "unreliable".
    """
    disagree = rhat is not None and np.nanmax(rhat) > RHAT_MAX
    # With runs that disagree, good weights only say that each run fits what it covers.
    trust = ("" if disagree else
             "; the ELBO, the log Z estimate and importance-weighted estimates are reliable")
    if np.isnan(k_hat) or k_hat == np.inf:
        level = "unreliable"
        text = ("Pareto k-hat could not be estimated (too few distinct finite weights): the flow "
                "and the target hardly overlap.")
    elif k_hat == -np.inf:
        level = "good"
        text = f"the importance weights are constant: the flow matches the target up to a constant{trust}."
    elif k_hat < K_GOOD:
        level = "good"
        text = f"Pareto k-hat {k_hat:.2f} < {K_GOOD}: the importance weights are well behaved{trust}."
    elif k_hat <= K_UNRELIABLE:
        level = "usable with care"
        text = (f"Pareto k-hat {k_hat:.2f} is between {K_GOOD} and {K_UNRELIABLE}: the importance weights "
                "have infinite variance, so the flow is somewhat too narrow somewhere; use the "
                "PSIS-corrected estimates, and fit longer or with a more flexible flow for more.")
    else:
        level = "unreliable"
        text = (f"Pareto k-hat {k_hat:.2f} > {K_UNRELIABLE}: the flow misses mass the target has (too "
                "narrow, wrongly shaped, or missing a mode); the ELBO, the log Z estimate and the draws "
                "should not be trusted. Fit longer, use a more flexible flow, or try several runs.")
    notes = []
    if disagree:
        level = "unreliable"
        worst = int(np.nanargmax(rhat))
        name = names[worst] if names is not None else f"x[{worst}]"
        notes.append(f"The runs disagree (R-hat {rhat[worst]:.2f} > {RHAT_MAX} for {name}): they landed in "
                     "different modes or some failed, so each run misses part of the target, and "
                     "k-hat cannot see a mode that no run found.")
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


__all__ = ["Diagnostics", "K_GOOD", "K_UNRELIABLE", "RHAT_MAX", "across_runs", "diagnose", "from_draws",
           "importance_draws", "judge", "psis"]
