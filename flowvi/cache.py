"""JAX's persistent compilation cache, so that a new process does not compile what an earlier one did.

Most of the time of a short fit in a new process is compilation (the training
chunk, the initialisation, drawing). With the cache on, every compiled program
is written to a folder, keyed on the program, the JAX and jaxlib versions and
the device, and the next process that needs it reads it back instead of
compiling it.

``flowvi.cache.enable()`` turns it on; the ``flowvi`` command line does so by
default. The folder is, in order:

1. the ``path`` given to `enable`;
2. ``$FLOWVI_CACHE_DIR``;
3. a folder already set for JAX (``JAX_COMPILATION_CACHE_DIR`` or
   ``jax.config.jax_compilation_cache_dir``);
4. ``$XDG_CACHE_HOME/flowvi/jax``, by default ``~/.cache/flowvi/jax``
   (``%LOCALAPPDATA%/flowvi/jax`` on Windows).

``FLOWVI_CACHE=0`` turns it off everywhere (`enable` then does nothing);
``FLOWVI_CACHE=1`` turns it on when flowvi is imported. Deleting the folder
is always safe: it only costs the compilations again. The cache is JAX's own
(``jax_compilation_cache_dir``), so once enabled it serves every JAX program
of the process, not only flowvi's. As JAX warns, a cache folder is trusted:
do not share one with users you do not trust.
"""

from __future__ import annotations

import os
import pathlib
import warnings

import jax

ENV_SWITCH = "FLOWVI_CACHE"
"""Environment variable: ``0`` (or ``false``, ``no``, ``off``) turns the cache off, ``1`` on at import."""
ENV_FOLDER = "FLOWVI_CACHE_DIR"
"""Environment variable: the cache folder."""
_OFF = ("0", "false", "no", "off")
_ON = ("1", "true", "yes", "on")


def disabled_by_environment() -> bool:
    """True when ``FLOWVI_CACHE`` is ``0`` (or ``false``, ``no``, ``off``)."""
    return os.environ.get(ENV_SWITCH, "").strip().lower() in _OFF


def enabled_by_environment() -> bool:
    """True when ``FLOWVI_CACHE`` is ``1`` (or ``true``, ``yes``, ``on``): `import flowvi` then enables the cache."""
    return os.environ.get(ENV_SWITCH, "").strip().lower() in _ON


def default_folder() -> pathlib.Path:
    """Where `enable` puts the cache without a ``path`` (see the module docstring for the order)."""
    if os.environ.get(ENV_FOLDER):
        return pathlib.Path(os.environ[ENV_FOLDER]).expanduser()
    if jax.config.jax_compilation_cache_dir:
        return pathlib.Path(jax.config.jax_compilation_cache_dir).expanduser()
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return pathlib.Path(os.environ["LOCALAPPDATA"]) / "flowvi" / "jax"
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base).expanduser() / "flowvi" / "jax"


def folder() -> pathlib.Path | None:
    """The folder JAX's persistent compilation cache uses now, or None when it is off."""
    current = jax.config.jax_compilation_cache_dir
    return pathlib.Path(current) if current and jax.config.jax_enable_compilation_cache else None


def enable(path: str | os.PathLike | None = None) -> pathlib.Path | None:
    """Turn on JAX's persistent compilation cache in `path`, for programs of any size.

    Also lowers JAX's thresholds (by default only programs that took over a
    second to compile are written) so that every program is cached: a fit
    compiles a few large programs and many small ones, and together the small
    ones cost seconds too. Calling it again with another folder moves the cache.

    Args:
        path: the cache folder, created if missing; default `default_folder`
            (``$FLOWVI_CACHE_DIR``, else ``~/.cache/flowvi/jax``).

    Returns:
        The folder in use, or None when ``FLOWVI_CACHE=0`` (then nothing changes).

    Raises:
        TypeError: `path` is not a string or path.
        ValueError: the folder cannot be created (the message says why).

    Examples:
        >>> import flowvi, tempfile
        >>> folder = flowvi.cache.enable(tempfile.mkdtemp())  # None when FLOWVI_CACHE=0
        >>> folder is None or folder == flowvi.cache.folder()
        True
        >>> flowvi.cache.disable()
    """
    if path is not None and not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a folder (a string or path), got {type(path).__name__}.")
    if disabled_by_environment():
        return None
    chosen = default_folder() if path is None else pathlib.Path(path).expanduser()
    try:
        chosen.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"the compilation cache folder {str(chosen)!r} cannot be created: "
                         f"{err.strerror or err}. Give a writable folder (path= or ${ENV_FOLDER}), or set "
                         f"{ENV_SWITCH}=0 to run without the cache.") from err
    chosen = chosen.resolve()
    if folder() != chosen:
        _move_to(str(chosen))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # -1: no size limit
    return chosen


def enable_or_warn(path: str | os.PathLike | None = None) -> pathlib.Path | None:
    """`enable`, but a folder that cannot be created is a warning and the cache stays off (for the CLI and imports).

    Warns:
        RuntimeWarning: the folder could not be created; the run goes on without the cache.
    """
    try:
        return enable(path)
    except ValueError as err:
        warnings.warn(f"flowvi runs without the compilation cache: {err}", RuntimeWarning, stacklevel=2)
        return None


def disable() -> None:
    """Turn JAX's persistent compilation cache off for the rest of the process (compiled programs stay on disk)."""
    if folder() is not None:
        _move_to(None)


def _move_to(path: str | None) -> None:
    from jax.experimental.compilation_cache import compilation_cache

    # JAX opens its cache once, at the first compilation; reset it so that the new folder is used.
    compilation_cache.reset_cache()
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)


__all__ = ["ENV_FOLDER", "ENV_SWITCH", "default_folder", "disable", "disabled_by_environment", "enable",
           "enable_or_warn", "enabled_by_environment", "folder"]
