"""`Posterior`: a fitted flow with its target, loss trace and how the fit ended."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from flowvi import diagnostics, io, mixture
from flowvi.conditional import at_context, at_context_params, check_context, sample_pairs, target_at
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
def _log_prob_runs(flow: Flow, params, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    """Log q_r(x) of every run r: (runs, n); or log q_r(x | context), context (context_dim,) or (n, context_dim)."""
    if context is None:
        return jax.vmap(lambda p: flow.apply(p).log_prob(x))(params)
    return jax.vmap(lambda p: flow.apply(p, context).log_prob(x))(params)


@dataclasses.dataclass
class Posterior:
    """A fitted flow.

    With ``num_runs > 1`` the posterior is the mixture of the runs: equal
    weights, or the stacking weights of `mixture` (``mixture_weights``);
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
        mixture_weights: ``(num_runs,)`` weights of the runs, summing to 1, set by
            `mixture`; None (the default, and what files saved before 0.5 load
            with): independent runs, pooled with equal weights, and diagnosed run
            by run. See `mixture` for what a mixture changes.
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
    mixture_weights: np.ndarray | None = None

    @property
    def dim(self) -> int:
        """Event size."""
        return self.flow.dim

    @property
    def num_runs(self) -> int:
        """Number of independent runs held."""
        return int(jax.tree.leaves(self.params)[0].shape[0])

    @property
    def context_dim(self) -> int:
        """Size of the context of a conditional fit (0: unconditional); see `given`."""
        return self.flow.context_dim

    def given(self, context, *, caller: str = "given()") -> Posterior:
        """The conditional fit at one context: an unconditional `Posterior` of ``q(x | context)``.

        Everything an unconditional fit does works on it (`sample`, `log_prob`,
        `diagnose`, `to_arviz`, `sample_posterior`); an amortised fit's target
        becomes ``x -> log p~(x | context)``. The context is an array in the
        flow's parameters, so the flow's programs are not compiled again for a
        new context (an amortised target's log density at it is a new function,
        so diagnostics compile that once per context). ``settings["context"]``
        records it. It cannot be saved (save the conditional fit).

        Args:
            context: ``(context_dim,)``.
            caller: the method named in the error for a context of another shape
                (`diagnose` and `to_arviz` work through this).

        Raises:
            ValueError: an unconditional fit, or a context of another shape or with NaN/inf.
        """
        context = check_context(context, self.context_dim)
        if context.ndim != 1:
            raise ValueError(f"{caller} takes one context of shape ({self.context_dim},), got {context.shape}; "
                             "for one context per draw or point use sample(..., context=) or log_prob(..., context=).")
        return dataclasses.replace(
            self, flow=at_context(self.flow), params=at_context_params(self.params, context),
            target=None if self.target is None else target_at(self.target, context),
            settings={**self.settings, "context": np.asarray(context, np.float64).tolist()})

    @property
    def is_mixture(self) -> bool:
        """True for a posterior made by `mixture` (weighted runs, diagnosed as one distribution)."""
        return self.mixture_weights is not None

    @property
    def run_weights(self) -> np.ndarray:
        """``(num_runs,)`` the weight of each run in the density: `mixture_weights`, or equal weights."""
        if self.mixture_weights is None:
            return np.full(self.num_runs, 1.0 / self.num_runs)
        return np.asarray(self.mixture_weights, dtype=np.float64)

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
            skipped_steps=self.skipped_steps[i:i + 1], mixture_weights=None)

    def mixture(self, key: jax.Array, num_draws: int = 1000, *, weights=None) -> Posterior:
        """The runs as one posterior with density ``q(x) = sum_r w_r q_r(x)``, ``w`` the stacking weights.

        Runs of a multimodal target land on different modes (reverse KL is
        mode-seeking); the mixture puts them together, each run weighted by the
        share of the target's mass it explains, so that runs on the same mode
        share that mode's weight rather than count it twice. The weights are
        chosen on the simplex to maximise the importance-sampling estimate of
        the log score ``E_p[log sum_r w_r q_r(x)]`` (minimise ``KL(p || q_w)``;
        stacking, Yao, Vehtari and Gelman 2022), from ``num_draws`` draws of every
        run, each weighted ``p~(x) / qbar(x)`` against the equal-weight mixture
        ``qbar`` of all the runs:

            w  = argmax_w  sum_{r,i} omegat_ri log sum_s w_s q_s(x_ri),
            omegat_ri ~ p~(x_ri) / ((1/R) sum_s q_s(x_ri))   (PSIS-smoothed, normalised),

        solved by its EM fixed point ``w_s <- sum_ri omegat_ri w_s q_s(x_ri) / q_w(x_ri)``
        from equal weights (`flowvi.mixture`, where the choice is argued).

        The result is a `Posterior` whose `mixture_weights` are ``w``; it keeps
        the runs (`run` still gives each), and
        ``settings["mixture"]`` records the estimate (draws, Pareto k-hat of the
        weights against ``qbar``, EM iterations). On it:

        - `log_prob` is ``logsumexp_r(log w_r + log q_r(x))``, exact; it needs
          every run's density at ``x``, which for ``iaf`` (``dim`` passes) and
          ``bnaf`` (root finding to float precision) is an inverse pass per run;
        - `sample` / `sample_and_log_prob` draw stratified over runs: run ``r``
          gives ``floor(N c_r + u) - floor(N c_{r-1} + u)`` of ``N`` draws (``c``
          the cumulative weights, ``u`` uniform from the key; within one of
          ``N w_r``), in a random order; the density is the mixture's;
        - `diagnose` weights mixture draws against the mixture density and
          reports the modes the runs found (`flowvi.diagnostics.diagnose`);
        - `to_arviz` exports mixture draws as one chain, with the run of each
          draw in ``sample_stats["run"]``;
        - `save` / `flowvi.load` keep the weights.

        Args:
            key: one PRNG key (`jax.random.key`): the draws the weights are estimated from.
            num_draws: positive int, draws per run for the estimate.
            weights: ``(num_runs,)`` non-negative weights to use instead of estimating
                them (normalised to sum 1); needs no target.

        Returns:
            A new `Posterior`; this one is unchanged.

        Raises:
            ValueError: a posterior with one run; no target (and no `weights`);
                `weights` of the wrong shape, negative, non-finite or all zero;
                the target's log density NaN at some draws; no draw with a positive weight.
        """
        key, num_draws = as_key(key), check_positive_int("num_draws", num_draws)
        if self.num_runs < 2:
            raise ValueError(f"mixture() combines several runs, and this posterior has num_runs={self.num_runs}; "
                             "fit with num_runs > 1 (e.g. flowvi.fit(..., num_runs=8, init_spread=...)).")
        if weights is not None:
            w = mixture.check_weights(weights, self.num_runs)
            record = {"method": "given", "weights": w.tolist()}
        else:
            if self.target is None:
                raise ValueError("mixture() estimates the weights from the target's log density, and this "
                                 "Posterior has none (a fit_samples fit, or flowvi.load without target=); load it "
                                 "with its target, or pass weights=.")
            x, log_p, cross = self.cross_draws(key, num_draws)
            if np.isnan(log_p).any():
                raise ValueError(f"the target's log density is NaN at {int(np.isnan(log_p).sum())} of "
                                 f"{log_p.size} draws of the runs; the weights need it finite or -inf.")
            w, info = mixture.stacking_weights(log_p, cross)
            record = {"method": "stacking (importance-weighted log score, EM)", "num_draws": num_draws,
                      "weights": w.tolist(), **info}
        return dataclasses.replace(self, mixture_weights=w, settings={**self.settings, "mixture": record})

    def log_prob_runs(self, x: jax.Array) -> jax.Array:
        """Every run's log density at ``x: (n, dim)``: ``(num_runs, n)`` (an inverse pass for iaf and bnaf)."""
        x = check_array("x", x)
        if x.ndim != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (n, {self.dim}), got {x.shape}.")
        return _log_prob_runs(self.flow, self.params, x)

    def cross_draws(self, key: jax.Array, num_draws: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each run's draws with the target's log density and every run's density there.

        Args:
            key: PRNG key; the draws are ``sample_runs(key, num_draws)``'s.
            num_draws: draws per run.

        Returns:
            ``x: (num_runs, num_draws, dim)``, ``log_p: (num_runs, num_draws)``
            (unnormalised target; needs a target) and ``cross_log_q:
            (num_runs, num_runs, num_draws)`` with ``[s, r, i] = log q_s(x[r, i])``,
            as float64 numpy arrays.
        """
        if self.target is None:
            raise ValueError("this Posterior has no target (a fit_samples fit, or flowvi.load without target=).")
        x, _ = self.sample_runs(as_key(key), check_positive_int("num_draws", num_draws))
        log_p = diagnostics._log_density_batch(self.target.log_density, x)
        return np.asarray(x, np.float64), np.asarray(log_p, np.float64), self.cross_log_prob(x)

    def cross_log_prob(self, x: jax.Array) -> np.ndarray:
        """Every run's log density at every run's draws ``x: (num_runs, n, dim)``: ``(num_runs, num_runs, n)``.

        ``[s, r, i] = log q_s(x[r, i])``, float64 numpy (an inverse pass per run for iaf and bnaf).
        """
        return np.stack([np.asarray(_log_prob_runs(self.flow, self.params, jnp.asarray(x[r])), np.float64)
                         for r in range(self.num_runs)], axis=1)

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

    def sample_and_log_prob(self, key: jax.Array, num_draws: int, context=None) -> tuple[jax.Array, jax.Array]:
        """Draws and their log density under the posterior.

        Args:
            key: one PRNG key (`jax.random.key`).
            num_draws: positive int.
            context: a conditional fit's context (required there, refused otherwise):
                ``(context_dim,)`` for every draw, or ``(num_draws, context_dim)``, one per draw
                (one-run fits); ``log_q`` is then ``log q(x | context)``.

        Returns:
            ``x: (num_draws, dim)``, ``log_q: (num_draws,)``. With several runs the
            draws are stratified over runs (in proportion to `mixture_weights` for a
            mixture, see `sample_mixture`) and ``log_q`` is the mixture density
            (which needs each run's inverse: slow for ``iaf`` and ``bnaf``).
        """
        key, num_draws = as_key(key), check_positive_int("num_draws", num_draws)
        if self.context_dim or context is not None:
            context = check_context(context, self.context_dim, num_draws)
            if context.ndim == 1:
                return self.given(context).sample_and_log_prob(key, num_draws)
            if self.num_runs != 1:
                raise ValueError(f"one context per draw needs a one-run fit; this one has {self.num_runs} runs "
                                 "(use post.run(i)).")
            return sample_pairs(self.flow, _first_run(self.params), key, context)
        if self.num_runs == 1:
            return _first_run(self.sample_runs(key, num_draws))
        if self.is_mixture:
            x, log_q, _ = self.sample_mixture(key, num_draws)
            return x, log_q
        per_run = -(-num_draws // self.num_runs)
        x, _ = self.sample_runs(key, per_run)
        x = jnp.swapaxes(x, 0, 1).reshape(-1, self.dim)[:num_draws]
        return x, self.log_prob(x)

    def sample_mixture(self, key: jax.Array, num_draws: int) -> tuple[jax.Array, jax.Array, np.ndarray]:
        """Draws of the mixture ``sum_r w_r q_r`` (``w`` = `run_weights`) and which run drew each.

        Stratified: run ``r`` gives ``floor(N c_r + u) - floor(N c_{r-1} + u)``
        draws (``c`` the cumulative weights, ``u ~ U(0, 1)`` from `key`;
        `flowvi.mixture.stratified_counts`), shuffled with `key`. Every run draws
        ``ceil(N max_r w_r) + 1`` and keeps its share, so a fixed weight vector
        compiles one program per ``N``.

        Args:
            key: one PRNG key.
            num_draws: positive int.

        Returns:
            ``x: (num_draws, dim)``, the mixture's ``log_q: (num_draws,)`` and
            ``run: (num_draws,)`` int, the run of each draw.
        """
        key, num_draws = as_key(key), check_positive_int("num_draws", num_draws)
        count_key, draw_key, order_key = jax.random.split(key, 3)
        w = self.run_weights
        counts = mixture.stratified_counts(float(jax.random.uniform(count_key)), w, num_draws)
        per_run = int(np.ceil(num_draws * w.max())) + 1
        x_runs, _ = self.sample_runs(draw_key, per_run)
        run = np.repeat(np.arange(self.num_runs), counts)
        within = np.concatenate([np.arange(c) for c in counts])
        order = np.asarray(jax.random.permutation(order_key, num_draws))
        run, within = run[order], within[order]
        x = x_runs[jnp.asarray(run), jnp.asarray(within)]
        return x, self.log_prob(x), run

    def sample(self, key: jax.Array, num_draws: int, context=None) -> jax.Array:
        """``num_draws`` draws, shape ``(num_draws, dim)``.

        Args:
            key: one PRNG key (`jax.random.key`); an int seed or a batch of keys is refused.
            num_draws: positive int.
            context: a conditional fit's context, ``(context_dim,)`` or ``(num_draws, context_dim)``
                (see `sample_and_log_prob`).
        """
        return self.sample_and_log_prob(key, num_draws, context)[0]

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

    def log_prob(self, x: jax.Array, context=None) -> jax.Array:
        """Log density of ``x: (n, dim)`` -> ``(n,)`` (or ``(dim,)`` -> scalar); ``x`` real (ints are cast).

        With several runs, the mixture's: ``logsumexp_r(log w_r + log q_r(x))``
        with `run_weights` (equal unless a `mixture`). A conditional fit needs
        ``context``: ``(context_dim,)`` for every point, or ``(n, context_dim)``, one
        per point; the result is ``log q(x | context)``.
        """
        x = check_array("x", x)
        if x.shape[-1:] != (self.dim,) or x.ndim not in (1, 2):
            raise ValueError(f"x must have shape (n, {self.dim}) or ({self.dim},), got {x.shape}.")
        if self.context_dim or context is not None:
            context = check_context(context, self.context_dim, x.shape[0] if x.ndim == 2 else 1)
        per_run = _log_prob_runs(self.flow, self.params, jnp.atleast_2d(x), context)
        if self.is_mixture:
            with np.errstate(divide="ignore"):
                log_w = jnp.asarray(np.log(self.run_weights), per_run.dtype)
            out = jax.nn.logsumexp(per_run + log_w[:, None], axis=0)
        else:
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
        weights = (f", mixture_weights=[{', '.join(f'{v:.3g}' for v in self.run_weights)}]"
                   if self.is_mixture else "")
        return (f"Posterior(flow={self.flow.name!r}, dim={self.dim}, num_runs={self.num_runs}{weights}, "
                f"steps_run={self.steps_run.tolist()}, stop_reason={self.stop_reason!r})")

    def diagnose(self, key: jax.Array, num_draws: int = 4000, *, iw_k: int | None = 100, context=None):
        """How good the fit is: ELBO, log Z estimate, Pareto k-hat, importance ESS, R-hat across runs.

        See `flowvi.diagnostics.diagnose`; ``num_draws`` is per run. With several
        runs it also reports which runs found which mode (``d.modes``); a
        `mixture` is diagnosed as one distribution (``num_runs * num_draws`` of
        its draws, weighted against its density).

        Args:
            key: one PRNG key.
            num_draws: positive int, draws per run.
            iw_k: positive int, draws per importance-weighted bound estimate; None skips the bound.
            context: for an amortised fit (`flowvi.fit` with ``contexts=``), the context
                ``(context_dim,)`` to diagnose ``q(x | context)`` at, against ``p~(x | context)``.

        Returns:
            `flowvi.diagnostics.Diagnostics`; ``print`` it for a table and a verdict.
        """
        key, num_draws = as_key(key), check_positive_int("num_draws", num_draws)
        iw_k = check_optional_positive_int("iw_k", iw_k)
        if self.context_dim or context is not None:
            return self.given(context, caller="diagnose").diagnose(key, num_draws, iw_k=iw_k)
        return diagnostics.diagnose(self, key, num_draws, iw_k=iw_k)

    def to_arviz(self, key: jax.Array, num_draws: int = 1000, *, resample: bool = False, var_name: str = "x",
                 dims: dict | None = None, coords: dict | None = None, log_likelihood: bool = True,
                 posterior_predictive: bool = False, diagnostics=None, context=None):
        """Draws as ArviZ data, chain = run; see `flowvi.arviz.to_arviz`.

        With the key and `num_draws` given to `diagnose`, the draws are the ones
        it diagnosed; pass its result as `diagnostics` to record it unchanged.
        A conditional fit exports ``q(x | context)`` at one ``context: (context_dim,)``.

        Returns:
            ``arviz.InferenceData`` (ArviZ 0.x) or ``xarray.DataTree`` (ArviZ 1.x).
        """
        key, num_draws = as_key(key), check_positive_int("num_draws", num_draws)
        if self.context_dim or context is not None:
            return self.given(context, caller="to_arviz").to_arviz(
                key, num_draws, resample=resample, var_name=var_name, dims=dims, coords=coords,
                log_likelihood=log_likelihood, posterior_predictive=posterior_predictive, diagnostics=diagnostics)
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
