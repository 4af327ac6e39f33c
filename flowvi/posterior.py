"""`Posterior`: a fitted flow with its target, loss trace and how the fit ended."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from flowvi import diagnostics, io
from flowvi.flows import Flow
from flowvi.objectives import base_draws, push_forward
from flowvi.target import Target
from flowvi.validation import as_key, check_array, check_index, check_optional_positive_int, check_positive_int


@functools.partial(jax.jit, static_argnums=(0, 2))
def _sample_runs(flow: Flow, params, n: int, key: jax.Array):
    """Each run's own draws: x (runs, n, dim), log_q (runs, n).

    Run r's draws are ``flow.apply(params[r]).sample_and_log_prob(seed=split(key, runs)[r],
    sample_shape=(n,))``. The base draws are made run by run (`lax.map`) and only
    the flow is vmapped over runs: a vmapped generator is 2-D, which XLA:CPU
    compiles slowly (see `flowvi.objectives.base_draws`).
    """
    runs = jax.tree.leaves(params)[0].shape[0]
    keys = jax.random.split(key, runs)
    base = flow.apply(jax.tree.map(lambda a: a[0], params))
    if runs == 1:
        return jax.tree.map(lambda a: a[None], push_forward(base, base_draws(base, keys[0], n)))
    u = jax.lax.map(lambda k: base_draws(base, k, n), keys)
    return jax.vmap(lambda p, u: push_forward(flow.apply(p), u))(params, u)


# One program that drops the run axis of a one-run result (rather than one per array).
_first_run = jax.jit(lambda tree: jax.tree.map(lambda a: a[0], tree))


@functools.partial(jax.jit, static_argnums=0)
def _log_prob_runs(flow: Flow, params, x: jax.Array) -> jax.Array:
    """Log q_r(x) for every run r: (runs, n)."""
    return jax.vmap(lambda p: flow.apply(p).log_prob(x))(params)


@dataclasses.dataclass
class Posterior:
    """A fitted flow.

    With ``num_runs > 1`` the posterior is the equal-weight mixture of the runs;
    `run` selects one.

    Attributes:
        flow: the `flowvi.flows.Flow` family instance.
        params: parameters with a leading run axis of length `num_runs`.
        target: the `flowvi.Target` (None after `flowvi.fit_samples`).
        losses: numpy loss trace: ``(steps_run,)`` for one run, ``(num_runs,
            max_steps)`` NaN-padded for several. Negative ELBO per step for
            `flowvi.fit`; training NLL per epoch for `flowvi.fit_samples`.
        stop_reasons: why each run stopped, in words.
        steps_run: ``(num_runs,)`` steps (or epochs) run.
        skipped_steps: ``(num_runs,)`` steps skipped for non-finite values.
        fit_seconds: wall time of the fit, compilation included.
        settings: the options the fit used.
        validation_losses: per-epoch held-out NLL (`fit_samples` only).
    """

    flow: Flow
    params: Any
    target: Target | None
    losses: np.ndarray
    stop_reasons: list[str]
    steps_run: np.ndarray
    skipped_steps: np.ndarray
    fit_seconds: float
    settings: dict
    validation_losses: np.ndarray | None = None

    @property
    def dim(self) -> int:
        """Event size."""
        return self.flow.dim

    @property
    def num_runs(self) -> int:
        """Number of independent runs held."""
        return int(jax.tree.leaves(self.params)[0].shape[0])

    @property
    def stop_reason(self) -> str:
        """Why the fit stopped (one line per run when there are several)."""
        if self.num_runs == 1:
            return self.stop_reasons[0]
        return "; ".join(f"run {i}: {r}" for i, r in enumerate(self.stop_reasons))

    def run(self, i: int) -> Posterior:
        """The posterior of run `i` alone.

        Raises:
            TypeError: `i` is not an integer.
            IndexError: `i` is outside ``[0, num_runs)``.
        """
        i = check_index("run index i", i, self.num_runs)
        losses = self.losses if self.num_runs == 1 else self.losses[i][np.isfinite(self.losses[i])]
        return dataclasses.replace(
            self, params=jax.tree.map(lambda a: a[i:i + 1], self.params), losses=losses,
            stop_reasons=[self.stop_reasons[i]], steps_run=self.steps_run[i:i + 1],
            skipped_steps=self.skipped_steps[i:i + 1])

    @property
    def distribution(self) -> distrax.Transformed:
        """The fitted `distrax.Transformed` (single-run posteriors; use `run(i)` otherwise)."""
        if self.num_runs != 1:
            raise ValueError(f"this posterior holds {self.num_runs} runs; use post.run(i).distribution.")
        return self.flow.apply(jax.tree.map(lambda a: a[0], self.params))

    def sample_runs(self, key: jax.Array, num_draws: int) -> tuple[jax.Array, jax.Array]:
        """Draws from each run separately.

        Args:
            key: one PRNG key (`jax.random.key`).
            num_draws: positive int, draws per run.

        Returns:
            ``x: (num_runs, num_draws, dim)`` and each run's own ``log_q: (num_runs, num_draws)``.
        """
        return _sample_runs(self.flow, self.params, check_positive_int("num_draws", num_draws), as_key(key))

    def sample_and_log_prob(self, key: jax.Array, num_draws: int) -> tuple[jax.Array, jax.Array]:
        """Draws and their log density under the posterior.

        Args:
            key: one PRNG key (`jax.random.key`).
            num_draws: positive int.

        Returns:
            ``x: (num_draws, dim)``, ``log_q: (num_draws,)``. With several runs the
            draws are stratified over runs and ``log_q`` is the mixture density
            (which needs each run's inverse: slow for ``iaf`` and ``bnaf``).
        """
        key, num_draws = as_key(key), check_positive_int("num_draws", num_draws)
        if self.num_runs == 1:
            return _first_run(self.sample_runs(key, num_draws))
        per_run = -(-num_draws // self.num_runs)
        x, _ = self.sample_runs(key, per_run)
        x = jnp.swapaxes(x, 0, 1).reshape(-1, self.dim)[:num_draws]
        return x, self.log_prob(x)

    def sample(self, key: jax.Array, num_draws: int) -> jax.Array:
        """``num_draws`` draws, shape ``(num_draws, dim)``.

        Args:
            key: one PRNG key (`jax.random.key`); an int seed or a batch of keys is refused.
            num_draws: positive int.
        """
        return self.sample_and_log_prob(key, num_draws)[0]

    def sample_posterior(self, key: jax.Array, num_draws: int, target: Target | None = None) -> dict:
        """Draws as named, constrained arrays: ``target.constrain(self.sample(key, num_draws))``.

        For a `flowvi.Target.from_numpyro` target: every latent site,
        constrained, ``(num_draws, *site_shape)``, plus the deterministic sites.
        For a plain `Target`: ``{"x": (num_draws, dim)}``.

        Args:
            key: PRNG key.
            num_draws: number of draws.
            target: the target to constrain with; default the fitted one.

        Raises:
            ValueError: no target (fits from `flowvi.fit_samples`, or loaded
                without one), or a target whose latent dimension differs from the fit's.
        """
        key, num_draws = as_key(key), check_positive_int("num_draws", num_draws)
        if target is not None and not isinstance(target, Target):
            raise TypeError(f"target must be a flowvi.Target (e.g. flowvi.Target.from_numpyro(model, ...)), "
                            f"got {type(target).__name__}.")
        target = self.target if target is None else target
        if target is None:
            raise ValueError("this posterior has no target to constrain with (it came from "
                             "flowvi.fit_samples, or flowvi.load without target=); use post.sample(key, n) "
                             "for flat draws, or pass target=.")
        fitted = self.target.site_shapes if self.target is not None else None
        given = target.site_shapes
        if target.dim != self.dim or (fitted is not None and given is not None and fitted != given):
            raise ValueError(f"the latent dimension changed between fit and sampling: the fit has dim={self.dim}"
                             f"{f' {fitted}' if fitted is not None else ''}, the target has dim={target.dim}"
                             f"{f' {given}' if given is not None else ''}. Build the target from the "
                             "model arguments the fit used, or refit.")
        return target.constrain(self.sample(key, num_draws))

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Log density of ``x: (n, dim)`` -> ``(n,)`` (or ``(dim,)`` -> scalar); ``x`` real (ints are cast)."""
        x = check_array("x", x)
        if x.shape[-1:] != (self.dim,) or x.ndim not in (1, 2):
            raise ValueError(f"x must have shape (n, {self.dim}) or ({self.dim},), got {x.shape}.")
        per_run = _log_prob_runs(self.flow, self.params, jnp.atleast_2d(x))
        out = jax.nn.logsumexp(per_run, axis=0) - jnp.log(self.num_runs)
        return out[0] if x.ndim == 1 else out

    def save(self, path) -> None:
        """Write the fit to `path` (arrays and JSON metadata in an npz archive; no pickle).

        The file is written to a temporary file beside `path` and renamed onto
        it, so a write that fails halfway leaves a previous file as it was. A
        fit of a target also stores its fingerprint (dim, names, log density at
        a few points), which `flowvi.load` checks against the target it is given.

        Raises:
            ValueError: a custom flow, or NaN or infinite parameters.
            OSError: the file could not be written (a previous one is unchanged).
        """
        io.save(self, path)

    def __repr__(self) -> str:
        return (f"Posterior(flow={self.flow.name!r}, dim={self.dim}, num_runs={self.num_runs}, "
                f"steps_run={self.steps_run.tolist()}, stop_reason={self.stop_reason!r})")

    def diagnose(self, key: jax.Array, num_draws: int = 4000, *, iw_k: int | None = 100):
        """How good the fit is: ELBO, log Z estimate, Pareto k-hat, importance ESS, R-hat across runs.

        See `flowvi.diagnostics.diagnose`; ``num_draws`` is per run.

        Args:
            key: one PRNG key.
            num_draws: positive int, draws per run.
            iw_k: positive int, draws per importance-weighted bound estimate; None skips the bound.

        Returns:
            `flowvi.diagnostics.Diagnostics`; ``print`` it for a table and a verdict.
        """
        key, num_draws = as_key(key), check_positive_int("num_draws", num_draws)
        iw_k = check_optional_positive_int("iw_k", iw_k)
        return diagnostics.diagnose(self, key, num_draws, iw_k=iw_k)

    def to_arviz(self, key: jax.Array, num_draws: int = 1000, *, resample: bool = False, var_name: str = "x",
                 dims: dict | None = None, coords: dict | None = None, log_likelihood: bool = True,
                 posterior_predictive: bool = False, diagnostics=None):
        """Draws as ArviZ data, chain = run; see `flowvi.arviz.to_arviz`.

        With the key and `num_draws` given to `diagnose`, the draws are the ones
        it diagnosed; pass its result as `diagnostics` to record it unchanged.

        Returns:
            ``arviz.InferenceData`` (ArviZ 0.x) or ``xarray.DataTree`` (ArviZ 1.x).
        """
        key, num_draws = as_key(key), check_positive_int("num_draws", num_draws)
        from flowvi.arviz import to_arviz  # the ArviZ adapter, loaded on first use
        return to_arviz(self, key, num_draws, resample=resample, var_name=var_name, dims=dims, coords=coords,
                        log_likelihood=log_likelihood, posterior_predictive=posterior_predictive,
                        diagnostics=diagnostics)


def load(path, target: Target | Any = None) -> Posterior:
    """Read a fit written by `Posterior.save`.

    Args:
        path: the file.
        target: the `flowvi.Target` or log density the fit was made for (functions
            cannot be stored); None for fits of samples, or to use only the flow.

    Returns:
        A `Posterior` that gives the same draws for the same key as the saved one.

    Raises:
        ValueError: the file is not a flowvi file, is damaged (a missing field,
            parameters of the wrong shape or dtype, NaN or infinite ones), or
            `target` has another dim.

    Warns:
        UserWarning: `target` differs from the one the fit was saved with
            (other names, or another log density at the points stored with the fit).
    """
    return Posterior(**io.read(path, target))
