"""What flowvi needs to know about a NumPyro model, and the one way it starts one up.

`model_structure` reads site names, kinds and shapes without computing
anything; `initialize` is NumPyro's ``initialize_model`` with a batch of one
key, which takes NumPyro's compiled search for a valid initial point (a
``lax.map`` over a ``while_loop``) instead of an op-by-op eager one: much
faster to start. The target, its data axis and the autoguide all start models
through it.
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
from numpyro import handlers
from numpyro.infer.initialization import init_to_sample, init_to_uniform
from numpyro.infer.util import initialize_model

_INIT_FAILURE = "Cannot find valid initial parameters"


def prototype_trace(model: Callable, model_args: tuple, model_kwargs: dict) -> dict:
    """One seeded, eager run of `model` (concrete values), hidden from any enclosing NumPyro handlers.

    Latent sites take NumPyro's ``init_to_sample`` values: a prior draw, or, for
    priors that cannot be sampled (improper flat priors, ``dist.ImproperUniform``),
    a uniform draw in (-2, 2) on the unconstrained scale mapped to the support.
    Eager runs compile every operation separately; `model_structure` is the
    cheap alternative when only names, kinds and shapes are needed.
    """
    # The seed handler inside the substitution, so the init strategy sees the site's key (as in NumPyro).
    seeded = handlers.substitute(handlers.seed(model, rng_seed=0), substitute_fn=init_to_sample)
    with handlers.block():
        return handlers.trace(seeded).get_trace(*model_args, **model_kwargs)


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
            seeded = handlers.substitute(handlers.seed(model, rng_seed=0), substitute_fn=init_strategy)
            trace = handlers.trace(seeded).get_trace(*model_args, **model_kwargs)
    except Exception:  # noqa: BLE001 - the diagnosis is best effort; NumPyro's own message still goes out
        return []
    bad = []
    for name, site in trace.items():
        if site["type"] == "sample":
            log_prob = site["fn"].log_prob(site["value"])
            if not np.all(np.isfinite(np.asarray(log_prob))):
                kind = "factor" if isinstance(site["fn"], dist.Unit) else "observed" if site["is_observed"] else ""
                bad.append(f"'{name}'" + (f" ({kind})" if kind else ""))
    return bad


def subsampled_plates(structure: dict[str, SiteInfo]) -> list[str]:
    return [f"'{name}' (size {s.plate_sizes[0]}, subsample_size {s.plate_sizes[1]})"
            for name, s in structure.items()
            if s.type == "plate" and s.plate_sizes[1] is not None and s.plate_sizes[1] != s.plate_sizes[0]]


def initialize(model: Callable, model_args: tuple, model_kwargs: dict, *, rng_key: jax.Array | None = None,
               init_strategy: Callable = init_to_uniform, dynamic_args: bool = False, **options: Any):
    """NumPyro's ``initialize_model`` with a batch of one key, its failure explained, and no batch axis left.

    Args:
        model: the NumPyro model.
        model_args: its positional arguments.
        model_kwargs: its keyword arguments.
        rng_key: a raw or typed PRNG key (default ``PRNGKey(0)``).
        init_strategy: NumPyro init strategy.
        dynamic_args: passed on (the potential then takes the model's arguments).
        **options: other ``initialize_model`` keyword arguments.

    Returns:
        ``(init_params, info)``: the initial unconstrained values (a site dict,
        no batch axis) and NumPyro's ``ModelInfo``.

    Raises:
        ValueError: the log density is non-finite at every initial point tried,
            with NumPyro's diagnosis and the offending sites.
    """
    key = jax.random.PRNGKey(0) if rng_key is None else rng_key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    with handlers.block(), numpyro_init_diagnosis(model, model_args, model_kwargs, init_strategy):
        info = initialize_model(key[None], model, init_strategy=init_strategy, dynamic_args=dynamic_args,
                                model_args=model_args, model_kwargs=model_kwargs, **options)
    return jax.tree.map(lambda a: a[0], info.param_info.z), info
