"""Benchmark targets: plain JAX log densities with known (or cached) answers.

Each target is a `Target` with ``log_density`` ((dim,) -> scalar, jax-traceable),
``dim`` and ``reference``: a dict with ``mean`` and ``sd`` (arrays of length dim)
and ``log_z`` (float, or None where it is not known exactly).

``logreg`` wraps ``models/logistic_regression.py`` (a NumPyro model plus data);
its reference mean and sd come from a long NUTS run cached under
``benchmarks/.cache/`` on first use. If that model file is missing the target
raises `TargetUnavailable` and runs on it are recorded as skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import pathlib
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

import models.banana

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE_DIR = pathlib.Path(__file__).resolve().parent / ".cache"
LOGREG_FILE = ROOT / "models" / "logistic_regression.py"
_LOG_2PI = float(np.log(2.0 * np.pi))


class TargetUnavailable(RuntimeError):
    """The target cannot be built here (e.g. its model file is absent)."""


@dataclasses.dataclass
class Target:
    """A log density with its dimension and reference answers."""

    name: str
    log_density: Callable[[jax.Array], jax.Array]
    dim: int
    reference: dict
    description: str = ""


def _rotation(dim: int, seed: int) -> np.ndarray:
    """A fixed random orthogonal matrix (QR of a seeded Gaussian matrix)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def banana(dim: int = 2) -> Target:
    """Product of dim/2 independent 2-D bananas, rotated by a fixed orthogonal Q when dim > 2.

    Each pair: z0 ~ N(0, 1), z1 | z0 ~ N(z0**2, 0.5**2) (as ``models/banana.py``), so a
    pair has mean [0, 1], sd [1, 1.5], uncorrelated coordinates and normaliser pi.
    With x = Q z the coordinates are coupled; mean = Q m, cov = Q diag(s**2) Q^T,
    log Z = (dim/2) log(pi) since |det Q| = 1. The density is unnormalised.
    """
    if dim % 2:
        raise ValueError("banana needs an even dim")
    q = _rotation(dim, seed=dim) if dim > 2 else np.eye(dim)
    qj = jnp.asarray(q, jnp.float32)

    def log_density(x):
        z = (qj.T @ x).reshape(-1, 2)
        return jnp.sum(jax.vmap(models.banana.log_density)(z))

    m = np.tile([0.0, 1.0], dim // 2)
    var = np.tile([1.0, 2.25], dim // 2)
    ref = {"mean": q @ m, "sd": np.sqrt((q**2) @ var), "log_z": dim / 2 * float(np.log(np.pi))}
    return Target(f"banana{dim}d", log_density, dim, ref, banana.__doc__.splitlines()[0])


def funnel(dim: int = 10) -> Target:
    """Neal's funnel: v ~ N(0, 3**2), x_i | v ~ N(0, exp(v)); normalised (log Z = 0)."""

    def log_density(x):
        v, xs = x[0], x[1:]
        lp_v = -0.5 * (v / 3.0) ** 2 - jnp.log(3.0) - 0.5 * _LOG_2PI
        return lp_v + jnp.sum(-0.5 * xs**2 * jnp.exp(-v) - 0.5 * v - 0.5 * _LOG_2PI)

    ref = {"mean": np.zeros(dim), "sd": np.array([3.0] + [float(np.exp(2.25))] * (dim - 1)),
           "log_z": 0.0}
    return Target(f"funnel{dim}d", log_density, dim, ref, funnel.__doc__.splitlines()[0])


def ring(components: int = 8, radius: float = 4.0, scale: float = 0.5) -> Target:
    """Equal mixture of 8 isotropic 2-D Gaussians (sd 0.5) on a circle of radius 4; log Z = 0."""
    ang = 2.0 * np.pi * np.arange(components) / components
    centres = jnp.asarray(np.stack([radius * np.cos(ang), radius * np.sin(ang)], 1), jnp.float32)
    log_norm = float(-np.log(2.0 * np.pi * scale**2) - np.log(components))

    def log_density(x):
        return logsumexp(-0.5 * jnp.sum((x - centres) ** 2, axis=1) / scale**2) + log_norm

    sd = float(np.sqrt(radius**2 / 2.0 + scale**2))
    ref = {"mean": np.zeros(2), "sd": np.full(2, sd), "log_z": 0.0}
    return Target("ring2d", log_density, 2, ref, ring.__doc__.splitlines()[0])


def ill_gaussian(dim: int = 50, cond: float = 1e4) -> Target:
    """Rotated Gaussian, covariance eigenvalues log-spaced over [1/sqrt(cond), sqrt(cond)].

    Unnormalised: log p(x) = -0.5 (x - mu)^T P (x - mu), so
    log Z = 0.5 * (dim * log(2 pi) + log det Sigma) exactly.
    """
    rng = np.random.default_rng(50)
    eig = np.logspace(-0.5 * np.log10(cond), 0.5 * np.log10(cond), dim)
    q = _rotation(dim, seed=1000 + dim)
    mu = rng.normal(size=dim)
    cov = (q * eig) @ q.T
    prec = jnp.asarray((q / eig) @ q.T, jnp.float32)
    muj = jnp.asarray(mu, jnp.float32)

    def log_density(x):
        d = x - muj
        return -0.5 * d @ (prec @ d)

    ref = {"mean": mu, "sd": np.sqrt(np.diag(cov)),
           "log_z": 0.5 * (dim * _LOG_2PI + float(np.sum(np.log(eig))))}
    return Target(f"gauss{dim}d", log_density, dim, ref, ill_gaussian.__doc__.splitlines()[0])


def _load_module(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(f"_bench_model_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _numpyro_log_density(module):
    """Flatten a model file's NumPyro model into (log_density on unconstrained R^dim, dim)."""
    from jax.flatten_util import ravel_pytree
    from numpyro.handlers import block
    from numpyro.infer.util import initialize_model

    info = initialize_model(jax.random.key(0), module.model, model_args=tuple(module.args),
                            model_kwargs=dict(getattr(module, "kwargs", {})))
    flat, unravel = ravel_pytree(info.param_info.z)
    # block(): when a NumPyro-model peer wraps this density in numpyro.factor, the inner
    # model's sample sites must stay invisible to the outer model's handlers.
    potential = block(info.potential_fn)
    return (lambda x: -potential(unravel(x))), int(flat.shape[0])


def _nuts_reference(log_density, dim: int, cache: pathlib.Path, chains=4, warmup=2000,
                    samples=10000) -> dict:
    """Long NUTS run on `log_density`; mean, sd and convergence diagnostics cached to `cache`."""
    if not cache.exists():
        from numpyro.diagnostics import effective_sample_size, split_gelman_rubin
        from numpyro.infer import MCMC, NUTS

        mcmc = MCMC(NUTS(potential_fn=lambda x: -log_density(x)), num_warmup=warmup,
                    num_samples=samples, num_chains=chains, chain_method="sequential",
                    progress_bar=False)
        mcmc.run(jax.random.key(20240501), init_params=jnp.zeros((chains, dim)))
        by_chain = np.asarray(mcmc.get_samples(group_by_chain=True), np.float64)
        draws = by_chain.reshape(-1, dim)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, mean=draws.mean(0), sd=draws.std(0), n=len(draws),
                 max_rhat=float(np.max(split_gelman_rubin(by_chain))),
                 min_ess=float(np.min(effective_sample_size(by_chain))))
    data = np.load(cache)
    return {"mean": data["mean"], "sd": data["sd"], "log_z": None,
            "nuts": {"draws": int(data["n"]), "max_rhat": float(data["max_rhat"]),
                     "min_ess": float(data["min_ess"])}}


def logreg() -> Target:
    """Bayesian logistic regression from models/logistic_regression.py; NUTS reference (cached)."""
    if not LOGREG_FILE.exists():
        raise TargetUnavailable(f"{LOGREG_FILE.relative_to(ROOT)} not present")
    text = LOGREG_FILE.read_bytes()
    data_dir = LOGREG_FILE.parent / "data"
    for f in sorted(data_dir.glob("*")) if data_dir.exists() else []:
        text += f.read_bytes()
    digest = hashlib.sha256(text).hexdigest()[:12]
    log_density, dim = _numpyro_log_density(_load_module(LOGREG_FILE))
    ref = _nuts_reference(log_density, dim, CACHE_DIR / f"logreg_nuts_{digest}.npz")
    return Target("logreg", log_density, dim, ref, logreg.__doc__.splitlines()[0])


TARGETS: dict[str, Callable[[], Target]] = {
    "banana2d": lambda: banana(2),
    "banana10d": lambda: banana(10),
    "funnel10d": lambda: funnel(10),
    "ring2d": ring,
    "gauss50d": lambda: ill_gaussian(50),
    "logreg": logreg,
}


GAUSS_PATTERN = re.compile(r"gauss([1-9][0-9]*)d")  # gauss<N>d: `ill_gaussian(N)`, for scaling runs


def is_target(name: str) -> bool:
    """Whether `get_target` knows `name`."""
    return name in TARGETS or GAUSS_PATTERN.fullmatch(name) is not None


def get_target(name: str) -> Target:
    """Build target `name`: one of `TARGETS`, or ``gauss<N>d`` (the ill-conditioned Gaussian in N dims)."""
    if name in TARGETS:
        return TARGETS[name]()
    match = GAUSS_PATTERN.fullmatch(name)
    if match is None:
        raise KeyError(f"unknown target {name!r}; expected one of {sorted(TARGETS)} or gauss<N>d")
    return ill_gaussian(int(match.group(1)))
