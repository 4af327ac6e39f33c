"""Eager argument checks: every error names the argument and says what was expected."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Raise ValueError unless `value` is one of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; expected one of {', '.join(map(repr, choices))}.")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Raise unless `value` is True or False; return it."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}.")
    return value


def check_positive_int(name: str, value: Any) -> int:
    """Raise unless `value` is an integer >= 1 (bools rejected); return it as int."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _check_number(name: str, value: Any, what: str, ok) -> float:
    """Raise unless `value` is a finite real number (not a string or bool) for which ``ok(value)``."""
    if isinstance(value, str | bytes | bool):  # float("0.1") and float(True) would pass
        raise ValueError(f"{name} must be a {what} number, got {value!r}.")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a {what} number, got {value!r}.") from None
    if not np.isfinite(out) or not ok(out):
        raise ValueError(f"{name} must be a {what} finite number, got {value!r}.")
    return out


def check_positive_float(name: str, value: Any) -> float:
    """Raise unless `value` is a finite number > 0; return it as float."""
    return _check_number(name, value, "positive", lambda v: v > 0)


def check_nonnegative(name: str, value: Any) -> float:
    """Raise unless `value` is a finite number >= 0; return it as float."""
    return _check_number(name, value, "non-negative", lambda v: v >= 0)


def check_int_tuple(name: str, value: Any) -> tuple[int, ...]:
    """Accept an int or a sequence of positive ints; return a tuple (hashable)."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"{name} must be a positive integer or a non-empty sequence of them, got {value!r}.")
    return tuple(check_positive_int(f"{name}[{i}]", v) for i, v in enumerate(value))


def check_optional_positive_int(name: str, value: Any) -> int | None:
    """Raise unless `value` is None or an integer >= 1; return it (as int)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")
    return int(value)


def check_index(name: str, value: Any, size: int) -> int:
    """Raise unless `value` is an integer in ``[0, size)`` (TypeError for a non-integer, IndexError outside)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer in [0, {size}), got {value!r}.")
    if not 0 <= value < size:
        raise IndexError(f"{name}={value} is out of range: expected an integer in [0, {size}).")
    return int(value)


def check_names(name: str, value: Any, dim: int) -> list[str]:
    """Accept `dim` distinct names, any iterable but a string (``"theta"`` is not five names); return strings."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a list of {dim} names, one per coordinate, got {value!r}"
                         + (f"; for a single name use [{value!r}]." if isinstance(value, str) else "."))
    names = [str(v) for v in value]
    if len(names) != dim:
        raise ValueError(f"{name} has {len(names)} entries but dim={dim}.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{name} must be distinct; repeated: {', '.join(map(repr, repeated[:5]))}.")
    return names


def check_array(name: str, value: Any) -> jax.Array:
    """A real numeric array (JAX or numpy-convertible; ints become floats); raise ValueError naming `name`."""
    if isinstance(value, jax.Array):
        dtype = value.dtype
    else:
        try:
            value = np.asarray(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be a numeric array, got {type(value).__name__}: {err}") from None
        dtype = value.dtype
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):  # bool is neither
        raise ValueError(f"{name} must be a real numeric array, got dtype {dtype}.")
    return jnp.asarray(value) if jnp.issubdtype(dtype, jnp.floating) else jnp.asarray(value, jnp.result_type(float))


def check_known_options(what: str, given: Iterable[str], valid: Iterable[str]) -> None:
    """Raise TypeError naming unknown option names and listing the valid ones."""
    valid = sorted(valid)
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise TypeError(f"unknown {what} {', '.join(map(repr, unknown))}; valid ones are "
                        f"{', '.join(map(repr, valid)) or '(none)'}.")


def as_key(key: Any, name: str = "key") -> jax.Array:
    """Accept one typed key (`jax.random.key`) or one raw uint32 key (`jax.random.PRNGKey`).

    Raises:
        TypeError: no key, an int seed, or a batch of keys (name the argument).
    """
    if key is None:
        raise TypeError(f"{name} is required: pass {name}=jax.random.key(0) (the same key gives the same result).")
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise TypeError(f"{name} must be a single PRNG key, got a batch of keys of shape {key.shape}; "
                            f"pass one of them, e.g. {name}[0].")
        return key
    if isinstance(key, bool | int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a JAX PRNG key such as jax.random.key({key!r}), got the number {key!r}.")
    try:
        arr = jnp.asarray(key)
    except TypeError:
        arr = None
    if arr is not None and arr.dtype == jnp.uint32 and arr.shape == (2,):
        return jax.random.wrap_key_data(arr)
    raise TypeError(f"{name} must be a JAX PRNG key such as jax.random.key(0), got {key!r}.")
