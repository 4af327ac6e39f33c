"""The data axis of a NumPyro model: its data plates, as arguments, sharded and subsampled.

`numpyro_data_spec` rebuilds a `flowvi.numpyro.NumPyroTarget`'s log
density with NumPyro's ``initialize_model(..., dynamic_args=True)``, so the
model's arrays are arguments of the compiled fit (and can be split over
devices) rather than constants. Subsampling is NumPyro's own: the data plates
get minibatch indices (`flowvi.data_target.subsample_indices`), and NumPyro
scales their log-likelihood terms by ``N / B``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.primitives import Messenger

from flowvi.data_target import DataSpec, check_batch_size, subsample_indices
from flowvi.numpyro._model import initialize, prototype_trace

# Keyword through which the minibatch indices reach the wrapped model.
_INDICES_KW = "_flowvi_subsample_indices"

# Built log densities by target and batch size: the same target and batch size
# give the same function object, so refits reuse compilations.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def data_plates(trace: dict) -> dict[str, int]:
    """Plates of a NumPyro trace that hold observed sites and no latent ones: name -> size."""
    observed, latent = set(), set()
    for site in trace.values():
        if site["type"] == "sample":
            names = {frame.name for frame in site["cond_indep_stack"]}
            (observed if site["is_observed"] else latent).update(names)
    return {name: int(site["args"][0]) for name, site in trace.items()
            if site["type"] == "plate" and name in observed and name not in latent}


def numpyro_data_spec(target: Any, batch_size: int | None, num_shards: int) -> DataSpec | None:
    """`DataSpec` of a NumPyroTarget; None when the model has no data plate.

    The data are the model's array arguments (ndim >= 1, in
    ``jax.tree.flatten((model_args, model_kwargs))`` order); those whose leading
    axis has a data plate's size carry the data axis.

    Raises:
        ValueError: data plates of different sizes with a batch size; a batch
            size above N; a data axis that does not divide over ``num_shards``;
            observations not subsampled with their plate.
    """
    args, kwargs = target.model_args, target.model_kwargs
    plates = data_plates(prototype_trace(target.model, args, kwargs))
    if not plates:
        return None
    sizes = sorted(set(plates.values()))
    if batch_size is not None and len(sizes) > 1:
        raise ValueError(f"subsample needs the model's data plates to share one size; they are {plates}.")
    num_data = max(sizes)
    batch_size = check_batch_size(batch_size, num_data)

    leaves, treedef = jax.tree.flatten((args, kwargs))
    dynamic = tuple(isinstance(leaf, jax.Array | np.ndarray) and np.ndim(leaf) >= 1 for leaf in leaves)
    data = tuple(leaf for leaf, d in zip(leaves, dynamic, strict=True) if d)
    data_axis = tuple(np.shape(leaf)[0] in sizes for leaf in data)
    uneven = sorted({np.shape(a)[0] for a, ax in zip(data, data_axis, strict=True)
                     if ax and np.shape(a)[0] % num_shards})
    if uneven:
        raise ValueError(f"the NumPyro model's data axis (length {uneven[0]}) does not divide over the "
                         f"mesh's {num_shards} devices; use a mesh whose size divides it.")

    cache = _CACHE.setdefault(target, {})
    if batch_size not in cache:
        cache[batch_size] = _log_density(target, plates, num_data, batch_size, leaves, dynamic, treedef)
    return DataSpec(cache[batch_size], data, data_axis, num_data)


class _SubsamplePlates(Messenger):
    """The named plates take ``indices`` as their subsample (NumPyro then scales by N / B)."""

    def __init__(self, plates: frozenset, indices: jax.Array):
        self.plates = plates
        self.indices = indices
        super().__init__()

    def process_message(self, msg):
        if msg["type"] == "plate" and msg["name"] in self.plates:
            msg["args"] = (msg["args"][0], self.indices.shape[0])
            msg["value"] = self.indices


def _log_density(target: Any, plates: dict[str, int], num_data: int, batch_size: int | None,
                 leaves: list, dynamic: tuple, treedef: Any) -> Callable:
    model = target.model
    names = frozenset(plates)

    def subsampled_model(*args, **kwargs):
        indices = kwargs.pop(_INDICES_KW)
        with _SubsamplePlates(names, indices):
            return model(*args, **kwargs)

    args, kwargs = target.model_args, dict(target.model_kwargs)
    model_used = model
    if batch_size is not None:
        model_used = subsampled_model
        kwargs[_INDICES_KW] = jnp.arange(batch_size)
        try:
            trace = prototype_trace(subsampled_model, args, kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised with what flowvi changed
            raise ValueError(f"subsample={batch_size}: the model failed when its data plate(s) "
                             f"{sorted(names)} were subsampled: {type(err).__name__}: {err}") from err
        _check_subsampled_observations(trace, plates, batch_size)
    _, info = initialize(model_used, args, kwargs, dynamic_args=True)
    potential_fn = info.potential_fn
    static = [None if d else leaf for leaf, d in zip(leaves, dynamic, strict=True)]

    def log_density(x: jax.Array, data: tuple, key: jax.Array | None) -> jax.Array:
        """``x: (dim,)`` -> scalar: minus NumPyro's potential energy with the data passed in."""
        it = iter(data)
        now = [next(it) if d else s for s, d in zip(static, dynamic, strict=True)]
        model_args, model_kwargs = jax.tree.unflatten(treedef, now)
        if batch_size is not None:
            model_kwargs = {**model_kwargs, _INDICES_KW: subsample_indices(key, num_data, batch_size)}
        return -potential_fn(*model_args, **model_kwargs)(target.unconstrained_dict(x))

    return log_density


def _check_subsampled_observations(trace: dict, plates: dict[str, int], batch_size: int) -> None:
    """Raise if an observed site in a data plate keeps all N rows when its plate is subsampled."""
    for name, site in trace.items():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        event = len(site["fn"].event_shape)
        shape = jnp.shape(site["value"])
        for frame in site["cond_indep_stack"]:
            axis = frame.dim - event
            if frame.name in plates and len(shape) >= -axis and shape[axis] not in (1, batch_size):
                raise ValueError(
                    f"subsample={batch_size}: observed site '{name}' keeps {shape[axis]} rows along plate "
                    f"'{frame.name}' when the plate is subsampled. Pass the observations through "
                    f"numpyro.subsample(y, event_dim={event}) inside the plate (and covariates likewise), "
                    "or index them with the plate's indices: `with numpyro.plate(...) as idx: y[idx]`.")
