"""`AutoFlow`: a NumPyro autoguide whose posterior over the flat latent is a flowvi flow."""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions.transforms import UnpackTransform
from numpyro.infer.autoguide import AutoContinuous
from numpyro.infer.initialization import init_to_uniform

from flowvi.flows import FAMILIES, Flow, has_final_affine, hyperparameter_names, make_flow, with_final_affine
from flowvi.numpyro._model import (
    check_no_discrete_latents,
    check_same_latent_shapes,
    initialize,
    latent_shapes,
    model_structure,
)
from flowvi.numpyro.transform import flow_distribution
from flowvi.validation import as_key, check_known_options, check_positive_int

DEFAULT_QUANTILE_DRAWS = 4000


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
    use (every latent site through ``biject_to(site.support)``, raveled); its
    approximate posterior is ``flowvi.flows.make_flow(flow, latent_dim,
    **hyperparameters)``. The flow's parameters are ordinary ``numpyro.param``
    sites named ``f"{prefix}_flow${path}"`` (e.g. ``auto_flow$affine.loc``), so
    ``svi.run(...).params`` is a plain dict of arrays that can be saved and
    passed back in. The density of the guide's own draws is the flow's exact
    one-pass ``sample_and_log_prob`` (no inverse), so IAF and BNAF train at
    the cost of sampling. Works with any ELBO that needs draws and their log
    density (``Trace_ELBO``, ``RenyiELBO``, ...), with ``Predictive``, and with
    subsampled plates (``numpyro.plate(..., subsample_size=...)``) around the
    likelihood: doubly-stochastic VI.

    Args:
        model: a NumPyro model with continuous latent sites (none inside a subsampled plate).
        flow: a family name from `flowvi.flows.FAMILIES` (default ``"iaf"``)
            or a ready `flowvi.flows.Flow` (its ``dim`` must be the latent dimension).
        prefix: prefix of the parameter names.
        init_loc_fn: NumPyro init strategy; the untrained flow is a standard
            normal centred there (the shift of the flow's last, elementwise
            affine layer). Default ``init_to_uniform``.
        **hyperparameters: the family's hyperparameters, e.g. ``layers=4, hidden=(32, 32)``.

    Raises:
        ValueError: an unknown family; discrete latent sites; a log density
            that is non-finite at every initial point NumPyro tries; model
            arguments that change the latent shapes after the guide was set up.
        TypeError: unknown hyperparameter names (the valid ones are listed).

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

    def __init__(self, model, flow: str | Flow = "iaf", *, prefix: str = "auto",
                 init_loc_fn=init_to_uniform, **hyperparameters: Any):
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
        else:
            raise TypeError(f"flow must be a family name or a flowvi.flows.Flow, got {type(flow).__name__}.")
        self._flow_spec = flow
        self._hyperparameters = dict(hyperparameters)
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

        shapes = {name: tuple(jnp.shape(value)) for name, value in self._init_locs.items()}
        self._init_latent = _ravel(self._init_locs, shapes)
        self._unpack_latent = UnpackTransform(functools.partial(_unravel, shapes=shapes),
                                              functools.partial(_ravel, shapes=shapes))
        self.latent_dim = int(self._init_latent.shape[0])
        self._latent_shapes = {k: v for k, v in latent_shapes(structure).items() if k in shapes}

        self.flow = make_flow(self._flow_spec, self.latent_dim, **self._hyperparameters)
        param_shapes = jax.eval_shape(self.flow.init, jax.random.PRNGKey(0))
        paths, self._param_treedef = jax.tree_util.tree_flatten_with_path(param_shapes)
        self._param_names = [f"{self.prefix}_flow${_path_name(path)}" for path, _ in paths]

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
        params = jax.jit(self.flow.init)(key)  # one compilation rather than op by op
        return with_final_affine(params, loc=self._init_latent) if has_final_affine(params) else params

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
        return flow_distribution(self.flow, self._flow_params())

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
