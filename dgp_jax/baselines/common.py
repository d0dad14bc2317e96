"""Helpers the methods share: settings checks and the super-resolution observation."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dgp_jax.checks import is_int, unit_range_images


def check_settings(method: str, config: Mapping[str, Any], known: Sequence[str]) -> None:
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ValueError(
            f"{method}: unknown setting {unknown[0]!r}; settings: {', '.join(known) or 'none'}"
        )


def sr_factor(degradation, config: Mapping[str, Any]) -> int | None:
    """The SR factor when φ is super-resolution (named 'SR' or 'SR<factor>'), else None.
    ``degradations.for_mode`` names it 'SR', so the factor then comes from ``config``."""
    match = re.fullmatch(r"SR(\d*)", degradation.name) if degradation is not None else None
    if match is None:
        return None
    factor = config.get("factor") or (int(match.group(1)) if match.group(1) else None)
    if factor is None:
        raise ValueError(f"φ {degradation.name!r} is super-resolution: pass the setting factor")
    return int(factor)


def low_resolution(observed: np.ndarray, factor: int) -> np.ndarray:
    """The low-resolution image behind an SR observation (B, H, W, 3).

    DGP's φ upsamples the low-resolution target back bilinearly; that map is injective, so
    its least-squares inverse (the pseudo-inverses of the two 1-D interpolation matrices)
    gives the low-resolution image back, to float rounding.
    """
    from dgp_jax.degradations import _linear_taps

    h, w = observed.shape[-3:-1]
    if h % factor or w % factor:
        raise ValueError(f"factor {factor} does not divide the observation's size {h}x{w}")

    def matrix(n_out: int) -> np.ndarray:
        i0, i1, w0, w1 = _linear_taps(n_out // factor, factor)
        m = np.zeros((n_out, n_out // factor))
        np.add.at(m, (np.arange(n_out), i0), w0)
        np.add.at(m, (np.arange(n_out), i1), w1)
        return m

    ph, pw = np.linalg.pinv(matrix(h)), np.linalg.pinv(matrix(w))
    low = np.einsum("ih,...hwc,jw->...ijc", ph, np.asarray(observed, np.float64), pw)
    return low.astype(observed.dtype)


def check_observed(observed, method: str) -> np.ndarray:
    """The observations a method gets: (B, H, W, 3) floats in [-1, 1] (rounding allowed)."""
    observed = np.asarray(observed)
    if observed.ndim != 4 or observed.shape[-1] != 3:
        raise ValueError(f"{method}: observed must be (B, H, W, 3), got shape {observed.shape}")
    return unit_range_images(observed, f"{method}: observed", slack=0.5, nan_ok=False)


def image_keys(seed, count: int) -> np.ndarray:
    """(count, 2) uint32 PRNG keys: with an int seed, fold_in(PRNGKey(seed), i) for image i;
    with one int per image, the key image i gets alone with its seed as the int,
    fold_in(PRNGKey(seed_i), 0), so that an image's result depends neither on its batch nor
    on whether ``compare`` passed its seed alone (``--batch 1``) or in a list."""
    import jax

    if isinstance(seed, (int, np.integer)):
        base = jax.random.PRNGKey(int(seed))
        return np.stack([np.asarray(jax.random.fold_in(base, i)) for i in range(count)])
    if (
        isinstance(seed, str | bytes)
        or not hasattr(seed, "__len__")
        or not all(is_int(s) for s in seed)
    ):
        raise ValueError(f"seed must be an int or one int per image, got {seed!r}")
    seeds = [int(s) for s in seed]
    if len(seeds) != count:
        raise ValueError(f"{len(seeds)} seeds for {count} images")
    return np.concatenate([image_keys(s, 1) for s in seeds])
