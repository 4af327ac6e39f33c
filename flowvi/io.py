"""Save and load fits: an npz archive of arrays plus JSON metadata. Never pickle."""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flowvi._version import __version__
from flowvi.flows import FAMILIES, Flow, make_flow
from flowvi.target import Target, as_target

FORMAT = "flowvi"
FORMAT_VERSION = 1


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def save(post: Any, path: str | os.PathLike) -> None:
    """Write `post` to `path`: flow family, hyperparameters, parameters, loss trace, stop reasons."""
    if post.flow.name not in FAMILIES:
        raise ValueError(f"cannot save a fit of a custom flow named {post.flow.name!r}; "
                         f"only the families {', '.join(FAMILIES)} can be rebuilt on load.")
    leaves = jax.tree.leaves(post.params)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "flowvi_version": __version__,
        "flow": {"name": post.flow.name, "dim": post.flow.dim,
                 "hyperparameters": {k: _jsonable(v) for k, v in post.flow.hyperparameters}},
        "num_leaves": len(leaves),
        "names": post.target.names if post.target is not None else None,
        "stop_reasons": post.stop_reasons, "fit_seconds": post.fit_seconds,
        "settings": {k: _jsonable(v) for k, v in post.settings.items()},
    }
    arrays = {f"param_{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    arrays.update(losses=np.asarray(post.losses), steps_run=np.asarray(post.steps_run),
                  skipped_steps=np.asarray(post.skipped_steps),
                  meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    if post.validation_losses is not None:
        arrays["validation_losses"] = np.asarray(post.validation_losses)
    with open(path, "wb") as f:  # a file object keeps numpy from appending ".npz"
        np.savez(f, **arrays)


def _read(path: str | os.PathLike) -> tuple[dict, dict]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"path {str(path)!r} does not exist.")
    not_ours = ValueError(f"path {str(path)!r} is not a flowvi file (expected an archive written by Posterior.save).")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise not_ours from err
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (KeyError, ValueError, UnicodeDecodeError) as err:
        raise not_ours from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise not_ours
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} was written by a newer flowvi (format version "
                         f"{meta['format_version']}); upgrade flowvi to read it.")
    return meta, arrays


def read(path: str | os.PathLike, target: Target | Any = None) -> dict[str, Any]:
    """Read a fit written by `Posterior.save`: the fields of a `flowvi.Posterior` (see `flowvi.load`).

    Args:
        path: the file.
        target: the `flowvi.Target` or log density the fit was made for (functions
            cannot be stored); None for fits of samples, or to use only the flow.

    Returns:
        The keyword arguments of a `Posterior` that gives the same draws for
        the same key as the saved one.

    Raises:
        ValueError: the file is not a flowvi file, or `target` has another dim.
    """
    meta, arrays = _read(path)
    spec = meta["flow"]
    flow: Flow = make_flow(spec["name"], spec["dim"], **spec["hyperparameters"])
    if target is not None:
        target = as_target(target, spec["dim"], meta.get("names"))
    template = jax.eval_shape(jax.vmap(flow.init), jax.random.split(jax.random.key(0), len(meta["stop_reasons"])))
    treedef = jax.tree.structure(template)
    leaves = [jnp.asarray(arrays[f"param_{i:05d}"]) for i in range(meta["num_leaves"])]
    for got, want in zip(leaves, jax.tree.leaves(template), strict=True):
        if got.shape != want.shape:
            written_by = meta.get("flowvi_version")
            cause = ("the file is damaged" if written_by == __version__ else
                     f"it was written by flowvi {written_by} and this is {__version__}: refit with this "
                     "version (a family's parameter layout can change between versions), or the file is damaged")
            raise ValueError(f"{str(path)!r} holds parameters of shape {got.shape} where flow "
                             f"{spec['name']!r} expects {want.shape}; {cause}.")
    return dict(
        flow=flow, params=jax.tree.unflatten(treedef, leaves), target=target, losses=arrays["losses"],
        stop_reasons=list(meta["stop_reasons"]), steps_run=arrays["steps_run"],
        skipped_steps=arrays["skipped_steps"], fit_seconds=float(meta["fit_seconds"]),
        settings=dict(meta["settings"]), validation_losses=arrays.get("validation_losses"))
