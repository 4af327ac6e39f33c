"""`AutoFlow`: a NumPyro autoguide whose posterior over the flat latent is a flowvi flow."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions.transforms import UnpackTransform
from numpyro.infer.autoguide import AutoContinuous
from numpyro.infer.initialization import init_to_median

from flowvi.flows import FAMILIES, Flow, has_final_affine, hyperparameter_names, make_flow, with_final_affine
from flowvi.numpyro._model import (
    check_no_discrete_latents,
    check_same_latent_shapes,
    initialize,
    latent_shapes,
    model_structure,
)
from flowvi.numpyro.transform import FlowTransform
from flowvi.posterior import Posterior
from flowvi.validation import as_key, check_known_options, check_positive_float, check_positive_int

DEFAULT_QUANTILE_DRAWS = 4000
DEFAULT_FAMILY = "iaf"

NON_FINITE_WARNING = (
    "AutoFlow drew NaN or infinite values (or their log density was not finite), so every loss, gradient and "
    "summary computed from these draws is NaN. Usually the model's log density overflowed at an earlier draw "
    "(e.g. exp of a large linear predictor) and a non-finite gradient reached the guide's parameters, which "
    "then stay NaN. Start the guide narrower or nearer the posterior (init_scale=0.01, init_loc_fn="
    "init_to_median or init_to_value), and let the optimiser clip gradients and skip non-finite steps: "
    "optax.apply_if_finite(optax.chain(optax.clip_by_global_norm(10.0), optax.adam(1e-3)), "
    "max_consecutive_errors=50). This warning is shown once per guide."
)


def _ravel(values: dict, shapes: dict) -> jax.Array:
    """Site dict -> flat vector, sites in `shapes` order."""
    return jnp.concatenate([jnp.reshape(values[name], -1) for name in shapes])


def _unravel(flat: jax.Array, shapes: dict) -> dict:
    """Flat ``(latent_dim,)`` vector -> site dict."""
    out, start = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        out[name] = flat[start:start + size].reshape(shape)
        start += size
    return out


class _WarnOnce:
    """Host-side callback: issue `NON_FINITE_WARNING` the first time it is called."""

    def __init__(self):
        self.warned = False

    def __call__(self) -> None:
        if not self.warned:
            self.warned = True
            warnings.warn(NON_FINITE_WARNING, RuntimeWarning, stacklevel=2)


def _finite_reporter(on_non_finite: Callable[[], None]) -> Callable[[jax.Array], jax.Array]:
    """``report(ok)``: run `on_non_finite` on the host when the boolean ``ok`` is False, from compiled code.

    Under ``vmap`` (NumPyro's vectorised particles, ``Predictive``) the flags
    are first reduced with ``all``, so the check is one ``cond`` per call and
    the host is reached only when a value is non-finite (never in a healthy run).
    """
    @jax.custom_batching.custom_vmap
    def report(ok: jax.Array) -> jax.Array:
        jax.lax.cond(ok, lambda: None, lambda: jax.debug.callback(on_non_finite))
        return ok

    @report.def_vmap
    def _report_batched(axis_size, in_batched, ok):
        report(jnp.all(ok))
        return ok, in_batched[0]

    return report


class _CheckedFlowTransform(FlowTransform):
    """A `FlowTransform` that reports whether its draws and their log-determinant are finite."""

    def __init__(self, flow: Flow, params: Any, report: Callable[[jax.Array], jax.Array]):
        super().__init__(flow, params)
        self.report = report

    def call_with_intermediates(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``y`` and ``log|det J(x)|``, as `FlowTransform`, after reporting whether both are finite."""
        y, log_det = super().call_with_intermediates(x)
        self.report(jnp.all(jnp.isfinite(y)) & jnp.all(jnp.isfinite(log_det)))
        return y, log_det

    def tree_flatten(self):
        """Params are pytree data; the flow and the reporter are static."""
        return (self.params,), (("params",), {"flow": self.flow, "report": self.report})


def _flow_key(flow: Flow) -> tuple:
    return flow.name, flow.dim, flow.hyperparameters


def _describe(flow: Flow) -> str:
    return f"flow={flow.name!r} with {flow.options} on dim={flow.dim}"


def _check_init(init: Any, flow: str | Flow | None, hyperparameters: dict) -> Posterior | None:
    """Validate ``AutoFlow(init=...)`` against the guide's flow, as far as it is known before set-up."""
    if init is None:
        return None
    if not isinstance(init, Posterior):
        raise TypeError(f"init must be a flowvi.Posterior (the result of flowvi.fit on the same model), "
                        f"got {type(init).__name__}.")
    if init.num_runs != 1:
        raise ValueError(f"init holds {init.num_runs} runs; start the guide from one of them: init=post.run(i).")
    if init.flow.sample_cost != "one pass":
        raise ValueError(f"init is a fit of an inverted flow ({_describe(init.flow)}), which samples by numerical "
                         "root finding and so cannot be a guide; refit it with flowvi.fit.")
    if flow is None:
        return init
    try:
        wanted = make_flow(flow, init.flow.dim, **hyperparameters)
    except ValueError as err:  # a ready Flow of another dim
        raise ValueError(f"init is a fit of {_describe(init.flow)}, but flow= is another flow: {err} Leave "
                         "flow= out to continue with the fit's flow.") from err
    if _flow_key(wanted) != _flow_key(init.flow):
        raise ValueError(f"init is a fit of {_describe(init.flow)}, but this AutoFlow has {_describe(wanted)}; "
                         "the parameters of one do not fit the other. Leave flow= and the hyperparameters out "
                         "to continue with the fit's flow, or fit the model with the guide's flow.")
    return init


def _path_name(path) -> str:
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return ".".join(parts)


class AutoFlow(AutoContinuous):
    """A flowvi normalising flow over the model's flat unconstrained latent, as a NumPyro guide.

    The flat latent is the same one NumPyro's other `AutoContinuous` guides
    and `flowvi.Target.from_numpyro` use (every latent site through
    ``biject_to(site.support)``, raveled, sites in sorted name order); its
    approximate posterior is ``flowvi.flows.make_flow(flow, latent_dim,
    **hyperparameters)``. The flow's parameters are ordinary ``numpyro.param``
    sites named ``f"{prefix}_flow${path}"`` (e.g. ``auto_flow$affine.loc``), so
    ``svi.run(...).params`` is a plain dict of arrays that can be saved and
    passed back in, or turned into a `flowvi.Posterior` with
    `flowvi.numpyro.to_posterior` (diagnostics, ArviZ, plots, NeuTra). The
    density of the guide's own draws is the flow's exact one-pass
    ``sample_and_log_prob`` (no inverse), so IAF and BNAF train at the cost of
    sampling. Works with any ELBO that needs draws and their log density
    (``Trace_ELBO``, ``RenyiELBO``, ...), with ``Predictive``, and with
    subsampled plates (``numpyro.plate(..., subsample_size=...)``) around the
    likelihood: doubly-stochastic VI.

    The untrained guide is a narrow Gaussian at a sensible point, as NumPyro's
    own guides start: the flow's last, elementwise affine layer has its
    location at the `init_loc_fn` point and its scale at `init_scale` (the
    layers before it start at the identity), so the first draws stay near a
    point where the model's log density is finite, e.g. a Poisson regression
    with a log link and counts in the hundreds. With ``init=post`` the guide
    instead starts from a `flowvi.fit` of the same model.

    Args:
        model: a NumPyro model with continuous latent sites (none inside a subsampled plate).
        flow: a family name from `flowvi.flows.FAMILIES` or a ready `flowvi.flows.Flow`
            (its ``dim`` must be the latent dimension). Default ``"iaf"``, or
            the flow of `init` when that is given.
        prefix: prefix of the parameter names.
        init_loc_fn: NumPyro init strategy (``init_to_median``, ``init_to_uniform``,
            ``init_to_value(values=...)``, ...): where the untrained guide is centred.
            Default ``init_to_median`` (the prior median of each site, 15 prior draws).
        init_scale: positive float, the scale of the untrained guide in every
            unconstrained coordinate (NumPyro's meaning). Default 0.1.
        init: a `flowvi.Posterior` from ``flowvi.fit`` of the same model (one run):
            the guide starts with its flow parameters, so SVI continues from
            that fit; `init_loc_fn` and `init_scale` then only set the guide up.
        **hyperparameters: the family's hyperparameters, e.g. ``layers=4, hidden=(32, 32)``.

    Raises:
        ValueError: an unknown family; a non-positive `init_scale`; an `init` of
            another flow or of several runs; discrete latent sites; a log
            density that is non-finite at every initial point NumPyro tries;
            model arguments that change the latent shapes after the guide was
            set up; an `init` fitted to a model with other latent sites (at set-up).
        TypeError: unknown hyperparameter names (the valid ones are listed); an
            `init` that is not a `flowvi.Posterior`; an `init_loc_fn` that is not callable.

    Warns:
        RuntimeWarning: once per guide, when its draws or their log density are
            NaN or infinite (inside SVI, ``Predictive`` or `sample_posterior`):
            the run has diverged; the message says how to keep it finite.

    Examples:
        >>> import jax, optax, numpyro, numpyro.distributions as dist
        >>> from numpyro.infer import SVI, Trace_ELBO
        >>> from flowvi.numpyro import AutoFlow
        >>> def model(y):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     s = numpyro.sample("s", dist.HalfNormal(5.0))
        ...     with numpyro.plate("n", y.shape[0]):
        ...         numpyro.sample("y", dist.Normal(mu, s), obs=y)
        >>> guide = AutoFlow(model, flow="iaf", layers=2, hidden=(16,))
        >>> svi = SVI(model, guide, optax.adam(1e-2), Trace_ELBO())
        >>> result = svi.run(jax.random.key(0), 200, jax.numpy.ones(5), progress_bar=False)
        >>> guide.sample_posterior(jax.random.key(1), result.params, sample_shape=(3,))["s"].shape
        (3,)
    """

    def __init__(self, model, flow: str | Flow | None = None, *, prefix: str = "auto",
                 init_loc_fn=init_to_median, init_scale: float = 0.1, init: Posterior | None = None,
                 **hyperparameters: Any):
        if isinstance(flow, str):
            if flow not in FAMILIES:
                raise ValueError(f"flow={flow!r} is not a known flow family; expected one of "
                                 f"{', '.join(map(repr, FAMILIES))} or a flowvi.flows.Flow.")
            check_known_options(f"hyperparameter(s) for flow={flow!r}:", hyperparameters,
                                hyperparameter_names(flow))
        elif isinstance(flow, Flow):
            if hyperparameters:
                raise TypeError(f"flow hyperparameters {sorted(hyperparameters)} were given with a ready "
                                "Flow; pass them to the family function instead.")
        elif flow is None:
            if init is None or hyperparameters:
                check_known_options(f"hyperparameter(s) for flow={DEFAULT_FAMILY!r}:", hyperparameters,
                                    hyperparameter_names(DEFAULT_FAMILY))
        else:
            raise TypeError(f"flow must be a family name or a flowvi.flows.Flow, got {type(flow).__name__}.")
        if not callable(init_loc_fn):
            raise TypeError(f"init_loc_fn must be a NumPyro init strategy (a callable such as init_to_median), "
                            f"got {type(init_loc_fn).__name__}.")
        self.init_scale = check_positive_float("init_scale", init_scale)
        self._init = _check_init(init, DEFAULT_FAMILY if flow is None and hyperparameters else flow,
                                 hyperparameters)
        if flow is None:
            flow = self._init.flow if self._init is not None and not hyperparameters else DEFAULT_FAMILY
        self._flow_spec = flow
        self._hyperparameters = dict(hyperparameters)
        self._warn_non_finite = _WarnOnce()
        self._report_finite = _finite_reporter(self._warn_non_finite)
        self.flow: Flow | None = None
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn)

    # --- set-up -------------------------------------------------------------------------------

    def _setup_prototype(self, *args, **kwargs):
        # What numpyro's AutoGuide and AutoContinuous set-ups do, with two differences: discrete
        # latents get flowvi's error, and NumPyro searches for a valid initial point with a batch
        # of one key, which takes its compiled path (lax.map over a while_loop) instead of an
        # op-by-op eager gradient of the whole model (many small compilations; far slower to start).
        structure = model_structure(self.model, args, kwargs)
        check_no_discrete_latents(structure, "AutoFlow")
        rng_key = numpyro.prng_key()
        if rng_key is None:
            raise RuntimeError("AutoFlow sets itself up on its first call, which needs a PRNG key: call it "
                               "under numpyro.handlers.seed (svi.init and Predictive do).")
        self._init_locs, info = initialize(
            self.model, args, kwargs, rng_key=rng_key, init_strategy=self.init_loc_fn, dynamic_args=True,
            forward_mode_differentiation=self._forward_mode_differentiation)
        self._potential_fn_gen, postprocess_fn_gen, self.prototype_trace = \
            info.potential_fn, info.postprocess_fn, info.model_trace
        self._potential_fn = self._potential_fn_gen(*args, **kwargs)
        # Seeded in case the model subsamples: only its deterministic sites are collected.
        self._postprocess_fn = handlers.seed(postprocess_fn_gen(*args, **kwargs), rng_seed=0)

        self._prototype_frames = {}
        for name, site in self.prototype_trace.items():
            if site["type"] == "sample" and not site["is_observed"]:
                # Observed sites are skipped: they may be subsampled with another size later.
                for frame in site["cond_indep_stack"]:
                    self._prototype_frames.setdefault(frame.name, frame)
            elif site["type"] == "plate":
                self._prototype_frame_full_sizes[name] = site["args"][0]
        local = sorted({f"'{name}' (plate '{frame.name}')" for name, site in self.prototype_trace.items()
                        if site["type"] == "sample" and not site["is_observed"]
                        for frame in site["cond_indep_stack"]
                        if frame.size != self._prototype_frame_full_sizes[frame.name]})
        if local:
            raise ValueError(f"AutoFlow covers global latent variables only; {', '.join(local)} sit in a "
                             "subsampled plate. Subsample only the likelihood.")

        # Sorted site names, as NumPyro's own AutoContinuous (ravel_pytree) and flowvi.Target.from_numpyro.
        shapes = {name: tuple(jnp.shape(self._init_locs[name])) for name in sorted(self._init_locs)}
        self._init_latent = _ravel(self._init_locs, shapes)
        self._unpack_latent = UnpackTransform(functools.partial(_unravel, shapes=shapes),
                                              functools.partial(_ravel, shapes=shapes))
        self.latent_dim = int(self._init_latent.shape[0])
        self._latent_shapes = {k: v for k, v in latent_shapes(structure).items() if k in shapes}

        self._unconstrained_shapes = shapes
        if self._init is not None:
            self._check_init_fits(shapes)
        self.flow = make_flow(self._flow_spec, self.latent_dim, **self._hyperparameters)
        param_shapes = jax.eval_shape(self.flow.init, jax.random.PRNGKey(0))
        paths, self._param_treedef = jax.tree_util.tree_flatten_with_path(param_shapes)
        self._param_names = [f"{self.prefix}_flow${_path_name(path)}" for path, _ in paths]

    def _check_init_fits(self, shapes: dict) -> None:
        """`init` must be a fit of this model's flat latent: same dimension and, when known, the same sites."""
        post = self._init
        sites = ", ".join(f"'{k}' {v}" for k, v in shapes.items())
        fitted = getattr(post.target, "unconstrained_shapes", None)
        if fitted is not None and list(fitted.items()) != list(shapes.items()):
            fitted_sites = ", ".join(f"'{k}' {tuple(v)}" for k, v in fitted.items())
            raise ValueError(f"init was fitted to a model whose unconstrained latent sites are {fitted_sites}, but "
                             f"this model (with these arguments) has {sites}. Start from a fit of the same model "
                             "with the same arguments.")
        if post.flow.dim != self.latent_dim:
            raise ValueError(f"init is a fit on dim={post.flow.dim}, but this model's flat latent has "
                             f"dim={self.latent_dim} ({sites}). Start from a fit of the same model.")

    def _ensure_prototype(self, args: tuple, kwargs: dict, what: str) -> None:
        """Set the guide up from the model arguments if needed, else check they keep the latent shapes."""
        if self.prototype_trace is None:
            if not args and not kwargs:
                raise RuntimeError(
                    f"AutoFlow.{what} needs the guide set up: pass the model's arguments "
                    f"(guide.{what}(key, params, *args, **kwargs)), or run svi.init / svi.run first.")
            with handlers.seed(rng_seed=0):
                self._setup_prototype(*args, **kwargs)
        elif args or kwargs:
            check_same_latent_shapes(self._latent_shapes, self.model, args, kwargs, what)

    def __call__(self, *args, **kwargs):
        """Draw the latent sites (NumPyro's AutoContinuous guide), checking the latent shapes first."""
        if self.prototype_trace is not None:
            check_same_latent_shapes(self._latent_shapes, self.model, args, kwargs, "this guide call")
        return super().__call__(*args, **kwargs)

    # --- the flow -----------------------------------------------------------------------------

    def _init_flow_params(self, key: jax.Array) -> Any:
        """The untrained flow: `init`'s parameters, or a fresh flow whose last affine layer is at the init point."""
        if self._init is not None:
            params = jax.tree.map(lambda a: jnp.asarray(a[0]), self._init.params)
            if jax.tree.structure(params) != self._param_treedef:
                raise ValueError(f"init's parameters do not have the layout of {_describe(self.flow)}.")
            return params
        params = jax.jit(self.flow.init)(key)  # one compilation rather than op by op
        if not has_final_affine(params):  # a custom Flow: it starts as it is
            return params
        return with_final_affine(params, loc=self._init_latent, scale=jnp.full(self.latent_dim, self.init_scale))

    def _flow_params(self) -> Any:
        values = [numpyro.param(name) for name in self._param_names]
        if any(v is None for v in values):
            key = numpyro.prng_key()
            if key is None:
                raise RuntimeError("AutoFlow has no parameter values: run it under numpyro.handlers.seed to "
                                   "initialise them (svi.init does), or substitute params.")
            leaves = jax.tree.leaves(self._init_flow_params(key))
            values = [numpyro.param(name, leaf) for name, leaf in zip(self._param_names, leaves, strict=True)]
        return jax.tree.unflatten(self._param_treedef, values)

    def _get_posterior(self) -> dist.TransformedDistribution:
        """The flow as a NumPyro distribution whose draws report (once) when they are non-finite."""
        transform = _CheckedFlowTransform(self.flow, self._flow_params(), self._report_finite)
        return dist.TransformedDistribution(self.get_base_dist(), transform)

    def flow_params(self, params: dict, *args, **kwargs) -> Any:
        """The flow's parameter pytree (no run axis) from the guide's parameters.

        Args:
            params: the guide's parameters (``svi.run(...).params``, or a reloaded dict).
            *args: the model's positional arguments, if this guide is not set up yet.
            **kwargs: the model's keyword arguments, as for `args`.

        Returns:
            The pytree ``self.flow.apply`` takes.

        Raises:
            TypeError: `params` is not a dict.
            ValueError: `params` lacks some of this guide's parameters, or has them in another shape.
        """
        if not isinstance(params, dict):
            raise TypeError(f"params must be the guide's parameter dict (svi.run(...).params), "
                            f"got {type(params).__name__}.")
        self._ensure_prototype(args, kwargs, "flow_params")
        missing = [name for name in self._param_names if name not in params]
        if missing:
            raise ValueError(f"params lacks the guide's parameter(s) {', '.join(map(repr, missing[:4]))}"
                             f"{' ...' if len(missing) > 4 else ''}: expected the params of this AutoFlow "
                             f"(prefix={self.prefix!r}, {_describe(self.flow)}), got keys {sorted(params)[:6]}.")
        expected = jax.tree.leaves(jax.eval_shape(self.flow.init, jax.random.PRNGKey(0)))
        leaves = [jnp.asarray(params[name]) for name in self._param_names]
        wrong = [f"{name} {tuple(leaf.shape)} (expected {tuple(e.shape)})" for name, leaf, e
                 in zip(self._param_names, leaves, expected, strict=True) if leaf.shape != e.shape]
        if wrong:
            raise ValueError(f"params has the guide's names in other shapes: {', '.join(wrong[:3])}; they come "
                             "from an AutoFlow with other settings or another model.")
        return jax.tree.unflatten(self._param_treedef, leaves)

    @property
    def unconstrained_shapes(self) -> dict[str, tuple] | None:
        """Latent site -> its shape on R^k, in the flat latent's order (None before set-up)."""
        return None if self.prototype_trace is None else dict(self._unconstrained_shapes)

    def get_base_dist(self) -> dist.Distribution:
        """Standard normal on R^latent_dim, the flow's base."""
        return dist.Normal(jnp.zeros(self.latent_dim), 1.0).to_event(1)

    # --- results ------------------------------------------------------------------------------

    def sample_posterior(self, rng_key, params, *args, sample_shape=(), **kwargs) -> dict:
        """Constrained draws of every latent site plus the deterministic sites.

        Args:
            rng_key: PRNG key.
            params: the guide's parameters (``svi.run(...).params``, or a reloaded dict).
            *args: the model's positional arguments; needed only when this guide
                object has not been set up yet (e.g. a fresh guide with reloaded params).
            sample_shape: leading shape of the draws.
            **kwargs: the model's keyword arguments, as for `args`.

        Returns:
            ``{site: (*sample_shape, *site_shape)}``.

        Raises:
            TypeError: `rng_key` is not one PRNG key (an int seed, a batch of keys).
            ValueError: `sample_shape` is not a tuple of positive ints.
        """
        rng_key = as_key(rng_key, "rng_key")
        if not isinstance(sample_shape, tuple) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sample_shape):
            raise ValueError(f"sample_shape must be a tuple of positive ints such as (1000,), got {sample_shape!r}.")
        self._ensure_prototype(args, kwargs, "sample_posterior")
        return super().sample_posterior(rng_key, params, sample_shape=sample_shape)

    def quantiles(self, params, quantiles, *args, num_samples: int = DEFAULT_QUANTILE_DRAWS,
                  rng_key: jax.Array | None = None, **kwargs) -> dict:
        """Posterior quantiles of every site, by Monte Carlo.

        A flow has no closed-form quantile function, so these are empirical
        quantiles of `num_samples` constrained draws (Monte Carlo error of a
        quantile is about ``sqrt(q (1 - q) / num_samples) / density`` at it).

        Args:
            params: the guide's parameters.
            quantiles: a list of probabilities in [0, 1].
            *args: the model's positional arguments, if this guide is not set up yet.
            num_samples: draws used.
            rng_key: PRNG key for the draws; default a fixed key (reproducible).
            **kwargs: the model's keyword arguments, as for `args`.

        Returns:
            ``{site: (len(quantiles), *site_shape)}``, latent and deterministic sites.
        """
        num_samples = check_positive_int("num_samples", num_samples)
        q = jnp.asarray(quantiles, dtype=float)
        if q.ndim != 1 or not bool(jnp.all((q >= 0) & (q <= 1))):
            raise ValueError(f"quantiles must be a list of probabilities in [0, 1], got {quantiles!r}.")
        key = jax.random.key(0) if rng_key is None else as_key(rng_key, "rng_key")
        draws = self.sample_posterior(key, params, *args, sample_shape=(num_samples,), **kwargs)
        return {name: jnp.quantile(value, q, axis=0) for name, value in draws.items()}

    def median(self, params, *args, **kwargs) -> dict:
        """Posterior medians of every site (Monte Carlo, as in `quantiles`)."""
        return {name: value[0] for name, value in self.quantiles(params, [0.5], *args, **kwargs).items()}
