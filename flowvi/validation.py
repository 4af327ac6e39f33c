"""Eager argument checks: every error names the argument and says what was expected."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

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


def check_positive_float(name: str, value: Any) -> float:
    """Raise unless `value` is a finite number > 0; return it as float."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}.") from None
    if not np.isfinite(out) or out <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    return out


def check_nonnegative(name: str, value: Any) -> float:
    """Raise unless `value` is a finite number >= 0; return it as float."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}.") from None
    if not np.isfinite(out) or out < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}.")
    return out


def check_int_tuple(name: str, value: Any) -> tuple[int, ...]:
    """Accept an int or a sequence of positive ints; return a tuple (hashable)."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"{name} must be a positive integer or a non-empty sequence of them, got {value!r}.")
    return tuple(check_positive_int(f"{name}[{i}]", v) for i, v in enumerate(value))


def check_known_options(what: str, given: Iterable[str], valid: Iterable[str]) -> None:
    """Raise TypeError naming unknown option names and listing the valid ones."""
    valid = sorted(valid)
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise TypeError(f"unknown {what} {', '.join(map(repr, unknown))}; valid ones are "
                        f"{', '.join(map(repr, valid)) or '(none)'}.")
