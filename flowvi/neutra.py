"""`neutra`: exact draws from a fitted flow's target by NUTS in the flow's base space (NeuTra).

A fitted flow ``x = T(z)``, ``z ~ N(0, I)``, turns the target ``p(x)`` into the
pulled-back density on the base space

    log p_T(z) = log p(T(z)) + log|det J_T(z)|,

which is exactly standard normal when the flow is exact, and close to it when
the flow is good. NUTS on ``p_T`` (Hoffman et al. 2019, "NeuTra-lizing bad
geometry in Hamiltonian Monte Carlo using neural transport") then mixes well
where NUTS on ``p`` struggles (funnels, strong correlations, varying scales),
and its draws, mapped back with ``T``, follow the target exactly: the flow
only preconditions the sampler, so its errors cost efficiency, not
correctness. That is how to get exact answers from a fit whose Pareto k-hat
says "unreliable".

The sampler is NumPyro's NUTS (already a dependency of flowvi): it adapts its
step size and a mass matrix during warm-up, and with
``chain_method="vectorized"`` all chains run as one compiled program. Chains
start at draws of the base distribution, i.e. at draws of the flow.

NumPyro and ArviZ are imported inside the functions, so ``import flowvi``
loads neither.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flowvi import diagnostics
from flowvi.validation import as_key, check_bool, check_positive_float, check_positive_int

RHAT_MCMC = 1.01
"""Rank-normalised split R-hat above this: the chains have not mixed (Vehtari et al. 2021)."""
ESS_PER_CHAIN = 100
"""Bulk ESS below this many per chain: too few effective draws for stable R-hat and ESS (Vehtari et al. 2021)."""


def pullback(post, run: int = 0) -> Callable[[jax.Array], jax.Array]:
    """The target pulled back to run `run`'s base space: ``z: (dim,) -> log p(T(z)) + log|det J_T(z)|``.

    Up to the target's own constant this is a density on R^dim; it equals the
    standard normal log density (up to that constant) when the flow is exact.
    For a target with a data axis it uses ``target.log_density``, the
    full-data density.

    Args:
        post: a `flowvi.Posterior` with a target.
        run: which run's flow to use.

    Raises:
        ValueError: no target, a flow that samples by numerical root finding,
            or a run index out of range.
    """
    _check_posterior(post)
    run = _check_run(post, run)
    params = jax.tree.map(lambda a: a[run], post.params)
    bijector = post.flow.apply(params).bijector
    log_density = post.target.log_density

    def log_density_z(z: jax.Array) -> jax.Array:
        x, log_det = bijector.forward_and_log_det(z)
        return log_density(x) + log_det

    return log_density_z


@dataclasses.dataclass(eq=False)
class NeutraResult:
    """NeuTra draws of a fitted flow's target, with NUTS's statistics and the fit they came from.

    Attributes:
        x: ``(chains, draws, dim)`` draws in the target's flat (unconstrained) space.
        z: ``(chains, draws, dim)`` the same draws in the flow's base space (what NUTS sampled).
        constrained: named arrays ``(chains, draws, ...)``: ``target.constrain`` of
            the draws (latent sites, constrained, and deterministic sites for a
            NumPyro model; ``{"x": x}`` for a plain target).
        stats: NUTS's per-draw statistics ``(chains, draws)`` under ArviZ's names:
            ``diverging``, ``step_size``, ``tree_depth`` (``floor(log2(n_steps)) + 1``,
            as ArviZ's NumPyro converter), ``acceptance_rate``, ``n_steps``
            (leapfrog steps), ``energy`` (Hamiltonian, base space) and ``lp``
            (the target's log density at the draw, in its own space, as NUTS on
            the target would report it).
        posterior: the `flowvi.Posterior` whose flow preconditioned the sampler.
        run: the run whose flow was used.
        vi: `flowvi.diagnostics.Diagnostics` of that run's fit (ELBO, k-hat, verdict), or
            the ``fit_diagnostics`` given to `neutra` (pooled over runs when there are several).
        elbo_runs: ``(num_runs,)`` ELBO estimates of every run (how `run` was chosen).
        fit_seconds: wall time of the fit; mcmc_seconds: of NUTS, compilation
            and warm-up included; seconds: their sum.
        settings: the NUTS settings used.
    """

    x: np.ndarray
    z: np.ndarray
    constrained: dict[str, np.ndarray]
    stats: dict[str, np.ndarray]
    posterior: Any
    run: int
    vi: Any
    elbo_runs: np.ndarray
    fit_seconds: float
    mcmc_seconds: float
    settings: dict

    @property
    def num_chains(self) -> int:
        """Number of chains."""
        return int(self.x.shape[0])

    @property
    def num_draws(self) -> int:
        """Draws per chain (after warm-up)."""
        return int(self.x.shape[1])

    @property
    def seconds(self) -> float:
        """Fit plus NUTS wall time."""
        return self.fit_seconds + self.mcmc_seconds

    @property
    def divergences(self) -> np.ndarray:
        """``(chains,)`` divergent transitions per chain (after warm-up)."""
        return self.stats["diverging"].sum(axis=1).astype(int)

    @property
    def step_size(self) -> np.ndarray:
        """``(chains,)`` each chain's adapted step size."""
        return self.stats["step_size"][:, -1]

    @functools.cached_property
    def _mixing(self) -> tuple[np.ndarray, np.ndarray]:
        return diagnostics.across_runs(self.x)

    @property
    def rhat(self) -> np.ndarray:
        """``(dim,)`` rank-normalised split R-hat of each flat coordinate across chains (ArviZ)."""
        return self._mixing[0]

    @property
    def ess(self) -> np.ndarray:
        """``(dim,)`` bulk effective sample size of each flat coordinate (ArviZ)."""
        return self._mixing[1]

    @property
    def reliable(self) -> bool:
        """No divergences, every R-hat <= 1.01 and every bulk ESS >= 100 per chain."""
        return bool(self.divergences.sum() == 0 and np.nanmax(self.rhat) <= RHAT_MCMC
                    and np.nanmin(self.ess) >= ESS_PER_CHAIN * self.num_chains)

    def verdict(self) -> str:
        """The judgement of the chains in words; starts with "good" or "unreliable"."""
        problems = []
        divergent = int(self.divergences.sum())
        if divergent:
            problems.append(f"{divergent} divergent transition{'s' if divergent > 1 else ''}: the flow leaves "
                            "geometry NUTS cannot follow (fit longer or with a more flexible flow, or raise "
                            "target_accept_prob)")
        names = self.posterior.target.names
        worst = int(np.nanargmax(self.rhat))
        if self.rhat[worst] > RHAT_MCMC:
            problems.append(f"R-hat {self.rhat[worst]:.3f} > {RHAT_MCMC} for {names[worst]}: the chains disagree "
                            "(run longer, or check for several modes)")
        low = int(np.nanargmin(self.ess))
        if self.ess[low] < ESS_PER_CHAIN * self.num_chains:
            problems.append(f"bulk ESS {self.ess[low]:.0f} < {ESS_PER_CHAIN} per chain for {names[low]}: "
                            "too few effective draws (more draws or chains)")
        if not problems:
            return (f"good: no divergences, R-hat <= {RHAT_MCMC} and bulk ESS >= {ESS_PER_CHAIN} per chain for "
                    "every coordinate; the draws are exact up to Monte Carlo error, whatever the flow's k-hat.")
        return "unreliable: " + "; ".join(problems) + "."

    def summary(self) -> str:
        """A table: divergences, min bulk ESS, max R-hat, step sizes, tree depth, timings and the VI fit."""
        names = self.posterior.target.names
        low, worst = int(np.nanargmin(self.ess)), int(np.nanargmax(self.rhat))
        divergent = self.divergences
        depth = self.stats["tree_depth"]
        rows = [
            ("divergences", f"{int(divergent.sum())} of {self.num_chains * self.num_draws}"
                            f" (per chain: {', '.join(map(str, divergent.tolist()))})"),
            ("min bulk ESS", f"{self.ess[low]:.0f} ({names[low]}); "
                             f"{self.ess[low] / self.mcmc_seconds:.1f} per NUTS second"),
            ("max R-hat", f"{self.rhat[worst]:.3f} ({names[worst]})"),
            ("step size per chain", ", ".join(f"{s:.3g}" for s in self.step_size)),
            ("mean acceptance", f"{float(np.mean(self.stats['acceptance_rate'])):.3f} "
                                f"(target {self.settings['target_accept_prob']})"),
            ("tree depth", f"mean {float(depth.mean()):.2f}, max {int(depth.max())} "
                           f"(limit {self.settings['max_tree_depth']})"),
            ("time", f"fit {self.fit_seconds:.1f} s + NUTS {self.mcmc_seconds:.1f} s "
                     "(compilation and warm-up included)"),
            ("VI fit", f"ELBO {self.vi.elbo:.4g}, Pareto k-hat {diagnostics.k_text(self.vi.k_hat)} "
                       f"({self.vi.verdict.split(':')[0]})"),
        ]
        width = max(len(r[0]) for r in rows)
        post = self.posterior
        run = f", run {self.run} of {post.num_runs} (best ELBO)" if post.num_runs > 1 else ""
        lines = [f"flowvi NeuTra: NUTS in the base space of the {post.flow.name} flow{run}; "
                 f"{self.num_chains} chains x {self.num_draws} draws after {self.settings['num_warmup']} warm-up"]
        lines += [f"  {name:<{width}}  {value}" for name, value in rows]
        lines += ["", *diagnostics._wrap(f"verdict: {self.verdict()}", 88, "  ")]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return (f"NeutraResult(flow={self.posterior.flow.name!r}, chains={self.num_chains}, draws={self.num_draws}, "
                f"divergences={int(self.divergences.sum())}, min_ess={float(np.nanmin(self.ess)):.0f}, "
                f"max_rhat={float(np.nanmax(self.rhat)):.3f})")

    def to_arviz(self, *, var_name: str = "x", dims: dict | None = None, coords: dict | None = None,
                 log_likelihood: bool = True, posterior_predictive: bool = False, key: jax.Array | None = None):
        """The MCMC draws as ArviZ data: chain = NUTS chain, draw = draw.

        Groups: ``posterior`` (named, constrained variables as in
        `flowvi.Posterior.to_arviz`), ``sample_stats`` (`stats`), and for NumPyro
        models with observed sites ``observed_data``, ``log_likelihood`` and, on
        request, ``posterior_predictive``. The attributes hold the VI fit's
        (flow, ELBO, k-hat, verdict, as `flowvi.Posterior.to_arviz`) and NUTS's
        settings, divergences, min ESS, max R-hat and timings.

        Args:
            var_name: name of the single posterior variable of a plain `flowvi.Target`.
            dims: ``{variable: [dim names]}``; overrides the dims inferred from NumPyro plates.
            coords: ``{dim name: values}``; a plain target's own ``names`` are its default coordinate.
            log_likelihood: include the pointwise log likelihood of a NumPyro model's observed sites.
            posterior_predictive: include draws of the observed sites given each
                posterior draw (NumPyro models; needs `key`).
            key: PRNG key for ``posterior_predictive``.

        Returns:
            ``arviz.InferenceData`` (ArviZ 0.x) or ``xarray.DataTree`` (ArviZ 1.x).

        Raises:
            ValueError: ``posterior_predictive=True`` without a key or for a
                target that is not a NumPyro model.
        """
        import arviz

        from flowvi.arviz import _attrs, _observation_groups

        target = self.posterior.target
        check_bool("log_likelihood", log_likelihood)
        check_bool("posterior_predictive", posterior_predictive)
        if posterior_predictive:
            if not target.observed_data():
                raise ValueError("posterior_predictive=True needs a NumPyro model target "
                                 "(flowvi.Target.from_numpyro) with observed sites.")
            key = as_key(key, "key (needed for posterior_predictive=True)")
        dims, coords = dict(dims or {}), dict(coords or {})
        if target.site_shapes is None and set(self.constrained) == {"x"}:
            posterior = {var_name: self.x}
            dim_name = f"{var_name}_dim_0"
            dims.setdefault(var_name, [dim_name])
            if target.names != [f"x[{i}]" for i in range(target.dim)] and dims[var_name] == [dim_name]:
                coords.setdefault(dim_name, list(target.names))
        else:
            posterior = dict(self.constrained)
        dims = {**target.plate_dims(), **dims}
        groups: dict[str, dict] = {"posterior": posterior, "sample_stats": dict(self.stats)}
        groups.update(_observation_groups(target, posterior, key, log_likelihood, posterior_predictive))
        attrs = _attrs(self.posterior, self.vi, self.num_draws, False)
        attrs.update(self._attrs())
        if diagnostics.arviz_major() >= 1:
            per_group = {group: dict(attrs) for group in ("/", "posterior", "sample_stats")}
            return arviz.from_dict(groups, dims=dims, coords=coords, attrs=per_group)
        return arviz.from_dict(**groups, dims=dims, coords=coords, attrs=dict(attrs),
                               posterior_attrs=dict(attrs), sample_stats_attrs=dict(attrs))

    def _attrs(self) -> dict[str, Any]:
        """netCDF-safe NeuTra attributes."""
        return {
            "sampling": "neutra",
            "mcmc_sampler": "NumPyro NUTS in the flow's base space (NeuTra)",
            "neutra_run": int(self.run),
            "mcmc_warmup": int(self.settings["num_warmup"]),
            "mcmc_samples": int(self.num_draws),
            "mcmc_chains": int(self.num_chains),
            "mcmc_dense_mass": int(bool(self.settings["dense_mass"])),
            "mcmc_target_accept_prob": float(self.settings["target_accept_prob"]),
            "mcmc_seconds": float(self.mcmc_seconds),
            "num_divergences": int(self.divergences.sum()),
            "min_ess_bulk": float(np.nanmin(self.ess)),
            "max_rhat": float(np.nanmax(self.rhat)),
            "mcmc_verdict": self.verdict(),
        }


def neutra(post, key: jax.Array, num_warmup: int = 500, num_samples: int = 1000, num_chains: int = 4, *,
           run: int | None = None, target_accept_prob: float = 0.8, dense_mass: bool = False,
           max_tree_depth: int = 10, fit_diagnostics: diagnostics.Diagnostics | None = None,
           diagnose_draws: int = 4000, progress: bool | None = None) -> NeutraResult:
    """Exact draws of a fit's target: NUTS on the target pulled back through the fitted flow (NeuTra).

    NumPyro's NUTS samples ``log p(T(z)) + log|det J_T(z)|`` (see `pullback`) in
    the flow's base space, all chains vectorised in one program, each started
    at a draw of the base distribution (a draw of the flow); the draws are
    mapped back with ``x = T(z)``. They follow the target exactly (up to Monte
    Carlo error, which R-hat and ESS measure) however good the flow is; a
    better flow makes the geometry closer to standard normal and NUTS cheaper.

    With several runs one flow is used: the run with the highest ELBO (or
    `run`), from `fit_diagnostics` or else estimated from ``diagnose_draws``
    fresh draws of each run. Targets with a data axis use their full-data density.

    Args:
        post: a `flowvi.Posterior` from `flowvi.fit` (it needs its target).
        key: PRNG key; the same key gives the same draws.
        num_warmup: NUTS warm-up (adaptation) iterations per chain (0 or more).
        num_samples: draws per chain after warm-up.
        num_chains: chains, run vectorised.
        run: which run's flow to use; default the best by ELBO.
        target_accept_prob: NUTS's target acceptance probability during
            adaptation (raise it, e.g. to 0.95, when there are divergences).
        dense_mass: adapt a dense mass matrix instead of a diagonal one.
        max_tree_depth: NUTS's maximum tree depth (at most ``2**max_tree_depth - 1``
            leapfrog steps per draw).
        fit_diagnostics: the fit's `flowvi.diagnostics.Diagnostics` (``post.diagnose(key)``), to
            choose the run by and to record in the result and its export; default:
            computed here from ``diagnose_draws`` draws per run.
        diagnose_draws: draws per run for the fit's diagnostics when none are given.
        progress: NumPyro's progress bar; default when stderr is a terminal.

    Returns:
        `NeutraResult`: draws, NUTS statistics, ``summary()`` and ``to_arviz()``.

    Raises:
        ValueError: no target (a `flowvi.fit_samples` fit, or loaded without
            one); a flow whose sampling is numerical root finding (inverted
            BNAF); bad counts or options.
        TypeError: a missing or malformed key.

    Examples:
        >>> import jax, flowvi
        >>> post = flowvi.fit(lambda x: -0.5 * (x ** 2).sum(), dim=2, flow="gaussian",
        ...                   steps=100, key=jax.random.key(0))
        >>> result = flowvi.neutra(post, jax.random.key(1), num_warmup=50, num_samples=50, num_chains=2)
        >>> result.x.shape, result.to_arviz().posterior["x"].shape
        ((2, 50, 2), (2, 50, 2))
    """
    from numpyro.infer import MCMC, NUTS

    _check_posterior(post)
    if getattr(post, "is_mixture", False):
        # NeuTra runs in one flow's base space: a mixture's runs are chosen from as independent runs.
        post = dataclasses.replace(post, mixture_weights=None)
    key = as_key(key)
    num_warmup = _check_nonnegative_int("num_warmup", num_warmup)
    num_samples = check_positive_int("num_samples", num_samples)
    num_chains = check_positive_int("num_chains", num_chains)
    max_tree_depth = check_positive_int("max_tree_depth", max_tree_depth)
    diagnose_draws = check_positive_int("diagnose_draws", diagnose_draws)
    target_accept_prob = check_positive_float("target_accept_prob", target_accept_prob)
    if not target_accept_prob < 1:
        raise ValueError(f"target_accept_prob must lie in (0, 1), got {target_accept_prob!r}.")
    check_bool("dense_mass", dense_mass)
    if run is not None:
        run = _check_run(post, run)
    progress = sys.stderr.isatty() if progress is None else check_bool("progress", progress)

    diag_key, init_key, mcmc_key = jax.random.split(key, 3)
    if fit_diagnostics is not None and not isinstance(fit_diagnostics, diagnostics.Diagnostics):
        raise TypeError("fit_diagnostics must be the flowvi.diagnostics.Diagnostics of this fit "
                        f"(post.diagnose(key)), got {type(fit_diagnostics).__name__}.")
    if fit_diagnostics is not None and fit_diagnostics.num_runs != post.num_runs:
        raise ValueError(f"fit_diagnostics describe {fit_diagnostics.num_runs} run(s), but this fit has "
                         f"{post.num_runs}; pass post.diagnose(key) of this fit.")
    run, vi, elbo_runs = _choose_run(post, diag_key, diagnose_draws, run, fit_diagnostics)
    log_density_z = pullback(post, run)
    dim = post.dim

    kernel = NUTS(potential_fn=lambda z: -log_density_z(z), target_accept_prob=target_accept_prob,
                  dense_mass=dense_mass, max_tree_depth=max_tree_depth)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method="vectorized", progress_bar=progress)
    z0 = jax.random.normal(init_key, (num_chains, dim))
    fields = ("num_steps", "accept_prob", "adapt_state.step_size", "energy")
    start = time.perf_counter()
    mcmc.run(jax.random.key_data(mcmc_key), init_params=z0 if num_chains > 1 else z0[0], extra_fields=fields)
    z = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
    mcmc_seconds = time.perf_counter() - start
    extra = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}

    x, log_p = _to_target(post.flow, jax.tree.map(lambda a: a[run], post.params), post.target.log_density,
                          jnp.reshape(z, (-1, dim)))
    constrained = post.target.constrain(x)
    shape = (num_chains, num_samples)
    n_steps = extra["num_steps"].astype(np.int64)
    stats = {
        "diverging": extra["diverging"].astype(bool),
        "step_size": extra["adapt_state.step_size"].astype(np.float64),
        "tree_depth": (np.floor(np.log2(np.maximum(n_steps, 1))) + 1).astype(np.int64),
        "acceptance_rate": extra["accept_prob"].astype(np.float64),
        "n_steps": n_steps,
        "energy": extra["energy"].astype(np.float64),
        "lp": np.asarray(log_p, dtype=np.float64).reshape(shape),
    }
    settings = {"num_warmup": num_warmup, "num_samples": num_samples, "num_chains": num_chains,
                "target_accept_prob": target_accept_prob, "dense_mass": dense_mass,
                "max_tree_depth": max_tree_depth, "chain_method": "vectorized"}
    return NeutraResult(
        x=np.asarray(x, dtype=np.float64).reshape(*shape, dim), z=np.asarray(z, dtype=np.float64),
        constrained={k: np.asarray(v).reshape(*shape, *np.shape(v)[1:]) for k, v in constrained.items()},
        stats=stats, posterior=post, run=run, vi=vi, elbo_runs=elbo_runs, fit_seconds=float(post.fit_seconds),
        mcmc_seconds=mcmc_seconds, settings=settings)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _to_target(flow, params, log_density, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``z: (n, dim)`` -> ``x = T(z): (n, dim)`` and ``log p(x): (n,)``."""
    x = jax.vmap(flow.apply(params).bijector.forward)(z)
    return x, jax.vmap(log_density)(x)


def _choose_run(post, key: jax.Array, num_draws: int, run: int | None, given=None):
    """The run to use (best ELBO unless given), its `Diagnostics`, and every run's ELBO estimate.

    With `given` diagnostics (possibly pooled over runs) those are recorded and the run is chosen by
    their per-run ELBOs; otherwise they are computed from fresh draws, for the chosen run alone.
    """
    if given is None:
        x, log_p, log_q = diagnostics.importance_draws(post, key, num_draws)
        pooled = diagnostics.from_draws(x, log_p, log_q, names=post.target.names, iw_k=None)
    else:
        pooled = given
    elbo_runs = np.asarray(pooled.elbo_runs, dtype=np.float64)
    if run is None:
        finite = np.where(np.isfinite(elbo_runs), elbo_runs, -np.inf)
        if not np.isfinite(finite).any():
            raise ValueError("no run of this fit has a finite ELBO: its flows put their draws where the target "
                             "has zero density or NaN; refit before running NeuTra.")
        run = int(np.argmax(finite))
    if post.num_runs == 1 or given is not None:
        return run, pooled, elbo_runs
    vi = diagnostics.from_draws(x[run:run + 1], log_p[run:run + 1], log_q[run:run + 1],
                                names=post.target.names, iw_k=None)
    return run, vi, elbo_runs


def _check_posterior(post) -> None:
    from flowvi.posterior import Posterior

    if not isinstance(post, Posterior):
        raise TypeError(f"post must be a flowvi.Posterior (the result of flowvi.fit), got {type(post).__name__}.")
    if post.target is None:
        raise ValueError("NeuTra needs the target's log density, and this Posterior has none (a fit_samples "
                         "fit, or flowvi.load without target=); load it with its target: "
                         "flowvi.load(path, target=...).")
    if post.flow.sample_cost == "numerical":
        raise ValueError(f"flow={post.flow.name!r} (inverted) maps base draws to the target by numerical root "
                         "finding, so the pulled-back density has no cheap exact gradient for NUTS. NeuTra needs "
                         "a flow fitted by flowvi.fit: gaussian, affine_coupling, spline_coupling, iaf, maf or "
                         "bnaf, not inverted.")


def _check_run(post, run: Any) -> int:
    if isinstance(run, bool) or not isinstance(run, int | np.integer) or not 0 <= run < post.num_runs:
        raise ValueError(f"run must be an integer in [0, {post.num_runs}) (this fit has {post.num_runs} "
                         f"run{'s' if post.num_runs > 1 else ''}), got {run!r}.")
    return int(run)


def _check_nonnegative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
    return int(value)


__all__ = ["ESS_PER_CHAIN", "RHAT_MCMC", "NeutraResult", "neutra", "pullback"]
