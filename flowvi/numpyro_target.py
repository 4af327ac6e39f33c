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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.util import initialize_model

from flowvi.target import Target

_INIT_FAILURE = "Cannot find valid initial parameters"


def prototype_trace(model: Callable, model_args: tuple, model_kwargs: dict) -> dict:
    """One seeded, eager run of `model` (concrete values), hidden from any enclosing NumPyro handlers.

    Eager runs compile every operation separately; `model_structure` is the
    cheap alternative when only names, kinds and shapes are needed.
    """
    with handlers.block():
        return handlers.trace(handlers.seed(model, rng_seed=0)).get_trace(*model_args, **model_kwargs)


class SiteInfo(NamedTuple):
    """What flowvi needs to know about one site of a NumPyro model; no arrays."""

    type: str
    shape: tuple
    is_observed: bool
    is_discrete: bool
    enumerated: bool
    distribution: str
    plate_sizes: tuple  # (size, subsample_size) for plate sites, else ()


def _distribution_name(fn) -> str:
    while isinstance(fn, dist.ExpandedDistribution | dist.Independent | dist.MaskedDistribution):
        fn = fn.base_dist
    return type(fn).__name__


def _site_info(site: dict) -> SiteInfo:
    is_sample = site["type"] == "sample"
    return SiteInfo(
        type=site["type"],
        shape=tuple(jnp.shape(site["value"])) if site["type"] in ("sample", "deterministic") else (),
        is_observed=bool(is_sample and site["is_observed"]),
        is_discrete=bool(is_sample and site["fn"].support.is_discrete),
        enumerated=bool(is_sample and (site.get("infer") or {}).get("enumerate") == "parallel"),
        distribution=_distribution_name(site["fn"]) if is_sample else "",
        plate_sizes=tuple(site["args"][:2]) if site["type"] == "plate" else ())


def model_structure(model: Callable, model_args: tuple, model_kwargs: dict) -> dict[str, SiteInfo]:
    """Site names, kinds and shapes of one seeded run of `model`, hidden from enclosing handlers.

    The run is abstract (`jax.eval_shape`): nothing is computed or compiled, which
    matters because an eager run of a model compiles every operation separately.
    A model whose Python control flow needs concrete values is run eagerly instead.
    """
    out: dict[str, SiteInfo] = {}

    def run():
        out.update({name: _site_info(site)
                    for name, site in prototype_trace(model, model_args, model_kwargs).items()})

    try:
        jax.eval_shape(run)
    except Exception:  # noqa: BLE001 - e.g. control flow on values; an eager run raises real errors itself
        out.clear()
        run()
    return out


def latent_shapes(structure: dict[str, SiteInfo]) -> dict[str, tuple]:
    """Constrained shape of every latent (unobserved) sample site."""
    return {name: s.shape for name, s in structure.items() if s.type == "sample" and not s.is_observed}


def check_no_discrete_latents(structure: dict[str, SiteInfo], who: str) -> None:
    """Raise ValueError naming discrete latent sites that NumPyro will not enumerate.

    Sites marked ``infer={"enumerate": "parallel"}`` are left to NumPyro, which
    sums them out of the potential (it needs ``funsor`` for that).
    """
    discrete = [f"'{name}' ({s.distribution})" for name, s in structure.items()
                if s.type == "sample" and not s.is_observed and s.is_discrete and not s.enumerated]
    if discrete:
        raise ValueError(
            f"{who} needs continuous latent variables, but the model has discrete latent site(s) "
            f"{', '.join(discrete)}. They must be enumerated (infer={{'enumerate': 'parallel'}}, "
            "summed out by NumPyro; needs funsor) or marginalised out of the model by hand, "
            "or observed.")


def check_same_latent_shapes(expected: dict[str, tuple], model: Callable, model_args: tuple,
                             model_kwargs: dict, when: str) -> None:
    """Raise ValueError if the model, run with new arguments, has latent sites of other shapes.

    Sites that are latent now but were not (e.g. ``obs`` when ``y=None`` is
    passed for prediction) are ignored: only the fitted latents must keep
    their shapes.
    """
    now = latent_shapes(model_structure(model, model_args, model_kwargs))
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


def _subsampled_plates(structure: dict[str, SiteInfo]) -> list[str]:
    return [f"'{name}' (size {s.plate_sizes[0]}, subsample_size {s.plate_sizes[1]})"
            for name, s in structure.items()
            if s.type == "plate" and s.plate_sizes[1] is not None and s.plate_sizes[1] != s.plate_sizes[0]]


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
        init_point: ``(dim,)``, the valid initial point NumPyro found (``init_to_uniform``).

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
        structure = model_structure(model, model_args, model_kwargs)
        check_no_discrete_latents(structure, "flowvi.Target.from_numpyro")
        subsampled = _subsampled_plates(structure)
        if subsampled:
            raise ValueError(
                f"flowvi.Target.from_numpyro needs the full likelihood, but plate(s) {', '.join(subsampled)} "
                "are subsampled. Pass arguments that switch subsampling off, or fit the subsampled model "
                "with flowvi.numpyro.AutoFlow in numpyro's SVI (doubly-stochastic VI).")
        if not latent_shapes(structure):
            raise ValueError("the NumPyro model has no latent sample sites: there is nothing to approximate.")

        with numpyro_init_diagnosis(model, model_args, model_kwargs):
            # A batch of one key takes NumPyro's compiled search for a valid initial point
            # (lax.map over a while_loop) instead of an op-by-op eager one: much faster to start.
            info = initialize_model(jax.random.PRNGKey(0)[None], model, model_args=model_args,
                                    model_kwargs=model_kwargs)
        init = jax.tree.map(lambda a: a[0], info.param_info.z)
        flat, unravel = ravel_pytree(init)
        names = [n for site, value in sorted(init.items()) for n in _coordinate_names(site, jnp.shape(value))]

        self.model = model
        self.model_args = model_args
        self.model_kwargs = model_kwargs
        self.site_shapes = {k: v for k, v in latent_shapes(structure).items() if k in init}
        self.unconstrained_shapes = {k: tuple(jnp.shape(v)) for k, v in sorted(init.items())}
        self.observed_sites = {name: site["value"] for name, site in info.model_trace.items()
                               if site["type"] == "sample" and site["is_observed"]}
        self.deterministic_sites = {name: s.shape for name, s in structure.items() if s.type == "deterministic"}
        self.init_point = flat
        self._unravel = unravel

        potential_fn = info.potential_fn

        def log_density(x: jax.Array) -> jax.Array:
            """``x: (dim,)`` -> scalar: the negative NumPyro potential energy."""
            return -potential_fn(unravel(x))

        # Made once: the fit loop's compilation cache is keyed on this function object. Jitted so
        # that eager calls (Target.probe, users) compile the model once rather than op by op.
        super().__init__(jax.jit(log_density), int(flat.shape[0]), names)
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
