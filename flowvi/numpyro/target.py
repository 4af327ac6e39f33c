"""`NumPyroTarget`: a NumPyro model as a flat, unconstrained, named `flowvi.Target`.

The log density is NumPyro's own negative potential energy: every latent
site is mapped to R^k with ``biject_to(site.support)``, and the Jacobians of
those maps come from NumPyro, not from flowvi. The flat vector is the
``jax.flatten_util.ravel_pytree`` of NumPyro's dict of unconstrained values
(sites in sorted name order, each raveled in C order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions import biject_to
from numpyro.distributions.transforms import (
    AffineTransform,
    ComposeTransform,
    ExpTransform,
    IdentityTransform,
    IndependentTransform,
    SigmoidTransform,
    SoftplusTransform,
)

from flowvi.data_target import DataSpec, check_data_axis
from flowvi.numpyro._model import (
    check_no_discrete_latents,
    initialize,
    latent_shapes,
    model_structure,
    subsampled_plates,
)
from flowvi.target import Target


def _coordinate_names(name: str, shape: tuple) -> list[str]:
    if shape == ():
        return [name]
    return [f"{name}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape)]


_ELEMENTWISE = {IdentityTransform: "{}", ExpTransform: "log({})", SigmoidTransform: "logit({})",
                SoftplusTransform: "softplus_inv({})"}


def _number(value) -> str:
    return f"{float(value):g}"


def _affine_inverse(name: str, loc, scale) -> str:
    """How ``(name - loc) / scale`` reads, for scalar loc and scale."""
    loc, scale = float(loc), float(scale)
    if scale == -1:
        return f"{_number(loc)} - {name}" if loc != 0 else f"-{name}"
    shifted = name if loc == 0 else f"{name} - {_number(loc)}" if loc > 0 else f"{name} + {_number(-loc)}"
    if scale == 1:
        return shifted
    return f"{shifted if loc == 0 else f'({shifted})'} / {_number(scale)}"


def site_labels(site: str, support, shape: tuple) -> list[str]:
    """Labels of the unconstrained coordinates of one latent site, from NumPyro's ``biject_to(support)``.

    An elementwise transform names the map from the constrained value to R:
    ``"tau"`` (real), ``"log(tau)"`` (positive), ``"logit(p)"`` (unit interval),
    ``"log(x - 1)"`` (greater than 1), ``"logit((x - a) / w)"`` (an interval);
    others (simplex, Cholesky factors, ordered vectors...) are
    ``"unconstrained(w)[i]"``, the index into the unconstrained array.

    Args:
        site: the site name.
        support: the site distribution's ``support`` constraint.
        shape: the site's unconstrained shape (the flat coordinates it owns).
    """
    names = _coordinate_names(site, shape)
    suffixes = [n[len(site):] for n in names]
    generic = [f"unconstrained({site}){s}" for s in suffixes]
    try:
        transform = biject_to(support)
        while isinstance(transform, IndependentTransform):
            transform = transform.base_transform
        parts = list(transform.parts) if isinstance(transform, ComposeTransform) else [transform]
        first = type(parts[0])
        if first not in _ELEMENTWISE or len(parts) > 2:
            return generic
        if len(parts) == 1:
            return [_ELEMENTWISE[first].format(n) for n in names]
        affine = parts[1]
        if not isinstance(affine, AffineTransform) or first is IdentityTransform:
            return generic
        idx = list(np.ndindex(*shape)) if shape else [()]
        loc = np.broadcast_to(np.asarray(affine.loc, float), shape)
        scale = np.broadcast_to(np.asarray(affine.scale, float), shape)
        return [_ELEMENTWISE[first].format(_affine_inverse(n, loc[i], scale[i]))
                for n, i in zip(names, idx, strict=True)]
    except Exception:  # noqa: BLE001 - a label is cosmetic: bounds that are not concrete get the generic one
        return generic


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
        labels: the same coordinates as tables show them, saying what is
            unconstrained: ``"mu"``, ``"log(tau)"``, ``"logit(p)"``,
            ``"unconstrained(w)[0]"`` (see `site_labels`).
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
        subsampled = subsampled_plates(structure)
        if subsampled:
            raise ValueError(
                f"flowvi.Target.from_numpyro needs the full likelihood, but plate(s) {', '.join(subsampled)} "
                "are subsampled. Pass arguments that switch subsampling off, or fit the subsampled model "
                "with flowvi.numpyro.AutoFlow in numpyro's SVI (doubly-stochastic VI).")
        if not latent_shapes(structure):
            raise ValueError("the NumPyro model has no latent sample sites: there is nothing to approximate.")

        init, info = initialize(model, model_args, model_kwargs)
        flat, unravel = ravel_pytree(init)
        names = [n for site, value in sorted(init.items()) for n in _coordinate_names(site, jnp.shape(value))]

        self.model = model
        self.model_args = model_args
        self.model_kwargs = model_kwargs
        self.site_shapes: dict[str, tuple] = {k: v for k, v in latent_shapes(structure).items() if k in init}
        self.unconstrained_shapes = {k: tuple(jnp.shape(v)) for k, v in sorted(init.items())}
        self.observed_sites = {name: site["value"] for name, site in info.model_trace.items()
                               if site["type"] == "sample" and site["is_observed"]}
        self.deterministic_sites = {name: s.shape for name, s in structure.items() if s.type == "deterministic"}
        self.init_point = flat
        self._unravel = unravel
        self._labels = [label for site, value in sorted(init.items())
                        for label in site_labels(site, info.model_trace[site]["fn"].support, jnp.shape(value))]

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

    @property
    def labels(self) -> list[str]:
        """One label per flat coordinate saying which transform of the site it is: ``"log(tau)"``, ``"mu"``."""
        return list(self._labels)

    def data_spec(self, batch_size: int | None = None, num_shards: int = 1) -> DataSpec | None:
        """The model's data plates as a data axis (see `flowvi.numpyro.data`); None when it has none."""
        from flowvi.numpyro.data import numpyro_data_spec
        return check_data_axis(numpyro_data_spec(self, batch_size, num_shards), self, batch_size)

    def observed_data(self) -> dict[str, np.ndarray]:
        """The observed sites' values by name."""
        return {k: np.asarray(v) for k, v in self.observed_sites.items()}

    def pointwise_log_likelihood(self, latents: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """NumPyro's per-observation log likelihood of each observed site, ``(chain, draw, ...)``."""
        from numpyro.infer.util import log_likelihood

        latents = {k: jnp.asarray(v) for k, v in latents.items() if k in self.site_shapes}
        ll = log_likelihood(self.model, latents, *self.model_args, batch_ndims=2, **self.model_kwargs)
        return {k: v for k, v in ll.items() if k in self.observed_sites}

    def predict(self, key: jax.Array, latents: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Draws of the observed sites given each latent draw, ``(chain, draw, ...)`` (NumPyro's Predictive)."""
        from numpyro.handlers import uncondition
        from numpyro.infer import Predictive

        latents = {k: jnp.asarray(v) for k, v in latents.items() if k in self.site_shapes}
        predictive = Predictive(uncondition(self.model), posterior_samples=latents, batch_ndims=2,
                                return_sites=list(self.observed_sites))
        return predictive(key, *self.model_args, **self.model_kwargs)

    def plate_dims(self) -> dict[str, list[str]]:
        """Dim names from the model's plates, as ArviZ's NumPyro converter infers them."""
        import arviz

        if int(arviz.__version__.split(".")[0]) >= 1:
            from arviz_base.io_numpyro import infer_dims
        else:
            from arviz.data.io_numpyro import infer_dims
        return infer_dims(self.model, self.model_args, self.model_kwargs)

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
        out = self._constrain(x if x.ndim == 2 else x[None])  # (jnp.atleast_2d would compile a program)
        return jax.tree.map(lambda a: a[0], out) if x.ndim == 1 else out


def from_numpyro(model: Callable, *args: Any, **kwargs: Any) -> NumPyroTarget:
    """`NumPyroTarget` for ``model(*args, **kwargs)``; see `flowvi.Target.from_numpyro`."""
    return NumPyroTarget(model, args, kwargs)


__all__ = ["NumPyroTarget", "from_numpyro", "site_labels"]
