"""Model files for the command line: import one, find what it defines, build what `fit` needs.

A model file is a Python file that defines exactly one of

- ``log_density`` (``x: (dim,) -> scalar``) and ``dim``, optionally ``names``;
- ``log_prior`` (``x: (dim,) -> scalar``), ``log_likelihood`` (``(x, one
  observation) -> scalar``), ``data`` (arrays with the observations on axis 0)
  and ``dim``, optionally ``names``: a log density with a data axis, for
  ``--subsample`` and ``--devices``;
- a NumPyro ``model``, optionally with ``args`` (a tuple) and ``kwargs`` (a
  dict): its data, passed as ``model(*args, **kwargs)``;
- ``samples``, an array ``(n, dim)``, fitted by forward KL (`flowvi.fit_samples`); with
  ``context``, an array ``(n, context_dim)`` beside it, a conditional density ``q(x | context)``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import sys
import traceback
from types import ModuleType
from typing import Any

import numpy as np

KINDS = {
    "log_density": "a log density (`log_density` and `dim`)",
    "data": "a log likelihood with data (`log_likelihood`, `data` and `dim`)",
    "numpyro": "a NumPyro model (`model` with `args`/`kwargs`)",
    "samples": "samples (`samples`, fitted by forward KL)",
}
EXPECTED = ("expected `log_density` and `dim` (optionally `names`), a NumPyro `model` with its data in "
            "`args`/`kwargs`, or `samples` (an (n, dim) array)")


class ModelFileError(Exception):
    """A model file that is missing, fails to import, or does not define a target; one-line message."""


@dataclasses.dataclass
class ModelFile:
    """What a model file defines.

    Attributes:
        path: the file.
        kind: ``"log_density"``, ``"data"``, ``"numpyro"`` or ``"samples"``.
        module: the imported module.
    """

    path: pathlib.Path
    kind: str
    module: ModuleType

    @property
    def name(self) -> str:
        """The file's stem, e.g. ``"banana"``."""
        return self.path.stem

    def describe(self) -> str:
        """One line: what was found, e.g. ``a log density (log_density, dim=2, names x0, x1)``."""
        m = self.module
        if self.kind == "log_density":
            names = getattr(m, "names", None)
            shown = "" if names is None else f", names {_short_list(names)}"
            return f"a log density (`log_density`, `dim` = {m.dim}{shown}): fitting by reverse KL (flowvi.fit)"
        if self.kind == "data":
            import jax

            n = jax.tree.leaves(m.data)[0].shape[0] if jax.tree.leaves(m.data) else 0
            return (f"a log likelihood with data (`log_prior`, `log_likelihood`, `data` with {n} observations, "
                    f"`dim` = {m.dim}): fitting by reverse KL (flowvi.fit)")
        if self.kind == "numpyro":
            args, kwargs = _model_data(m)
            data = []
            if args:
                data.append(f"{len(args)} positional argument{'s' if len(args) != 1 else ''} in `args`")
            if kwargs:
                data.append(f"`kwargs` {_short_list(list(kwargs))}")
            what = ", ".join(data) if data else "no `args`/`kwargs`: called as model()"
            return f"a NumPyro model (`model`; {what}): fitting by reverse KL (flowvi.fit)"
        shape = np.shape(m.samples)
        given = (f" given `context` ({np.shape(m.context)[-1] if np.ndim(m.context) > 1 else 1}-D)"
                 if hasattr(m, "context") else "")
        return (f"samples (`samples`, {shape[0]} x {shape[1]}){given}: fitting by forward KL, "
                "maximum likelihood (flowvi.fit_samples)")

    def target(self):
        """The `flowvi.Target` (log density and NumPyro kinds).

        Raises:
            ModelFileError: the file's definitions are not usable (e.g. NumPyro
                cannot initialise the model), with flowvi's or NumPyro's reason.
        """
        import flowvi

        m = self.module
        try:
            if self.kind == "log_density":
                return flowvi.Target(m.log_density, m.dim, getattr(m, "names", None))
            if self.kind == "data":
                return flowvi.Target(dim=m.dim, names=getattr(m, "names", None), log_prior=m.log_prior,
                                     log_likelihood=m.log_likelihood, data=m.data)
            args, kwargs = _model_data(m)
            return flowvi.Target.from_numpyro(m.model, *args, **kwargs)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ModelFileError(f"{self.path}: {_one_line(err)}") from err

    def samples(self) -> np.ndarray:
        """The data of a samples file, checked: finite, ``(n, dim)``."""
        from flowvi.forward_kl import check_data

        try:
            return check_data(self.module.samples)
        except ValueError as err:
            raise ModelFileError(f"{self.path}: `samples` {err}") from err

    def context(self, num_rows: int) -> np.ndarray | None:
        """The `context` of a samples file, checked: ``(num_rows, context_dim)`` finite; None when it has none."""
        from flowvi.forward_kl import check_context_rows

        if not hasattr(self.module, "context"):
            return None
        try:
            return check_context_rows(self.module.context, num_rows)
        except ValueError as err:
            raise ModelFileError(f"{self.path}: `context`: {err}") from err


def load_model_file(path: str | pathlib.Path) -> ModelFile:
    """Import `path` and find which kind of target it defines.

    Raises:
        ModelFileError: the file is missing, is not a ``.py`` file, fails to
            import (the message holds the Python error and its line), or
            defines none (or more than one) of the kinds in `KINDS`.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {str(path)!r} does not exist.")
    if path.is_dir():
        raise ModelFileError(f"{str(path)!r} is a directory; give a model file such as models/banana.py.")
    if path.suffix != ".py":
        raise ModelFileError(f"model file {str(path)!r} must be a Python file ending in .py.")
    module = _import(path)
    return ModelFile(path, _kind(path, module), module)


def _import(path: pathlib.Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_flowvi_model_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # so the file can import helpers that sit beside it
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as err:  # noqa: BLE001 - any error in user code is reported in one line
        raise ModelFileError(f"{path} failed to import: {_one_line(err)}{_where(err, path)}") from err
    finally:
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    return module


def _where(err: BaseException, path: pathlib.Path) -> str:
    """`` (line N)``: the last line of `path` in the traceback, or a SyntaxError's own line."""
    if isinstance(err, SyntaxError) and err.lineno is not None:
        return f" (line {err.lineno})"
    target = str(path.resolve())
    lines = [f.lineno for f in traceback.extract_tb(err.__traceback__)
             if str(pathlib.Path(f.filename).resolve()) == target]
    return f" (line {lines[-1]})" if lines else ""


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    if isinstance(err, SyntaxError):
        text = err.msg
    first = text.splitlines()[0] if text else ""
    more = " ..." if len(text.splitlines()) > 1 else ""
    return f"{type(err).__name__}: {first}{more}" if first else type(err).__name__


def _kind(path: pathlib.Path, m: ModuleType) -> str:
    has = {name: hasattr(m, name) for name in ("log_density", "dim", "names", "model", "args", "kwargs",
                                               "samples", "log_likelihood", "data", "log_prior")}
    found = []
    if has["log_density"] and has["dim"]:
        found.append("log_density")
    if has["log_likelihood"] and has["data"] and has["dim"]:
        found.append("data")
    if has["model"]:
        found.append("numpyro")
    if has["samples"]:
        found.append("samples")
    if len(found) > 1:
        raise ModelFileError(f"{path} defines more than one kind of target: "
                             f"{' and '.join(KINDS[k] for k in found)}; keep one.")
    if not found:
        raise ModelFileError(f"{path} defines no target: {_missing(has, m)}.")
    kind = found[0]
    if kind in ("log_density", "data"):
        if kind == "data" and not has["log_prior"]:
            raise ModelFileError(f"{path} has `log_likelihood`, `data` and `dim` but no `log_prior`: add "
                                 "`def log_prior(x): ...` (x: (dim,) -> scalar; return 0.0 for a flat prior).")
        for function in ("log_density",) if kind == "log_density" else ("log_prior", "log_likelihood"):
            if not callable(getattr(m, function)):
                raise ModelFileError(f"{path}: `{function}` must be a function, got "
                                     f"{type(getattr(m, function)).__name__}.")
        if isinstance(m.dim, bool) or not isinstance(m.dim, int | np.integer) or m.dim < 1:
            raise ModelFileError(f"{path}: `dim` must be a positive integer, got {m.dim!r}.")
        if has["names"] and len(m.names) != m.dim:
            raise ModelFileError(f"{path}: `names` has {len(m.names)} entries but `dim` = {m.dim}.")
    elif kind == "numpyro":
        if not callable(m.model):
            raise ModelFileError(f"{path}: `model` must be a NumPyro model (a function), "
                                 f"got {type(m.model).__name__}.")
        if has["args"] and not isinstance(m.args, tuple | list):
            raise ModelFileError(f"{path}: `args` must be a tuple of the model's positional arguments, "
                                 f"got {type(m.args).__name__}.")
        if has["kwargs"] and not isinstance(m.kwargs, dict):
            raise ModelFileError(f"{path}: `kwargs` must be a dict of the model's keyword arguments, "
                                 f"got {type(m.kwargs).__name__}.")
    return kind


def _missing(has: dict[str, bool], m: ModuleType) -> str:
    if has["log_density"]:
        return "it has `log_density` but no `dim`: add `dim = <number of coordinates>`"
    if has["log_likelihood"]:
        missing = " and ".join(f"`{n}`" for n in ("data", "dim") if not has[n])
        return f"it has `log_likelihood` but no {missing}: a log likelihood needs its `data` and `dim`"
    if has["dim"]:
        return "it has `dim` but no `log_density`: add `def log_density(x): ...` (x: (dim,) -> scalar)"
    if has["args"] or has["kwargs"]:
        return "it has `args`/`kwargs` but no `model`: add the NumPyro `model` they are the data of"
    public = sorted(k for k in vars(m) if not k.startswith("_") and not isinstance(vars(m)[k], ModuleType))
    defined = f"; it defines {_short_list(public)}" if public else "; it defines nothing public"
    return EXPECTED + defined


def _model_data(m: ModuleType) -> tuple[tuple, dict[str, Any]]:
    return tuple(getattr(m, "args", ())), dict(getattr(m, "kwargs", {}))


def _short_list(items, limit: int = 6) -> str:
    items = [str(i) for i in items]
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
