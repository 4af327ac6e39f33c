"""Save and load fits: an npz archive of arrays plus JSON metadata. Never pickle.

Every file is written to a temporary file in the same folder and then renamed
onto its name (`atomic_write`), so a write that fails halfway (a full disk, a
file-size limit, Ctrl-C) leaves the previous file as it was.

A fit of a target stores a fingerprint of it: the dim, the coordinate names
and the target's log density at a few points drawn from the fitted flow.
`read` compares the target it is given with it and warns when they differ.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flowvi._version import __version__
from flowvi.flows import FAMILIES, Flow, make_flow
from flowvi.target import Target, as_target

FORMAT = "flowvi"
FORMAT_VERSION = 2
"""The newest format this flowvi reads. Version 2 adds the weights of a mixture of runs
(`flowvi.Posterior.mixture`) and is written only for mixtures, so every other fit stays a
version-1 file that earlier flowvi versions read; they refuse a mixture rather than load it
as the equal-weight runs."""
_PLAIN_VERSION = 1
FINGERPRINT_POINTS = 4
"""Points at which a saved fit records its target's log density."""
_FINGERPRINT_KEY = 0
_FINGERPRINT_RTOL = 1e-4
"""Log densities agree when they differ by at most ``1e-3 + 1e-4 * max |log p|``, up to a constant:
float32 evaluation on another machine differs by far less; another target by far more."""


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Write `path` by calling ``write(temporary_name)``, then renaming the temporary file onto `path`.

    The temporary file lies in the same folder (so the rename is atomic) and
    is removed when `write` fails; `path` is then untouched. A new file gets
    the usual permissions (``0o666`` less the umask), a replaced one keeps its own.

    Args:
        path: the file to write.
        write: writes a complete file at the name it is given.

    Raises:
        IsADirectoryError: `path` is a folder.
        OSError: the folder is not writable, or `write` failed (re-raised).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a folder, not a file; remove it or write elsewhere.")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _mode_for(path: str) -> int:
    if os.path.exists(path):
        return stat.S_IMODE(os.stat(path).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def save(post: Any, path: str | os.PathLike) -> None:
    """Write `post` to `path`: flow family, hyperparameters, parameters, loss trace, stop reasons.

    A mixture (`flowvi.Posterior.mixture`) also stores its weights (format version 2);
    a file without them loads as independent runs with equal weights.

    The file is replaced atomically (see `atomic_write`). With a target it also
    holds the target's fingerprint (see the module docstring).

    Raises:
        ValueError: a custom flow, or non-finite parameters (a diverged fit; such a file could not be loaded).
        OSError: the file could not be written; a previous file at `path` is then unchanged.
    """
    if post.flow.name not in FAMILIES:
        raise ValueError(f"cannot save a fit of a custom flow named {post.flow.name!r}; "
                         f"only the families {', '.join(FAMILIES)} can be rebuilt on load.")
    if "given_context" in post.flow.options:
        raise ValueError("cannot save a conditional fit held at one context (post.given(c)); save the "
                         "conditional fit itself and call given(c) after loading it.")
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(post.params)]
    bad = sum(int(leaf.size - np.count_nonzero(np.isfinite(leaf))) for leaf in leaves)
    if bad:
        raise ValueError(f"cannot save this fit: {bad} of its {sum(leaf.size for leaf in leaves)} parameter "
                         f"values are NaN or infinite (the fit diverged; see post.stop_reasons: "
                         f"{post.stop_reason}).")
    weights = getattr(post, "mixture_weights", None)
    meta = {
        "format": FORMAT, "format_version": _PLAIN_VERSION if weights is None else FORMAT_VERSION,
        "flowvi_version": __version__,
        "flow": {"name": post.flow.name, "dim": post.flow.dim,
                 "hyperparameters": {k: _jsonable(v) for k, v in post.flow.hyperparameters}},
        "num_leaves": len(leaves),
        "names": post.target.names if post.target is not None else None,
        "stop_reasons": post.stop_reasons, "fit_seconds": post.fit_seconds,
        "settings": {k: _jsonable(v) for k, v in post.settings.items()},
    }
    arrays = {f"param_{i:05d}": leaf for i, leaf in enumerate(leaves)}
    arrays.update(losses=np.asarray(post.losses), steps_run=np.asarray(post.steps_run),
                  skipped_steps=np.asarray(post.skipped_steps))
    if post.validation_losses is not None:
        arrays["validation_losses"] = np.asarray(post.validation_losses)
    if weights is not None:
        arrays["mixture_weights"] = np.asarray(weights, dtype=np.float64)
    if post.target is not None and not post.flow.context_dim:  # a conditional target needs a context
        fingerprint = _fingerprint(post)
        if fingerprint is not None:
            arrays["fingerprint_x"], arrays["fingerprint_log_p"] = fingerprint
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

    def write(name: str) -> None:
        with open(name, "wb") as f:  # a file object keeps numpy from appending ".npz"
            np.savez(f, **arrays)

    atomic_write(path, write)


def _fingerprint(post: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``x: (FINGERPRINT_POINTS, dim)`` drawn from the fit (key 0) and the target's ``log_p: (FINGERPRINT_POINTS,)``."""
    from flowvi.diagnostics import _log_density_batch

    per_run = -(-FINGERPRINT_POINTS // post.num_runs)
    x = np.asarray(post.sample_runs(jax.random.key(_FINGERPRINT_KEY), per_run)[0]).reshape(-1, post.dim)
    x = np.where(np.isfinite(x), x, 0.0)[:FINGERPRINT_POINTS]
    try:
        log_p = np.asarray(_log_density_batch(post.target.log_density, jnp.asarray(x)))
    except Exception:  # noqa: BLE001 - a target that fails here must not stop the fit from being saved
        return None
    return x, log_p


def _same_log_density(saved: np.ndarray, got: np.ndarray) -> bool:
    """Equal up to an additive constant (an unnormalised density), within float32 rounding."""
    saved, got = np.asarray(saved, np.float64), np.asarray(got, np.float64)
    finite = np.isfinite(saved)
    if not np.array_equal(finite, np.isfinite(got)) or not np.array_equal(saved[~finite], got[~finite],
                                                                          equal_nan=True):
        return False
    if finite.sum() < 2:
        return True
    s, g = saved[finite], got[finite]
    tol = 1e-3 + _FINGERPRINT_RTOL * max(np.abs(s).max(), np.abs(g).max())
    return bool(np.all(np.abs((g - g.mean()) - (s - s.mean())) <= tol))


def _check_target(path: str, meta: dict, arrays: dict, target: Target) -> None:
    """Warn when `target` is not the one the fit was saved with (names, log density at the stored points)."""
    differences = []
    names = meta.get("names")
    if isinstance(names, list) and list(target.names) != names:
        differences.append(f"its names are {_short(target.names)} where the fit's were {_short(names)}")
    x, saved = arrays.get("fingerprint_x"), arrays.get("fingerprint_log_p")
    if x is not None and saved is not None and x.ndim == 2 and x.shape[1] == target.dim:
        from flowvi.diagnostics import _log_density_batch
        try:
            got = np.asarray(_log_density_batch(target.log_density, jnp.asarray(x)))
        except Exception as err:  # noqa: BLE001 - reported, not raised: loading only needs the flow
            got = None
            differences.append(f"its log density fails at the points stored with the fit "
                               f"({type(err).__name__}: {err})")
        if got is None:
            pass
        elif got.shape != saved.shape or not _same_log_density(saved, got):
            differences.append(f"its log density at {len(x)} points stored with the fit is "
                               f"{_short(got)} where the fit's target gave {_short(saved)} (beyond a constant)")
    if differences:
        warnings.warn(f"flowvi.load({path!r}): the target given is not the one this fit was made for: "
                      f"{'; '.join(differences)}. Draws are the fit's; its diagnostics and export use the "
                      "target given. Pass the target the fit was made for, or refit.", UserWarning, stacklevel=4)


def _short(values) -> str:
    values = list(np.asarray(values).tolist()) if not isinstance(values, list) else values
    shown = ", ".join(f"{v:.4g}" if isinstance(v, float) else repr(v) for v in values[:6])
    return f"[{shown}{', ...' if len(values) > 6 else ''}]"


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
    if not isinstance(meta.get("format_version", 0), int):
        raise _damaged(path, "its format_version is not an integer")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} was written by a newer flowvi (format version "
                         f"{meta['format_version']}); upgrade flowvi to read it.")
    return meta, arrays


def _damaged(path, what: str) -> ValueError:
    return ValueError(f"{str(path)!r} is damaged: {what}. It cannot be loaded; refit, or save the fit again.")


def _field(path, mapping: dict, key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    """``mapping[key]``, or a ValueError naming the missing or mistyped field."""
    if not isinstance(mapping, dict) or key not in mapping:
        raise _damaged(path, f"the field {where}{key!r} is missing")
    value = mapping[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _damaged(path, f"the field {where}{key!r} holds {type(value).__name__}")
    return value


def _array(path, arrays: dict, key: str, kinds: str, shape: tuple | None = None) -> np.ndarray:
    """``arrays[key]`` of a dtype kind in `kinds` (``"iu"``, ``"f"``) and, when given, `shape`."""
    if key not in arrays:
        raise _damaged(path, f"the array {key!r} is missing")
    value = arrays[key]
    if value.dtype.kind not in kinds or (shape is not None and value.shape != shape):
        raise _damaged(path, f"the array {key!r} has dtype {value.dtype} and shape {value.shape}")
    return value


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
        ValueError: the file is not a flowvi file, is damaged (a missing field,
            parameters of the wrong shape or dtype, or NaN or infinite ones),
            or `target` has another dim.

    Warns:
        UserWarning: `target` is not the one the fit was saved with (other
            names, or another log density at the points stored with the fit).
    """
    meta, arrays = _read(path)
    spec = _field(path, meta, "flow", dict)
    name = _field(path, spec, "name", str, "flow.")
    dim = _field(path, spec, "dim", int, "flow.")
    hyper = _field(path, spec, "hyperparameters", dict, "flow.")
    if name not in FAMILIES or dim < 1:
        raise _damaged(path, f"it names the flow {name!r} with dim={dim}")
    _check_meaning_unchanged(path, meta, name, hyper)
    try:
        flow: Flow = make_flow(name, dim, **hyper)
    except (TypeError, ValueError) as err:
        raise _damaged(path, f"its flow settings do not make a {name!r} flow ({err})") from err
    stop_reasons = _field(path, meta, "stop_reasons", list)
    num_leaves = _field(path, meta, "num_leaves", int)
    fit_seconds = _field(path, meta, "fit_seconds", (int, float))
    settings = _field(path, meta, "settings", dict)
    if not stop_reasons or not all(isinstance(r, str) for r in stop_reasons):
        raise _damaged(path, "its stop_reasons are not a list of words, one per run")
    runs = len(stop_reasons)
    if target is not None:
        target = as_target(target, dim, meta.get("names"))
    template = jax.eval_shape(jax.vmap(flow.init), jax.random.split(jax.random.key(0), runs))
    treedef = jax.tree.structure(template)
    wanted = jax.tree.leaves(template)
    if num_leaves != len(wanted):
        raise ValueError(f"{str(path)!r} holds {num_leaves} parameter arrays where flow {name!r} has "
                         f"{len(wanted)}; {_layout_cause(meta)}.")
    leaves = []
    for i, want in enumerate(wanted):
        got = _array(path, arrays, f"param_{i:05d}", "biufc")
        if got.shape != want.shape:
            raise ValueError(f"{str(path)!r} holds parameters of shape {got.shape} where flow "
                             f"{name!r} expects {want.shape}; {_layout_cause(meta)}.")
        if got.dtype.kind != "f":
            raise _damaged(path, f"its parameters (array param_{i:05d}) have dtype {got.dtype} where flow "
                                 f"{name!r} has floating-point ones ({want.dtype})")
        bad = got.size - np.count_nonzero(np.isfinite(got))
        if bad:
            raise _damaged(path, f"{bad} of its parameter values (array param_{i:05d}) are NaN or infinite, "
                                 "which Posterior.save never writes")
        leaves.append(jnp.asarray(got, dtype=want.dtype))
    steps_run = _array(path, arrays, "steps_run", "iu", (runs,))
    skipped = _array(path, arrays, "skipped_steps", "iu", (runs,))
    losses = _array(path, arrays, "losses", "f")
    validation = arrays.get("validation_losses")
    weights = None
    if "mixture_weights" in arrays:
        weights = _array(path, arrays, "mixture_weights", "f", (runs,)).astype(np.float64)
        if not (np.all(np.isfinite(weights)) and np.all(weights >= 0) and abs(weights.sum() - 1.0) < 1e-6):
            raise _damaged(path, f"its mixture weights {_short(weights)} are not non-negative numbers summing to 1")
    if target is not None:
        _check_target(str(path), meta, arrays, target)
    return dict(
        flow=flow, params=jax.tree.unflatten(treedef, leaves), target=target, losses=losses,
        stop_reasons=list(stop_reasons), steps_run=steps_run, skipped_steps=skipped,
        fit_seconds=float(fit_seconds), settings=dict(settings), validation_losses=validation,
        mixture_weights=weights)


# Parameters whose meaning changed while their shapes did not: (family, hyperparameter set True) -> the first
# version with the new meaning. 0.3.0 scales the off-diagonal of the LU linear layers by 1/sqrt(dim).
_MEANING_CHANGED = {("affine_coupling", "linear"): (0, 3, 0), ("spline_coupling", "linear"): (0, 3, 0)}


def _version_tuple(text: Any) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(text).split(".")[:3])
    except ValueError:
        return (0,)


def _check_meaning_unchanged(path, meta: dict, name: str, hyper: dict) -> None:
    """Refuse a file whose parameters would load with the right shapes but another meaning."""
    written_by = meta.get("flowvi_version")
    for (family, option), since in _MEANING_CHANGED.items():
        if name == family and hyper.get(option, True) and _version_tuple(written_by) < since:
            raise ValueError(f"{str(path)!r} was written by flowvi {written_by}; since flowvi "
                             f"{'.'.join(map(str, since))} the {option} layers of {family!r} flows are "
                             "parameterised differently, so these parameters would load as another flow. "
                             "Refit with this version.")


def _layout_cause(meta: dict) -> str:
    written_by = meta.get("flowvi_version")
    if written_by == __version__:
        return "the file is damaged"
    return (f"it was written by flowvi {written_by} and this is {__version__}: refit with this "
            "version (a family's parameter layout can change between versions), or the file is damaged")
