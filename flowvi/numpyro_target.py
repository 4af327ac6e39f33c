"""`NumPyroTarget`: a NumPyro model as a flat, unconstrained, named `flowvi.Target`.

The log density is NumPyro's own negative potential energy: every latent
site is mapped to R^k with ``biject_to(site.support)``, and the Jacobians of
those maps come from NumPyro, not from flowvi. The flat vector is the
``jax.flatten_util.ravel_pytree`` of NumPyro's dict of unconstrained values
(sites in sorted name order, each raveled in C order).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.util import initialize_model

from flowvi.target import Target

_INIT_FAILURE = "Cannot find valid initial parameters"


def prototype_trace(model: Callable, model_args: tuple, model_kwargs: dict) -> dict:
    """One seeded run of `model`, hidden from any enclosing NumPyro handlers."""
    with handlers.block():
        return handlers.trace(handlers.seed(model, rng_seed=0)).get_trace(*model_args, **model_kwargs)


def latent_sites(trace: dict) -> dict[str, dict]:
    """The unobserved sample sites of a trace, by name."""
    return {name: site for name, site in trace.items()
            if site["type"] == "sample" and not site["is_observed"]}


def check_no_discrete_latents(trace: dict, who: str) -> None:
    """Raise ValueError naming discrete latent sites that NumPyro will not enumerate.

    Sites marked ``infer={"enumerate": "parallel"}`` are left to NumPyro, which
    sums them out of the potential (it needs ``funsor`` for that).
    """
    discrete = [f"'{name}' ({type(site['fn']).__name__})" for name, site in latent_sites(trace).items()
                if site["fn"].support.is_discrete and site["infer"].get("enumerate") != "parallel"]
    if discrete:
        raise ValueError(
            f"{who} needs continuous latent variables, but the model has discrete latent site(s) "
            f"{', '.join(discrete)}. They must be enumerated (infer={{'enumerate': 'parallel'}}, "
            "summed out by NumPyro; needs funsor) or marginalised out of the model by hand, "
            "or observed.")


def latent_shapes(trace: dict) -> dict[str, tuple]:
    """Constrained shape of every latent sample site."""
    return {name: tuple(jnp.shape(site["value"])) for name, site in latent_sites(trace).items()}


def check_same_latent_shapes(expected: dict[str, tuple], model: Callable, model_args: tuple,
                             model_kwargs: dict, when: str) -> None:
    """Raise ValueError if the model, run with new arguments, has latent sites of other shapes.

    Sites that are latent now but were not (e.g. ``obs`` when ``y=None`` is
    passed for prediction) are ignored: only the fitted latents must keep
    their shapes.
    """
    now = latent_shapes(prototype_trace(model, model_args, model_kwargs))
    changed = {name: (shape, now[name]) for name, shape in expected.items()
               if name in now and now[name] != shape}
    if changed:
        detail = ", ".join(f"'{n}' {old} -> {new}" for n, (old, new) in changed.items())
        raise ValueError(
            f"the model's latent dimension changed between fit and {when}: {detail}. The approximation "
            "was fitted with other model arguments; refit with the new arguments (or pass the data "
            "that gives the fitted shapes).")


@contextlib.contextmanager
def numpyro_init_diagnosis(model: Callable, model_args: tuple, model_kwargs: dict,
                           init_strategy: Callable = init_to_uniform) -> Iterator[None]:
    """Turn NumPyro's "Cannot find valid initial parameters" into a ValueError with its diagnosis.

    NumPyro reports the offending sites as warnings ("Site obs: Out-of-support
    values ...") before it raises; they are collected here and put into the
    error, together with the sites whose log density is non-finite at one of
    NumPyro's initial points. Other warnings are re-issued unchanged.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except RuntimeError as err:
            if _INIT_FAILURE not in str(err):
                raise
            notes = list(dict.fromkeys(str(w.message) for w in caught))
            bad = _nonfinite_sites(model, model_args, model_kwargs, init_strategy)
            if bad:
                notes.append("non-finite log density at a NumPyro initial point in site(s) " + ", ".join(bad))
            raise ValueError(
                "the model's log density (or its gradient) is non-finite at every initial point NumPyro "
                f"tried. NumPyro's diagnosis: {' | '.join(notes) if notes else str(err)}") from err
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _nonfinite_sites(model: Callable, model_args: tuple, model_kwargs: dict,
                     init_strategy: Callable) -> list[str]:
    """Sample sites whose log_prob is non-finite when the latents sit at an `init_strategy` point."""
    try:
        with handlers.block():
            seeded = handlers.seed(handlers.substitute(model, substitute_fn=init_strategy), rng_seed=0)
            trace = handlers.trace(seeded).get_trace(*model_args, **model_kwargs)
    except Exception:  # noqa: BLE001 - the diagnosis is best effort; NumPyro's own message still goes out
        return []
    bad = []
    for name, site in trace.items():
        if site["type"] == "sample":
            log_prob = site["fn"].log_prob(site["value"])
            if not np.all(np.isfinite(np.asarray(log_prob))):
                bad.append(f"'{name}'" + (" (observed)" if site["is_observed"] else ""))
    return bad


def _subsampled_plates(trace: dict) -> list[str]:
    return [f"'{name}' (size {site['args'][0]}, subsample_size {site['args'][1]})"
            for name, site in trace.items()
            if site["type"] == "plate" and site["args"][1] is not None and site["args"][1] != site["args"][0]]


def _coordinate_names(name: str, shape: tuple) -> list[str]:
    if shape == ():
        return [name]
    return [f"{name}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape)]


class NumPyroTarget(Target):
    """A NumPyro model's posterior on the flat unconstrained latent vector.

    ``log_density(x) = -potential_energy(unravel(x))``: the model's log joint
    at the constrained values plus the log-Jacobians of NumPyro's
    ``biject_to`` transforms. Build it with `flowvi.Target.from_numpyro`.

    Args:
        model: a NumPyro model (a callable with ``numpyro.sample`` sites).
        model_args: positional arguments for the model (data), fixed here.
        model_kwargs: keyword arguments for the model (e.g. ``y=y``).

    Attributes:
        dim: length of the flat unconstrained vector.
        names: one name per flat coordinate, ``"mu"``, ``"theta[0]"``,
            ``"L[0]"``: a site name with the index into its *unconstrained*
            array (for ``mu``, ``tau`` and ``theta`` that is the site's own
            shape; a 3-simplex has 2 unconstrained coordinates).
        model, model_args, model_kwargs: what the target was built from.
        site_shapes: latent site name -> constrained shape, e.g. ``{"w": (3,)}``.
        unconstrained_shapes: latent site name -> shape on R^k, e.g. ``{"w": (2,)}``.
        observed_sites: observed site name -> observed array.
        deterministic_sites: deterministic site name -> shape.

    Raises:
        ValueError: discrete latent sites; a subsampled plate; a log density
            that is non-finite at every initial point NumPyro tries.

    Examples:
        >>> import jax, numpyro, numpyro.distributions as dist, flowvi
        >>> def model():
        ...     numpyro.sample("s", dist.HalfNormal(1.0))
        >>> t = flowvi.Target.from_numpyro(model)
        >>> t.dim, t.names
        (1, ['s'])
        >>> t.constrain(jax.numpy.zeros((4, 1)))["s"].shape
        (4,)
    """

    def __init__(self, model: Callable, model_args: tuple = (), model_kwargs: dict | None = None):
        if not callable(model):
            raise TypeError(f"model must be a NumPyro model (a callable), got {type(model).__name__}.")
        model_args = tuple(model_args)
        model_kwargs = dict(model_kwargs or {})
        trace = prototype_trace(model, model_args, model_kwargs)
        check_no_discrete_latents(trace, "flowvi.Target.from_numpyro")
        subsampled = _subsampled_plates(trace)
        if subsampled:
            raise ValueError(
                f"flowvi.Target.from_numpyro needs the full likelihood, but plate(s) {', '.join(subsampled)} "
                "are subsampled. Pass arguments that switch subsampling off, or fit the subsampled model "
                "with flowvi.numpyro.AutoFlow in numpyro's SVI (doubly-stochastic VI).")
        if not latent_sites(trace):
            raise ValueError("the NumPyro model has no latent sample sites: there is nothing to approximate.")

        with numpyro_init_diagnosis(model, model_args, model_kwargs):
            info = initialize_model(jax.random.PRNGKey(0), model, model_args=model_args,
                                    model_kwargs=model_kwargs)
        init = info.param_info.z
        flat, unravel = ravel_pytree(init)
        names = [n for site, value in sorted(init.items()) for n in _coordinate_names(site, jnp.shape(value))]

        self.model = model
        self.model_args = model_args
        self.model_kwargs = model_kwargs
        self.site_shapes = {k: v for k, v in latent_shapes(trace).items() if k in init}
        self.unconstrained_shapes = {k: tuple(jnp.shape(v)) for k, v in sorted(init.items())}
        self.observed_sites = {name: site["value"] for name, site in trace.items()
                               if site["type"] == "sample" and site["is_observed"]}
        self.deterministic_sites = {name: tuple(jnp.shape(site["value"])) for name, site in trace.items()
                                    if site["type"] == "deterministic"}
        self.init_point = flat
        self._unravel = unravel

        potential_fn = info.potential_fn

        # Made once: the fit loop's compilation cache is keyed on this function object.
        def log_density(x: jax.Array) -> jax.Array:
            """``x: (dim,)`` -> scalar: the negative NumPyro potential energy."""
            return -potential_fn(unravel(x))

        super().__init__(log_density, int(flat.shape[0]), names)
        postprocess = handlers.seed(info.postprocess_fn, rng_seed=0)
        self._constrain = jax.jit(jax.vmap(lambda x: postprocess(unravel(x))))

    def __repr__(self) -> str:
        name = getattr(self.model, "__name__", type(self.model).__name__)
        return f"NumPyroTarget(model={name}, dim={self.dim}, sites={self.site_shapes})"

    def unconstrained_dict(self, x: jax.Array) -> dict[str, jax.Array]:
        """Flat ``x: (dim,)`` -> NumPyro's dict of unconstrained site values."""
        return self._unravel(x)

    def constrain(self, x: jax.Array) -> dict[str, jax.Array]:
        """Map flat unconstrained draws to named, constrained values.

        Args:
            x: array of shape ``(n, dim)`` (or ``(dim,)`` for one point).

        Returns:
            Latent sites (constrained, ``(n, *site_shape)``) and deterministic
            sites (``(n, *shape)``), by name; no leading axis for ``(dim,)`` input.

        Raises:
            ValueError: ``x`` does not have ``dim`` coordinates (e.g. draws from
                a fit to this model with arguments of another latent dimension).
        """
        x = jnp.asarray(x)
        if x.ndim not in (1, 2) or x.shape[-1] != self.dim:
            raise ValueError(
                f"x must have shape (n, {self.dim}) or ({self.dim},): this model's flat latent vector has "
                f"dim={self.dim} ({', '.join(f'{k}{v}' for k, v in self.unconstrained_shapes.items())}), "
                f"got shape {x.shape}. If the draws come from a fit to this model with other arguments, "
                "the latent dimension changed between fit and sampling.")
        out = self._constrain(jnp.atleast_2d(x))
        return jax.tree.map(lambda a: a[0], out) if x.ndim == 1 else out


def from_numpyro(model: Callable, *args: Any, **kwargs: Any) -> NumPyroTarget:
    """`NumPyroTarget` for ``model(*args, **kwargs)``; see `flowvi.Target.from_numpyro`."""
    return NumPyroTarget(model, args, kwargs)


__all__ = ["NumPyroTarget", "from_numpyro"]
