"""The trivial baselines: bicubic and nearest upsampling for super-resolution (as the DIP
super-resolution notebook's ``get_baselines``: PIL resizes of the 8-bit low-resolution image),
and the observation itself (colorization: the gray image; inpainting: the masked one)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dgp_jax.baselines.common import check_observed, check_settings, low_resolution, sr_factor

SETTINGS = ("factor",)


def _upsample(observed, degradation, config, resample) -> np.ndarray:
    check_settings("bicubic/nearest", config, SETTINGS)
    factor = sr_factor(degradation, config)
    if factor is None:
        name = None if degradation is None else degradation.name
        raise ValueError(f"bicubic and nearest apply to super-resolution, not φ {name!r}")
    observed = check_observed(observed, "bicubic/nearest")
    low = low_resolution(observed, factor)
    # The low-resolution target is PIL's 8-bit output / 255: back to the same bytes.
    low8 = np.clip(np.rint((low + 1) / 2 * 255), 0, 255).astype(np.uint8)
    h, w = observed.shape[1:3]
    up = [np.asarray(Image.fromarray(im).resize((w, h), resample)) for im in low8]
    return (np.stack(up).astype(np.float32) / 255 * 2 - 1).astype(observed.dtype)


def bicubic(observed, degradation, *, seed, config):
    """PIL bicubic upsampling of the low-resolution image."""
    del seed
    return _upsample(observed, degradation, config, Image.Resampling.BICUBIC)


def nearest(observed, degradation, *, seed, config):
    """PIL nearest-neighbour upsampling of the low-resolution image."""
    del seed
    return _upsample(observed, degradation, config, Image.Resampling.NEAREST)


def observation(observed, degradation, *, seed, config):
    """The observation itself (for SR: DGP's φ, i.e. lanczos down and bilinear back up);
    ``factor`` is accepted and unused."""
    del degradation, seed
    check_settings("observation", config, SETTINGS)
    return np.array(check_observed(observed, "observation"), copy=True)
