"""Mixtures of runs: stacking weights, and which runs found the same mode.

Reverse KL is mode-seeking: each run of a multimodal target settles on some of
its modes. `flowvi.Posterior.mixture` turns ``num_runs`` runs into one
posterior with density ``q_w(x) = sum_r w_r q_r(x)``; this module holds the
arithmetic, on draws and log densities already made (numpy, float64).

**Stacking weights** (after Yao, Vehtari and Gelman 2022, "Stacking for
non-mixing Bayesian computations: the curse and blessing of multimodal
posteriors", JMLR 23(79)). There the weights of non-mixing chains maximise the
log score of held-out data, ``sum_i log sum_r w_r p(y_i | chain r)``. A target
known only up to its constant has no data; its draws play their part. The
weights maximise the log score of draws of the target,

    S(w) = E_p[ log sum_r w_r q_r(x) ]  =  -KL(p || q_w) - H(p),

i.e. they minimise the forward KL from the target to the mixture. ``E_p`` is
estimated by self-normalised importance sampling from draws the runs already
have: ``n`` draws ``x_ri`` of every run ``r`` are a stratified sample of the
equal-weight mixture ``qbar = (1/R) sum_s q_s``, so with the *mixture* density
in the denominator (the balance heuristic of multiple importance sampling;
Veach and Guibas 1995, Owen and Zhou 2000)

    omega_ri = p~(x_ri) / qbar(x_ri),        qbar(x) = (1/R) sum_s q_s(x),
    S_hat(w) = sum_ri omegat_ri log sum_s w_s q_s(x_ri),   omegat = omega / sum omega

(``omegat`` Pareto-smoothed, `flowvi.diagnostics.psis`). ``S_hat`` is concave
in ``w``; its maximum on the simplex is the fixed point of the EM update

    w_s  <-  sum_ri omegat_ri * w_s q_s(x_ri) / sum_t w_t q_t(x_ri),

(the expected share of the target's mass that run ``s`` explains), iterated
from equal weights until no weight moves by more than `EM_TOL`. Runs on
separated modes get the importance-sampling estimate of their mode's mass;
runs on the same mode share its mass (two identical runs keep the ratio they
start with, equal), instead of counting it twice. Needs ``log q_s`` of every
run at every run's draws: ``R^2 n`` densities, an inverse pass for ``iaf`` and
root finding for ``bnaf``.

Why not the mixture's ELBO, ``E_{q_w}[log p~ - log q_w]``: its stationary
points give runs on separated modes weights ``w_r ~ Z_r exp(-KL(q_r || p_r))``,
so a run that fits its mode too narrowly (as reverse KL does) loses weight in
proportion to its error; the log score weights it by the mass of its mode.

**Which runs found one mode**: runs ``r`` and ``s`` overlap by their
Bhattacharyya coefficient ``BC = int sqrt(q_r q_s) = E_{q_r}[sqrt(q_s / q_r)]``,
estimated from each run's own draws and averaged over the two directions.
``BC`` is in [0, 1] and its estimator has variance at most ``1 / n`` (the
variance of ``sqrt(q_s / q_r)`` under ``q_r`` is ``1 - BC^2``), unlike a
cross-entropy, which is unbounded for runs that do not overlap. Two runs are
one mode when ``BC > OVERLAP`` = ``exp(-1/2)``: for two Gaussians of equal
covariance ``BC = exp(-delta^2 / 8)`` with ``delta`` the Mahalanobis distance
of their means, so the rule joins them exactly when ``delta < 2``, when their
equal mixture is unimodal. Modes are the connected components of that
relation; a mode's weight is the sum of its runs' weights. A "mode" is thus a
group of runs: a run spread over two of the target's modes joins the runs on
either, so the count can be below the target's while the mixture covers all.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.special import logsumexp

EM_ITERATIONS = 500
"""EM updates of the stacking weights at most."""
EM_TOL = 1e-9
"""EM stops when no weight changes by more than this."""
OVERLAP = float(np.exp(-0.5))
"""Bhattacharyya coefficient above which two runs count as one mode (means < 2 sd apart for equal Gaussians)."""


def check_cross(log_p: np.ndarray | None, cross_log_q: np.ndarray) -> tuple[int, int]:
    """``(runs, n)`` of ``cross_log_q: (runs, runs, n)``; ValueError on other shapes or non-finite own densities."""
    cross = np.asarray(cross_log_q)
    if cross.ndim != 3 or cross.shape[0] != cross.shape[1]:
        raise ValueError(f"cross_log_q must have shape (runs, runs, n): log q_s at run r's draws in "
                         f"[s, r, i]; got {cross.shape}.")
    runs, _, n = cross.shape
    if log_p is not None and np.shape(log_p) != (runs, n):
        raise ValueError(f"log_p must have shape (runs, n) = ({runs}, {n}), got {np.shape(log_p)}.")
    own = cross[np.arange(runs), np.arange(runs)]
    if not np.all(np.isfinite(own)):
        raise ValueError("a run's log density is non-finite at some of its own draws; the fit has degenerated.")
    return runs, n


def mixture_log_weights(log_p: np.ndarray, cross_log_q: np.ndarray) -> np.ndarray:
    """Log importance weights ``log p~(x_ri) - log qbar(x_ri)`` of the pooled draws: ``(runs, n)``.

    Args:
        log_p: ``(runs, n)`` unnormalised target log density at each run's draws.
        cross_log_q: ``(runs, runs, n)``; ``[s, r, i]`` is ``log q_s`` at run ``r``'s draw ``i``.
    """
    runs, _ = check_cross(log_p, cross_log_q)
    cross = np.asarray(cross_log_q, np.float64)
    return np.asarray(log_p, np.float64) - (logsumexp(cross, axis=0) - np.log(runs))


def stacking_weights(log_p: np.ndarray, cross_log_q: np.ndarray, *, smooth: bool = True
                     ) -> tuple[np.ndarray, dict]:
    """Stacking weights of the runs: the EM fixed point of the module docstring.

    Args:
        log_p: ``(runs, n)`` unnormalised target log density at each run's draws.
        cross_log_q: ``(runs, runs, n)``; ``[s, r, i]`` is ``log q_s(x_ri)``.
        smooth: Pareto-smooth the importance weights (PSIS) before use.

    Returns:
        ``weights: (runs,)`` on the simplex, and a record: ``k_hat`` of the
        importance weights against the equal-weight mixture (above 0.7 the runs
        together miss mass the target has, and the weights are unreliable),
        ``iterations`` and the estimated log score ``log_score`` (up to the
        target's unknown entropy).

    Raises:
        ValueError: shapes that do not match, or no draw with positive finite weight.
    """
    runs, n = check_cross(log_p, cross_log_q)
    cross = np.asarray(cross_log_q, np.float64).reshape(runs, runs * n)
    log_w = mixture_log_weights(log_p, cross_log_q).reshape(-1)
    if not np.any(np.isfinite(log_w)):
        raise ValueError("no draw of any run has a positive, finite importance weight: the runs and the target "
                         "do not overlap, so no weights can be estimated.")
    k_hat = float("nan")
    if smooth:
        from flowvi.diagnostics import psis
        smoothed, k_hat = psis(log_w)
        if np.all(np.isfinite(smoothed) | (smoothed == -np.inf)):
            log_w = smoothed
    log_w = np.where(np.isnan(log_w) | (log_w == np.inf), -np.inf, log_w)
    omega = np.exp(log_w - logsumexp(log_w))
    keep = omega > 0
    omega, cross = omega[keep], cross[:, keep]
    weights = np.full(runs, 1.0 / runs)
    iterations = 0
    for iterations in range(1, EM_ITERATIONS + 1):  # noqa: B007 - the count is reported
        with np.errstate(divide="ignore"):
            joint = np.log(weights)[:, None] + cross
        resp = np.exp(joint - logsumexp(joint, axis=0, keepdims=True))
        new = resp @ omega
        new = new / new.sum()
        done = np.max(np.abs(new - weights)) <= EM_TOL
        weights = new
        if done:
            break
    with np.errstate(divide="ignore"):
        score = float(omega @ logsumexp(np.log(weights)[:, None] + cross, axis=0))
    return weights, {"k_hat": float(k_hat), "iterations": int(iterations), "log_score": score}


def overlap(cross_log_q: np.ndarray) -> np.ndarray:
    """Bhattacharyya coefficients of every pair of runs, ``(runs, runs)``, symmetric, 1 on the diagonal.

    ``B[r, s]`` averages ``mean_i exp((log q_s(x_ri) - log q_r(x_ri)) / 2)`` over
    run ``r``'s draws and the same over run ``s``'s (see the module docstring;
    each estimate has standard error at most ``1 / sqrt(n)``).
    """
    runs, _ = check_cross(None, cross_log_q)
    cross = np.asarray(cross_log_q, np.float64)
    own = cross[np.arange(runs), np.arange(runs)]  # (runs, n): log q_r at run r's draws
    with np.errstate(over="ignore"):
        one_way = np.exp(np.minimum(0.5 * (cross - own[None, :, :]), 50.0)).mean(axis=-1)  # [s, r]
    both = 0.5 * (one_way + one_way.T)
    both = np.minimum(both, 1.0)
    np.fill_diagonal(both, 1.0)
    return both


def modes(overlap_matrix: np.ndarray, threshold: float = OVERLAP) -> tuple[tuple[int, ...], ...]:
    """Groups of runs that found one mode: connected components of ``overlap > threshold``.

    Args:
        overlap_matrix: ``(runs, runs)`` from `overlap`.
        threshold: the overlap above which two runs are one mode (default `OVERLAP`).

    Returns:
        Tuples of run indices, each sorted, ordered by their first run.
    """
    b = np.asarray(overlap_matrix)
    runs = b.shape[0]
    label = list(range(runs))

    def root(i: int) -> int:
        while label[i] != i:
            label[i] = label[label[i]]
            i = label[i]
        return i

    for r in range(runs):
        for s in range(r + 1, runs):
            if b[r, s] > threshold:
                label[root(s)] = root(r)
    groups: dict[int, list[int]] = {}
    for r in range(runs):
        groups.setdefault(root(r), []).append(r)
    return tuple(tuple(g) for g in sorted(groups.values()))


@dataclasses.dataclass(frozen=True, eq=False)
class ModeCoverage:
    """Which runs found which mode, and the weight of each mode.

    Attributes:
        groups: tuples of run indices, one per mode (`modes`).
        overlap: ``(runs, runs)`` Bhattacharyya coefficients (`overlap`).
        run_weights: ``(runs,)`` the runs' weights: a mixture's own, or the
            stacking estimate (`stacking_weights`) for independent runs.
        mode_weights: ``(len(groups),)`` the sums of ``run_weights`` over each group.
        k_hat: Pareto k-hat of the importance weights against the runs'
            equal-weight mixture (for independent runs; < 0.7: together the
            runs cover the target), or against the mixture itself (a mixture).
        num_draws: draws per run the overlaps (and estimated weights) come from.
        weights_from: ``"stacking estimate"`` or ``"mixture weights"``.
    """

    groups: tuple[tuple[int, ...], ...]
    overlap: np.ndarray
    run_weights: np.ndarray
    mode_weights: np.ndarray
    k_hat: float
    num_draws: int
    weights_from: str

    @property
    def num_modes(self) -> int:
        """Number of separated modes the runs found."""
        return len(self.groups)

    def describe(self) -> str:
        """The groups in words: ``runs 0, 1 (weight 0.3); run 2 (weight 0.7)``."""
        return "; ".join(f"run{'s' if len(g) > 1 else ''} {', '.join(map(str, g))} (weight {w:.3g})"
                         for g, w in zip(self.groups, self.mode_weights, strict=True))


def coverage(log_p: np.ndarray, cross_log_q: np.ndarray, run_weights: np.ndarray | None = None,
             k_hat: float | None = None) -> ModeCoverage:
    """`ModeCoverage` of runs from their draws.

    Args:
        log_p: ``(runs, n)`` unnormalised target log density at each run's draws.
        cross_log_q: ``(runs, runs, n)``; ``[s, r, i]`` is ``log q_s(x_ri)``.
        run_weights: a mixture's weights; None estimates them (`stacking_weights`).
        k_hat: a mixture's own k-hat; None takes that of the weights against the
            runs' equal-weight mixture.
    """
    b = overlap(cross_log_q)
    groups = modes(b)
    if run_weights is None:
        w, info = stacking_weights(log_p, cross_log_q)
        source, k = "stacking estimate", info["k_hat"]
    else:
        w, source, k = np.asarray(run_weights, np.float64), "mixture weights", k_hat
    if k is None:
        from flowvi.diagnostics import psis
        k = psis(mixture_log_weights(log_p, cross_log_q).reshape(-1))[1]
    mode_w = np.array([w[list(g)].sum() for g in groups])
    return ModeCoverage(groups, b, w, mode_w, float(k), int(np.shape(log_p)[1]), source)


def check_weights(weights, num_runs: int, name: str = "weights") -> np.ndarray:
    """``weights`` as a float64 ``(num_runs,)`` array on the simplex (normalised); ValueError naming `name`."""
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be {num_runs} non-negative numbers, one per run; got {weights!r}.") from err
    if w.shape != (num_runs,):
        raise ValueError(f"{name} must have shape ({num_runs},), one per run; got shape {w.shape}.")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError(f"{name} must be finite, non-negative and not all zero; got {w.tolist()}.")
    return w / w.sum()


def stratified_counts(u: float, weights: np.ndarray, num_draws: int) -> np.ndarray:
    """Draws per run for `num_draws` mixture draws: systematic (stratified) allocation with offset ``u`` in [0, 1).

    Run ``r`` gets ``floor(N c_r + u) - floor(N c_{r-1} + u)`` draws, ``c`` the
    cumulative weights: within one of ``N w_r``, and ``N w_r`` on average over ``u``,
    so the pooled draws are an unbiased (and less variable than multinomial) sample of the mixture.
    """
    edges = np.floor(num_draws * np.concatenate([[0.0], np.cumsum(weights)]) + u).astype(np.int64)
    edges[0], edges[-1] = 0, num_draws  # u < 1, and the cumulative sum may round below 1
    counts = np.diff(edges)
    return np.maximum(counts, 0)


__all__ = ["EM_ITERATIONS", "EM_TOL", "OVERLAP", "ModeCoverage", "check_weights", "coverage", "mixture_log_weights",
           "modes", "overlap", "stacking_weights", "stratified_counts"]
