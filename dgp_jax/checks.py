"""Argument checks shared by the library's public functions (messages name the argument)."""

from __future__ import annotations

import math
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


def is_nonnegative_number(value: Any, *, positive: bool = False) -> bool:
    """A real number, not a bool, finite and >= 0 (> 0 with ``positive``): rates, weights
    and epsilons, where a NaN or a negative value trains silently to garbage."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool | np.bool_):
        return False
    return math.isfinite(value) and (value > 0 if positive else value >= 0)


_FIELD_KINDS = {"int": numbers.Integral, "float": numbers.Real, "bool": (bool, np.bool_),
                "str": str}  # fmt: skip


def fits_field_type(kind: str, value: Any) -> bool:
    """Whether ``value`` suits a dataclass field annotated ``kind`` ("int", "float", "bool",
    "str"). A bool is no number here, though Python counts it as an int; an int is a fine
    float (an eps of 0)."""
    is_bool = isinstance(value, bool | np.bool_)
    return isinstance(value, _FIELD_KINDS[kind]) and (kind == "bool" or not is_bool)


def prng_key(key: Any, *, per_image: int | None = None):
    """``key`` as a PRNG key: an int seed becomes ``jax.random.PRNGKey(seed)``; a key (raw
    (2,) uint32 or typed, traced too) is returned as it is, and so, with ``per_image=B``, are
    B keys, one per image. Anything else is a ValueError that says what was given."""
    import jax
    import jax.numpy as jnp

    if is_int(key):
        return jax.random.PRNGKey(key)
    try:
        array = jnp.asarray(key)
    except (TypeError, ValueError):  # None, text, objects
        array = None
    if array is not None and jax.dtypes.issubdtype(array.dtype, jax.dtypes.prng_key):
        if array.ndim == 0 or (per_image is not None and array.shape == (per_image,)):
            return key
    elif array is not None and array.dtype == jnp.uint32:
        if array.shape == (2,) or (per_image is not None and array.shape == (per_image, 2)):
            return key
    wanted = ("an int seed or one PRNG key (jax.random.PRNGKey(seed))" if per_image is None else
              "an int seed, a PRNG key (jax.random.PRNGKey(seed)) or one key per image "
              f"({per_image}, 2)")  # fmt: skip
    got = type(key).__name__ + (
        f" of dtype {array.dtype} and shape {array.shape}" if array is not None else ""
    )
    raise ValueError(f"key must be {wanted}; got {got}")


_RANGE_HINT = (
    "0..255 images: x / 127.5 - 1, [0, 1] ones: x * 2 - 1 (dgp_jax.images.load_image reads "
    "files as [-1, 1])"
)


def unit_range_images(values: Any, name: str, *, slack: float, nan_ok: bool) -> np.ndarray:
    """``values`` as a floating array in [-1, 1], up to ``slack`` beyond it (rounding, or a
    resize's overshoot), or a ValueError naming ``name``: integer dtypes (uint8 0..255 above
    all, which would be scored, solved or written on another scale), values out of range,
    and NaN or infinities unless ``nan_ok`` (a diverged solve's NaN then shows as NaN)."""
    array = np.asarray(values)
    # ml_dtypes' bfloat16 (a bfloat16 solve's images) is no numpy floating subtype
    if not (np.issubdtype(array.dtype, np.floating) or array.dtype.name.startswith("bfloat")):
        raise ValueError(
            f"{name} must be floating point in [-1, 1], got dtype {array.dtype}; {_RANGE_HINT}"
        )
    finite = np.isfinite(array)
    if not nan_ok and not finite.all():
        raise ValueError(f"{name} holds NaN or infinite values")
    if finite.any():
        lo, hi = float(array[finite].min()), float(array[finite].max())
        if lo < -1 - slack or hi > 1 + slack:
            raise ValueError(
                f"{name} must be in [-1, 1], got values in [{lo:g}, {hi:g}]; {_RANGE_HINT}"
            )
    return array


def mask_values(mask: Any) -> None:
    """A ValueError unless every value is finite and in [0, 1] (1 = keep, 0 = hole; soft
    values between are allowed): a 0/255 mask or a NaN would scale or poison the image,
    or a hole ratio, silently."""
    mask = np.asarray(mask)
    if mask.size and (not np.all(np.isfinite(mask)) or mask.min() < 0 or mask.max() > 1):
        low, high = np.min(mask), np.max(mask)
        raise ValueError(
            f"mask values must be finite and in [0, 1] (1 = keep, 0 = hole), got "
            f"[{low:g}, {high:g}]{' with NaN' if np.isnan(mask).any() else ''}"
            + (" (a 0/255 mask: divide it by 255)" if high > 1 else "")
        )
