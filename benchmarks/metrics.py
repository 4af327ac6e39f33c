"""Quality metrics computed identically for every method from its own fresh draws.

All metrics use ``log_w = log p(x) - log q(x)`` for draws ``x ~ q`` (20,000 by
default), where ``log p`` is the target's (possibly unnormalised) log density.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import logsumexp


def _psis_khat(log_w: np.ndarray) -> float:
    """Pareto k-hat of the importance weights (arviz.psislw)."""
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # arviz warns when k-hat is large; we report it instead
        _, khat = az.psislw(np.asarray(log_w, np.float64))
    return float(np.asarray(khat))


def compute(draws: np.ndarray, log_q: np.ndarray, log_p: np.ndarray, reference: dict) -> dict:
    """Metrics of an approximation from its draws (n, dim), their log q and log p (n,).

    Returns a dict of floats (NaN where undefined):
      elbo: mean(log_w).
      kl: log Z - elbo (reverse KL(q || p)); NaN when log Z is unknown.
      is_log_z: log mean exp(log_w), the importance-sampling estimate of log Z.
      is_log_z_error: is_log_z - log Z (NaN when log Z is unknown).
      khat: Pareto k-hat of the importance weights (< 0.7 reliable importance sampling).
      ess_frac: (sum w)^2 / (n sum w^2), raw (unsmoothed) weights, in (0, 1].
      mean_err_sd: max_i |mean_q_i - mean_i| / sd_i (q's plain draw means vs reference).
      log_sd_ratio: log(sd_q_i / sd_i) at the coordinate where |log ratio| is largest
        (negative: q too narrow there).
      nonfinite: number of draws with non-finite log_w (they are dropped).
    """
    draws = np.asarray(draws, np.float64)
    log_w = np.asarray(log_p, np.float64) - np.asarray(log_q, np.float64)
    ok = np.isfinite(log_w) & np.all(np.isfinite(draws), axis=1)
    nonfinite = int((~ok).sum())
    draws, log_w = draws[ok], log_w[ok]
    n = len(log_w)
    log_z = reference.get("log_z")
    log_z = float("nan") if log_z is None else float(log_z)
    if n < 2:
        nan = float("nan")
        return dict(elbo=nan, kl=nan, is_log_z=nan, is_log_z_error=nan, khat=nan, ess_frac=nan,
                    mean_err_sd=nan, log_sd_ratio=nan, nonfinite=nonfinite)
    elbo = float(log_w.mean())
    is_log_z = float(logsumexp(log_w) - np.log(n))
    ess_frac = float(np.exp(2.0 * logsumexp(log_w) - logsumexp(2.0 * log_w)) / n)
    ref_mean = np.asarray(reference["mean"], np.float64)
    ref_sd = np.asarray(reference["sd"], np.float64)
    mean_err = np.abs(draws.mean(0) - ref_mean) / ref_sd
    with np.errstate(divide="ignore"):
        log_ratio = np.log(draws.std(0) / ref_sd)
    worst = int(np.argmax(np.abs(log_ratio)))
    return dict(
        elbo=elbo,
        kl=log_z - elbo,
        is_log_z=is_log_z,
        is_log_z_error=is_log_z - log_z,
        khat=_psis_khat(log_w),
        ess_frac=ess_frac,
        mean_err_sd=float(mean_err.max()),
        log_sd_ratio=float(log_ratio[worst]),
        nonfinite=nonfinite,
    )
