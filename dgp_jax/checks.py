"""Argument checks shared by the library's public functions (messages name the argument)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def is_int(value: Any) -> bool:
    """A Python or numpy integer, not a bool (which Python counts as one)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def integer_at_least(value: Any, name: str, least: int) -> int:
    """``value`` as an int, or a ValueError "<name> must be an integer >= <least>, got ..."."""
    if not is_int(value) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


_FIELD_KINDS = {"int": numbers.Integral, "float": numbers.Real, "bool": (bool, np.bool_),
                "str": str}  # fmt: skip


def fits_field_type(kind: str, value: Any) -> bool:
    """Whether ``value`` suits a dataclass field annotated ``kind`` ("int", "float", "bool",
    "str"). A bool is no number here, though Python counts it as an int; an int is a fine
    float (an eps of 0)."""
    is_bool = isinstance(value, bool | np.bool_)
    return isinstance(value, _FIELD_KINDS[kind]) and (kind == "bool" or not is_bool)
