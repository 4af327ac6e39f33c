"""A reference posterior for the tall logistic regressions of `benchmarks.big_data`, by importance sampling.

At N = 10^6 rows a long NUTS reference costs hours on a CPU (every leapfrog step is a pass over
the data; at N = 2 x 10^5, 4 x 1500 iterations took 737 s, and N = 10^6 had not finished after 41
minutes). There the posterior is within a few percent of its Laplace approximation (Bernstein-von
Mises), so self-normalised importance sampling from a heavy-tailed version of it is both cheap and
exact up to Monte Carlo error, which it reports:

1. the mode, by Newton's method on the full data (float64; the log posterior is concave);
2. the proposal, a multivariate Student-t with `DOF` degrees of freedom, centred at the mode, with
   the inverse negative Hessian there as its scale (heavier tails than the target's);
3. ``draws`` proposals, their log weights ``log p~(w) - log t(w)`` from one full-data pass each,
   smoothed by ArviZ's PSIS; moments are the weighted mean and sd.

``quality`` reports PSIS's k-hat (trust it below 0.7; here it is near 0), the weights' effective
sample size, and the largest Monte Carlo standard error of a mean in posterior sds
(``1 / sqrt(ESS)``). Nothing here uses flowvi. `benchmarks.big_data` checks it against the NUTS
reference at N = 2 x 10^5 (``--check-importance``).
"""

from __future__ import annotations

import numpy as np

DOF = 10.0
CHUNK = 64
"""Proposals per full-data pass: ``(N, CHUNK)`` float64 logits, 512 MB at N = 10^6."""
NEWTON_STEPS = 30


def _log_posterior_chunk(X, y, W):
    """Log prior + log likelihood of the columns of ``W: (d, m)``: ``(m,)``; X: (N, d), y: (N,)."""
    import jax.numpy as jnp

    logits = X @ W
    loglik = y @ logits - jnp.sum(jnp.maximum(logits, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(logits))), axis=0)
    return loglik - 0.5 * jnp.sum(W ** 2, axis=0)


def laplace(X, y):
    """Mode ``(d,)`` and negative Hessian ``(d, d)`` of the log posterior ``N(0, I)`` prior, logit likelihood."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def newton(w):
        p = jax.nn.sigmoid(X @ w)
        grad = X.T @ (y - p) - w
        hess = (X * (p * (1 - p))[:, None]).T @ X + jnp.eye(w.shape[0])
        return w + jnp.linalg.solve(hess, grad), hess, jnp.max(jnp.abs(grad))

    w = jnp.zeros(X.shape[1], X.dtype)
    for _ in range(NEWTON_STEPS):
        w, hess, gmax = newton(w)
        if float(gmax) < 1e-8:
            break
    _, hess, _ = newton(w)
    return np.asarray(w), np.asarray(hess)


def run_importance(X, y, draws: int, seed: int) -> dict:
    """Importance-sampling moments of the posterior of ``(X: (N, d), y: (N,))`` (see the module docstring).

    Returns a record with ``moments`` (``{"w[i]": (mean, sd)}``), ``ess``, ``k_hat``,
    ``max_mcse_sd`` and the Laplace approximation's own moments (``laplace_sd``).
    """
    import arviz as az
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    X, y = jnp.asarray(X, jnp.float64), jnp.asarray(y, jnp.float64)
    d = X.shape[1]
    mode, neg_hess = laplace(X, y)
    cov = np.linalg.inv(neg_hess)
    chol = np.linalg.cholesky(cov)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((draws, d))
    g = rng.chisquare(DOF, size=(draws, 1)) / DOF
    W = mode + (z / np.sqrt(g)) @ chol.T
    # log t density up to a constant: -(dof + d)/2 log(1 + r^2 / dof), r the Mahalanobis distance
    r2 = np.sum(np.linalg.solve(chol, (W - mode).T) ** 2, axis=0)
    log_t = -0.5 * (DOF + d) * np.log1p(r2 / DOF)
    chunk = jax.jit(_log_posterior_chunk)
    log_p = np.concatenate([np.asarray(chunk(X, y, jnp.asarray(W[i:i + CHUNK].T)))
                            for i in range(0, draws, CHUNK)])
    log_w = log_p - log_t
    smoothed, k_hat = az.psislw(log_w - log_w.max())
    w = np.exp(np.asarray(smoothed) - np.max(smoothed))
    w /= w.sum()
    mean = w @ W
    sd = np.sqrt(w @ (W - mean) ** 2)
    ess = float(1.0 / np.sum(w ** 2))
    return {"moments": {f"w[{i}]": (float(mean[i]), float(sd[i])) for i in range(d)},
            "ess": ess, "k_hat": float(np.asarray(k_hat)), "max_mcse_sd": float(1.0 / np.sqrt(ess)),
            "laplace_sd": np.sqrt(np.diag(cov)).tolist(), "draws": draws, "dof": DOF, "seed": seed}
