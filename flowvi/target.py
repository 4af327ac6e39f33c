"""`Target`: what to approximate — an unnormalised log density on R^dim, with names."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flowvi.data_target import DataSpec, bind_data, check_data_axis, sum_likelihood_density, sum_likelihood_spec
from flowvi.validation import check_names, check_positive_int

_PROBE_POINTS = 16


class Target:
    """An unnormalised log density on R^dim and how to name its coordinates.

    Or, for a likelihood that is a sum over observations, the keyword form
    ``Target(log_prior=..., log_likelihood=..., data=..., dim=...)``: then
    ``log_density(x) = log_prior(x) + sum_i log_likelihood(x, data_i)``, and
    `flowvi.fit` can split ``data`` over devices (``mesh=``) and subsample it
    (``subsample=``); see `flowvi.data_target`.

    Args:
        log_density: ``x: (dim,) -> scalar``, JAX-traceable, unnormalised.
        dim: number of coordinates (positive int).
        names: optional coordinate names, ``len(names) == dim``; default
            ``["x[0]", "x[1]", ...]``.
        log_prior: ``x: (dim,) -> scalar`` (keyword form).
        log_likelihood: ``(x: (dim,), row) -> scalar``, the log-likelihood of
            one observation; ``row`` is ``data`` indexed at one row (keyword form).
        data: array or pytree of arrays, all with leading axis N, the data
            axis (keyword form). Host (numpy) arrays stay on the host until a fit.

    Attributes:
        data, num_data, log_prior, log_likelihood: the keyword form's pieces;
            ``data`` is None for a plain log density.

    Examples:
        >>> import jax.numpy as jnp, flowvi
        >>> t = flowvi.Target(lambda x: -0.5 * jnp.sum(x ** 2), dim=2)
        >>> t.names
        ['x[0]', 'x[1]']
        >>> y = jnp.array([0.5, 1.5, 1.0])
        >>> t = flowvi.Target(log_prior=lambda x: -0.5 * x[0] ** 2,
        ...                   log_likelihood=lambda x, yi: -0.5 * (yi - x[0]) ** 2, data=y, dim=1)
        >>> t.num_data, float(t.log_density(jnp.array([1.0])))
        (3, -0.75)
    """

    def __init__(self, log_density: Callable[[jax.Array], jax.Array] | None = None, dim: int | None = None,
                 names: Sequence[str] | None = None, *, log_prior: Callable | None = None,
                 log_likelihood: Callable | None = None, data: Any = None):
        self.log_prior, self.log_likelihood, self.data, self.num_data = log_prior, log_likelihood, None, None
        keyword_form = {"log_prior": log_prior, "log_likelihood": log_likelihood, "data": data}
        if any(v is not None for v in keyword_form.values()):
            if log_density is not None:
                raise ValueError("pass either log_density or log_prior=, log_likelihood= and data=, not both.")
            missing = [k for k, v in keyword_form.items() if v is None]
            if missing:
                raise ValueError(f"the keyword form Target(log_prior=, log_likelihood=, data=, dim=) is "
                                 f"missing {', '.join(missing)}.")
            if dim is None:
                raise ValueError("dim is required: the number of coordinates of x.")
            log_density, self.data, self.num_data = sum_likelihood_density(log_prior, log_likelihood, data, dim)
        if not callable(log_density):
            raise TypeError(f"log_density must be a callable x: (dim,) -> scalar, got {type(log_density).__name__}.")
        if dim is None:
            raise ValueError("dim is required with a plain log_density: the number of coordinates of x.")
        self.log_density = log_density
        self.dim = check_positive_int("dim", dim)
        if names is None:
            names = [f"x[{i}]" for i in range(self.dim)]
        self.names = check_names("names", names, self.dim)

    @classmethod
    def from_numpyro(cls, model: Callable, *args: Any, **kwargs: Any) -> Target:
        """The posterior of a NumPyro model on its flat, unconstrained latent vector.

        Args:
            model: a NumPyro model.
            *args: the model's positional arguments (data), e.g. ``sigma``.
            **kwargs: the model's keyword arguments, e.g. ``y=y``.

        Returns:
            A `flowvi.numpyro.NumPyroTarget`: log density from NumPyro's
            potential energy (its own transforms and Jacobians), coordinate
            names, and ``constrain`` back to named, constrained sites plus
            deterministic sites.

        Examples:
            >>> import numpyro, numpyro.distributions as dist, flowvi
            >>> def model(n):
            ...     with numpyro.plate("i", n):
            ...         numpyro.sample("p", dist.Beta(2.0, 2.0))
            >>> flowvi.Target.from_numpyro(model, 2).names
            ['p[0]', 'p[1]']
        """
        from flowvi.numpyro.target import from_numpyro  # the NumPyro adapter, loaded on first use
        return from_numpyro(model, *args, **kwargs)

    def __repr__(self) -> str:
        return f"Target(dim={self.dim}, names={self.names if self.dim <= 6 else self.names[:6] + ['...']})"

    # The interface below is what the fit, the diagnostics and the export ask of a target;
    # richer targets (NumPyro models, `flowvi.numpyro.NumPyroTarget`) override it.

    site_shapes: dict[str, tuple] | None = None
    """Named latent sites and their constrained shapes; None for a flat target (one variable ``x``)."""

    @property
    def labels(self) -> list[str]:
        """How tables label the flat coordinates: `names` here; a NumPyro target says which are unconstrained."""
        return self.names

    def constrain(self, x: jax.Array) -> dict[str, jax.Array]:
        """Map flat draws ``x: (n, dim)`` to named arrays; here ``{"x": x}``."""
        return {"x": x}

    def data_spec(self, batch_size: int | None = None, num_shards: int = 1) -> DataSpec | None:
        """The target's data axis as `flowvi.fit` uses it (split over devices, subsampled), or None.

        Args:
            batch_size: minibatch size B for subsampling; None (or N) for the full data.
            num_shards: devices the data axis will be split over (padded to a multiple).

        Raises:
            ValueError: ``batch_size`` on a target without a data axis, or larger than N.
        """
        if self.data is None:
            return check_data_axis(None, self, batch_size)
        return sum_likelihood_spec(self, batch_size, num_shards)

    def observed_data(self) -> dict[str, np.ndarray]:
        """Observed sites by name (for ArviZ's ``observed_data``); none for a plain log density."""
        return {}

    def pointwise_log_likelihood(self, latents: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Per-observation log likelihood at ``latents`` (``(chain, draw, ...)`` arrays); none here."""
        return {}

    def predict(self, key: jax.Array, latents: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Draws of the observed sites given each latent draw (``(chain, draw, ...)``).

        Raises:
            ValueError: a plain log density has no observed sites to predict.
        """
        raise ValueError("posterior_predictive=True needs a NumPyro model target (flowvi.Target.from_numpyro): "
                         "a plain log density has no observed sites to predict.")

    def plate_dims(self) -> dict[str, list[str]]:
        """ArviZ dim names of each named site, from the model's plates; none here."""
        return {}

    def probe(self, data=None) -> ProbeReport:
        """Check the log density once, in one compiled call, at points the untrained flow samples.

        A log density must be a number or ``-inf`` (zero density) at every
        point, with a finite gradient wherever it is finite.

        Args:
            data: None; or arrays that ``self.log_density`` takes as its second
                argument, ``(x, data) -> scalar`` (`flowvi.data_target.FullDataDensity`),
                passed to the compiled check as inputs rather than constants.

        Returns:
            A `ProbeReport`: how many probe points have zero density (``-inf``).

        Raises:
            ValueError: it fails to trace on a ``(dim,)`` input, returns a
                non-scalar or a scalar that is not real floating point (int,
                bool, complex), is non-finite (value or gradient) at every probe
                point, or is NaN or ``+inf``, or has a non-finite gradient
                where it is finite, at some probe point (the message shows one).
        """
        spec = jax.ShapeDtypeStruct((self.dim,), jnp.result_type(float))
        try:
            out = jax.eval_shape(bind_data(self.log_density, data), spec)
        except Exception as err:  # noqa: BLE001 - re-raised with the argument named
            raise ValueError(f"log_density failed on an input of shape ({self.dim},): "
                             f"{type(err).__name__}: {err}") from err
        if not hasattr(out, "shape") or out.shape != ():
            shape = getattr(out, "shape", type(out).__name__)
            raise ValueError(f"log_density must return a scalar for an input of shape ({self.dim},); "
                             f"it returned shape {shape}.")
        if not jnp.issubdtype(out.dtype, jnp.floating):
            raise ValueError(f"log_density must return a real floating-point scalar (a log density), but it "
                             f"returned dtype {out.dtype}" + (" (complex: take the real part, or the log of "
                             "the absolute value, as the model means)" if jnp.issubdtype(out.dtype, jnp.complexfloating)
                             else " (cast it with jnp.asarray(..., float) if it is meant as a number)") + ".")
        values, grads, points = map(np.asarray, _probe_values(self.log_density, self.dim, data))
        ok = np.isfinite(values) & np.all(np.isfinite(grads), axis=-1)
        if not ok.any():
            raise ValueError(
                f"log_density (or its gradient) is non-finite at all {_PROBE_POINTS} points drawn from the "
                "untrained flow (a standard normal on R^dim). flowvi needs an unconstrained target: "
                "transform constrained coordinates to R first (NumPyro models do this with "
                "flowvi.Target.from_numpyro). Values seen: "
                f"{values[:4].tolist()}.")
        problems = [
            (np.isnan(values), "NaN", "a log density is a number, or -inf where the density is zero (write "
             "-inf there: flowvi gives such draws zero weight)"),
            (values == np.inf, "+inf", "an infinite density has no ELBO to maximise"),
            (np.isfinite(values) & ~np.all(np.isfinite(grads), axis=-1), "finite with a non-finite gradient",
             "often a jnp.where whose unused branch has a NaN derivative (e.g. sqrt or log of a negative "
             "number): make that branch's input safe as well"),
        ]
        for where, what, hint in problems:
            if where.any():
                i = int(np.flatnonzero(where)[0])
                raise ValueError(
                    f"log_density is {what} at {int(where.sum())} of {_PROBE_POINTS} points drawn from the "
                    f"untrained flow (a standard normal), e.g. at x = {format_point(points[i])}: {hint}.")
        return ProbeReport(int(np.sum(values == -np.inf)), _PROBE_POINTS)


def _probe_values(log_density: Callable, dim: int, data=None):
    """``(values, grads, points)`` of the log density at the `_PROBE_POINTS` standard normal probe points."""
    try:
        hash(log_density)
    except TypeError:  # an unhashable callable cannot be a static argument: compile it on its own
        return jax.jit(lambda data: _probe_body(log_density, dim, data))(data)
    try:
        return _probe_program(log_density, dim, data)
    except RuntimeError as err:
        if "non-addressable" not in str(err):
            raise
        # A density closing over data split across processes (flowvi.fit with a multi-process mesh)
        # cannot be one program: evaluate it op by op, as its own compiled pieces.
        return _probe_body(log_density, dim, data)


def _probe_body(log_density: Callable, dim: int, data=None):
    # The points are jax.random.normal(key(0), (16, dim)), drawn flat: see flowvi.objectives.base_draws.
    log_density = bind_data(log_density, data)
    points = jax.random.normal(jax.random.key(0), (_PROBE_POINTS * dim,)).reshape(_PROBE_POINTS, dim)
    values, grads = jax.vmap(jax.value_and_grad(log_density))(points)
    return values, grads, points


# One program for the points, the values and the gradients (drawing and differentiating eagerly
# compiled one program for each, and the draw alone took seconds to compile on CPU).
_probe_program = functools.partial(jax.jit, static_argnums=(0, 1))(_probe_body)


class ProbeReport(NamedTuple):
    """What `Target.probe` found.

    Attributes:
        zero_density: probe points where the log density is ``-inf``.
        points: probe points.
    """

    zero_density: int
    points: int


def format_point(x, max_coords: int = 6) -> str:
    """A point ``x: (dim,)`` for a message: a few significant digits, long vectors shortened."""
    x = np.asarray(x, dtype=float).ravel()
    shown = ", ".join(f"{v:.3g}" for v in x[:max_coords])
    return f"[{shown}{', ...' if x.size > max_coords else ''}]"


def as_target(target_or_log_density: Any, dim: int | None, names: Sequence[str] | None = None) -> Target:
    """Accept a `Target` or a plain log-density function plus `dim`."""
    if isinstance(target_or_log_density, Target):
        if dim is not None and dim != target_or_log_density.dim:
            raise ValueError(f"dim={dim} disagrees with the Target's dim={target_or_log_density.dim}.")
        return target_or_log_density
    return Target(target_or_log_density, dim, names)
