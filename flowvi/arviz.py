"""`to_arviz`: a fit as ArviZ data, chain = independent run.

Groups: ``posterior`` (named, constrained variables with dims ``(chain, draw,
...)``), ``sample_stats`` (``log_p``, ``log_q``, ``log_weight``,
``log_weight_psis``) and, for NumPyro models with observed sites,
``observed_data``, ``log_likelihood`` (per observation, for ``az.loo`` and
``az.compare``) and, on request, ``posterior_predictive``. The attributes
record how the fit was made and how good it is (k-hat, log Z, ELBO).

ArviZ 0.x returns an ``arviz.InferenceData``; ArviZ 1.x an ``xarray.DataTree``
with the same groups. `write_netcdf` writes either to a netCDF file, atomically,
with the engine `netcdf_engine` finds.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flowvi._version import __version__
from flowvi.diagnostics import Diagnostics, _analyse, arviz_major, flow_draws, mixture_importance_draws, mode_coverage
from flowvi.validation import as_key, check_positive_int


def to_arviz(post, key: jax.Array, num_draws: int = 1000, *, resample: bool = False,
             var_name: str = "x", dims: dict | None = None, coords: dict | None = None,
             log_likelihood: bool = True, posterior_predictive: bool = False,
             diagnostics: Diagnostics | None = None):
    """Draws of every run as ArviZ data: chain = run, draw = draw.

    The draws are those of ``post.diagnose(key, num_draws)`` (the same key and
    number give the same draws), and the attributes hold their diagnostics.
    A mixture (`flowvi.Posterior.mixture`) is one distribution, not a set of
    chains: its ``num_runs * num_draws`` draws are one chain, the run that drew
    each is ``sample_stats["run"]``, and the attribute ``mixture_weights`` holds the weights.

    Args:
        post: a `flowvi.Posterior`.
        key: PRNG key; the same key gives the same export.
        num_draws: draws per run (per chain).
        resample: replace each run's draws by a PSIS importance resample of them
            (systematic resampling with the smoothed weights, so repeats appear):
            the draws then follow the target more closely than the flow does.
            Needs the target. The resample's effective sample size is the
            attribute ``resample_ess``; a warning says when it is below 100 or
            10% of the draws.
        var_name: name of the single posterior variable of a plain `flowvi.Target`.
        dims: ``{variable: [dim names]}`` as in ArviZ converters; it overrides
            the dims inferred from NumPyro plates. A plain target's variable has
            the dim ``f"{var_name}_dim_0"``.
        coords: ``{dim name: values}`` as in ArviZ converters. A plain target
            with its own ``names`` uses them as the coordinate of its variable.
        log_likelihood: include the pointwise log likelihood of a NumPyro
            model's observed sites.
        posterior_predictive: include draws of the observed sites given each
            posterior draw (NumPyro models).
        diagnostics: the `flowvi.diagnostics.Diagnostics` that
            ``post.diagnose(key, num_draws)`` returned, to record exactly what
            was printed (its verdict, k-hat, ELBO, log Z) rather than recompute
            them; it must come from the same key and `num_draws`.

    Returns:
        ``arviz.InferenceData`` (ArviZ 0.x) or ``xarray.DataTree`` (ArviZ 1.x).

    Raises:
        ValueError: ``resample=True`` without a target,
            ``posterior_predictive=True`` for a target that is not a NumPyro model,
            or `diagnostics` from other draws than these.

    Examples:
        >>> import jax, flowvi
        >>> post = flowvi.fit(lambda x: -0.5 * (x ** 2).sum(), dim=2, flow="gaussian",
        ...                   steps=300, num_runs=2, key=jax.random.key(0))
        >>> idata = post.to_arviz(jax.random.key(1), num_draws=100)
        >>> idata.posterior["x"].shape
        (2, 100, 2)
    """
    num_draws = check_positive_int("num_draws", num_draws)
    draw_key = as_key(key)  # the key of `diagnose`: the same draws
    resample_key, predict_key = jax.random.fold_in(draw_key, 1), jax.random.fold_in(draw_key, 2)
    if diagnostics is not None and not isinstance(diagnostics, Diagnostics):
        raise ValueError(f"diagnostics must be the Diagnostics that post.diagnose(key, num_draws) returned, "
                         f"got {type(diagnostics).__name__}.")
    target = post.target
    mixed = bool(getattr(post, "is_mixture", False))
    if posterior_predictive and (target is None or not target.observed_data()):
        raise ValueError("posterior_predictive=True needs a NumPyro model target (flowvi.Target.from_numpyro) "
                         "with observed sites: a plain log density has no observed sites to predict.")
    diag = None
    if target is None:
        if diagnostics is not None:
            raise ValueError("diagnostics= needs a Posterior with a target (these draws have no importance "
                             "weights).")
        if resample:
            raise ValueError("resample=True needs the target's log density, and this Posterior has none "
                             "(a fit_samples fit, or flowvi.load without target=).")
        x, log_q, run = flow_draws(post, draw_key, num_draws)
        x, log_q = np.asarray(x, dtype=np.float64), np.asarray(log_q, dtype=np.float64)
        stats = {"log_q": log_q} if run is None else {"log_q": log_q, "run": run}
    else:
        x, log_p, log_q, run = mixture_importance_draws(post, draw_key, num_draws)
        modes = mode_coverage(post, draw_key, x, log_p)
        diag, smoothed = _analyse(x, log_p, log_q, names=target.names, iw_k=None, stop_reasons=post.stop_reasons,
                                  labels=target.labels, unconstrained=target.site_shapes is not None, modes=modes,
                                  mixture_of=post.num_runs if mixed else None)
        if diagnostics is not None:
            _check_same_draws(diagnostics, diag)
            diag = diagnostics
        stats = {"log_p": log_p, "log_q": log_q, "log_weight": log_p - log_q, "log_weight_psis": smoothed}
        if run is not None:
            stats["run"] = run
        if resample:
            idx = _systematic_resample(resample_key, smoothed)
            x = np.take_along_axis(x, idx[..., None], axis=1)
            stats = {k: np.take_along_axis(v, idx, axis=1) for k, v in stats.items()}
            resample_ess = _resample_ess(smoothed)
    runs, num_draws = x.shape[:2]

    names = target.names if target is not None else [f"x[{i}]" for i in range(post.dim)]
    variables = target.constrain(jnp.asarray(x.reshape(-1, post.dim))) \
        if target is not None else {"x": x.reshape(-1, post.dim)}
    dims, coords = dict(dims or {}), dict(coords or {})
    if set(variables) == {"x"} and np.shape(variables["x"]) == (runs * num_draws, post.dim):
        # A flat target: one variable, its coordinate names (when the target has its own) as coords.
        posterior = {var_name: x}
        dim_name = f"{var_name}_dim_0"
        dims.setdefault(var_name, [dim_name])
        default_names = names == [f"x[{i}]" for i in range(post.dim)]
        if not default_names and dims[var_name] == [dim_name]:
            coords.setdefault(dim_name, list(names))
    else:
        posterior = {k: np.asarray(v).reshape(runs, num_draws, *np.shape(v)[1:]) for k, v in variables.items()}

    groups: dict[str, dict] = {"posterior": posterior, "sample_stats": stats}
    if target is not None:
        dims = {**target.plate_dims(), **dims}
        groups.update(_observation_groups(target, posterior, predict_key, log_likelihood, posterior_predictive))

    attrs = _attrs(post, diag, num_draws, resample)
    if mixed:
        attrs["mixture_weights"] = [float(w) for w in post.run_weights]
    if resample:
        attrs["resample_ess"] = resample_ess
    import arviz
    # The attributes go on the root and on the posterior and sample_stats groups (where
    # ArviZ's own converters put inference_library).
    if arviz_major() >= 1:
        per_group = {group: dict(attrs) for group in ("/", "posterior", "sample_stats")}
        return arviz.from_dict(groups, dims=dims, coords=coords, attrs=per_group)
    return arviz.from_dict(**groups, dims=dims, coords=coords, attrs=dict(attrs),
                           posterior_attrs=dict(attrs), sample_stats_attrs=dict(attrs))


def _check_same_draws(given: Diagnostics, own: Diagnostics) -> None:
    """Raise unless `given` was computed from the draws that gave `own`."""
    same = (given.num_draws == own.num_draws and given.num_runs == own.num_runs
            and np.allclose([given.elbo, given.k_hat], [own.elbo, own.k_hat], rtol=1e-9, atol=0.0,
                            equal_nan=True))
    if not same:
        raise ValueError(f"diagnostics come from other draws than this export ({given.num_runs} runs x "
                         f"{given.num_draws} draws, ELBO {given.elbo:.6g}, k-hat {given.k_hat:.4g}; these draws: "
                         f"{own.num_runs} x {own.num_draws}, ELBO {own.elbo:.6g}, k-hat {own.k_hat:.4g}): pass "
                         "the key and num_draws given to post.diagnose.")


def _systematic_resample(key: jax.Array, log_weights: np.ndarray) -> np.ndarray:
    """Indices ``(runs, n)``: a systematic resample of each run's draws with their (smoothed) weights."""
    runs, n = log_weights.shape
    u = np.asarray(jax.random.uniform(key, (runs, 1)), dtype=np.float64)
    positions = (u + np.arange(n)) / n
    w = np.exp(log_weights - log_weights.max(axis=1, keepdims=True))
    cdf = np.cumsum(w, axis=1)
    cdf /= cdf[:, -1:]
    idx = np.stack([np.searchsorted(cdf[r], positions[r], side="right") for r in range(runs)])
    return np.minimum(idx, n - 1)


RESAMPLE_ESS_MIN = 100
"""A resample whose effective sample size is below this (or below 10% of its draws) gets a warning."""


def _resample_ess(log_weights: np.ndarray) -> float:
    """Effective sample size of a per-run resample with ``log_weights: (runs, n)``, and a warning when it is small.

    Each run is resampled with its own normalised weights, so the resample
    holds ``sum_r 1 / sum_i w_ri^2`` effectively independent draws (Kish's ESS
    per run, summed); the rest are repeats.
    """
    w = np.exp(log_weights - log_weights.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    ess = float(np.sum(1.0 / np.sum(w ** 2, axis=1)))
    total = log_weights.size
    if ess < RESAMPLE_ESS_MIN or ess < 0.1 * total:
        warnings.warn(f"the importance resample has an effective sample size of {ess:.0f} of its {total} draws "
                      f"(below {RESAMPLE_ESS_MIN} or 10%): many draws are repeats and estimates from them are noisy. "
                      "Export more draws or, when k-hat (post.diagnose) is 0.7 or more, get exact draws with "
                      "flowvi.neutra(post, key).", UserWarning, stacklevel=4)
    return ess


def _observation_groups(target, posterior: dict, key: jax.Array, log_likelihood: bool,
                        posterior_predictive: bool) -> dict[str, dict]:
    """observed_data, log_likelihood and posterior_predictive, ``(chain, draw, ...)``, from the target's hooks."""
    observed = target.observed_data()
    if not observed:
        return {}
    groups: dict[str, dict] = {"observed_data": observed}
    if log_likelihood:
        groups["log_likelihood"] = {k: np.asarray(v) for k, v in target.pointwise_log_likelihood(posterior).items()}
    if posterior_predictive:
        groups["posterior_predictive"] = {k: np.asarray(v) for k, v in target.predict(key, posterior).items()}
    return groups


def _attrs(post, diag, num_draws: int, resample: bool) -> dict[str, Any]:
    """netCDF-safe attributes: strings, numbers and lists of numbers only."""
    losses = np.atleast_2d(np.asarray(post.losses, dtype=np.float64))
    final = [float(-row[np.isfinite(row)][-1]) if np.isfinite(row).any() else float("nan") for row in losses]
    attrs: dict[str, Any] = {
        "inference_library": "flowvi",
        "inference_library_version": __version__,
        "flow": post.flow.name,
        "flow_hyperparameters": json.dumps(post.flow.options, default=list, sort_keys=True),
        "num_runs": int(post.num_runs),
        "steps_run": [int(s) for s in np.asarray(post.steps_run)],
        "skipped_steps": [int(s) for s in np.asarray(post.skipped_steps)],
        "stop_reason": post.stop_reason,
        "fit_settings": json.dumps(post.settings, default=str, sort_keys=True),
        "fit_seconds": float(post.fit_seconds),
        "final_training_elbo": final,
        "num_draws": int(num_draws),
        "resampled": int(bool(resample)),
    }
    if diag is not None:
        attrs.update(elbo=diag.elbo, elbo_se=diag.elbo_se, log_z=diag.log_z, log_z_se=diag.log_z_se,
                     k_hat=diag.k_hat, importance_ess=diag.ess, verdict=diag.verdict)
    return attrs


NETCDF_ENGINES = ("h5netcdf", "netcdf4")
"""The netCDF engines ArviZ data can be written with, in the order `netcdf_engine` tries them."""


def netcdf_engine() -> str | None:
    """The first netCDF engine that imports (``"h5netcdf"``, which needs h5py, or ``"netcdf4"``), or None."""
    import importlib

    for engine, modules in (("h5netcdf", ("h5netcdf", "h5py")), ("netcdf4", ("netCDF4",))):
        try:
            for module in modules:
                importlib.import_module(module)
        except ImportError:
            continue
        return engine
    return None


def missing_netcdf_engine() -> str:
    """Why ArviZ data cannot be written to netCDF here, in one sentence."""
    return ("writing ArviZ data to netCDF (posterior.nc) needs the h5netcdf package (with h5py) or netCDF4, "
            "and neither imports here: install h5netcdf (pip install h5netcdf).")


def write_netcdf(data, path) -> None:
    """Write ArviZ data (`to_arviz`'s result) to the netCDF file `path`, atomically.

    The file is written beside `path` and renamed onto it (`flowvi.io.atomic_write`),
    so a write that fails halfway leaves a previous file as it was.

    Raises:
        RuntimeError: no netCDF engine is installed (see `missing_netcdf_engine`).
        OSError: the file could not be written.
    """
    from flowvi.io import atomic_write

    engine = netcdf_engine()
    if engine is None:
        raise RuntimeError(missing_netcdf_engine())
    atomic_write(path, lambda name: data.to_netcdf(name, engine=engine))


__all__ = ["missing_netcdf_engine", "netcdf_engine", "to_arviz", "write_netcdf"]
