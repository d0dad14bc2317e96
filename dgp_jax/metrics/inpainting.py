"""Inpainting metrics for any mask: the reference's hole metrics and AOT-GAN's.

Masks are (H, W), (H, W, 1), (B, H, W) or (B, H, W, 1) arrays, 1 = keep, 0 = hole (as
``dgp_jax.degradations.inpainting`` takes them); images are channels-last in [-1, 1].

**Hole metrics** (:func:`hole_psnr`, :func:`hole_ssim`): DGP's reference scores inpainting
on its centre square hole, cropping it out and computing PSNR and SSIM on the crop. For a
hole of any shape:

* PSNR is over the hole's pixels exactly (every channel), on the [0, 1] scale with data
  range 1: for the square hole that is the crop's PSNR;
* SSIM is scikit-image's SSIM map (7x7 uniform window, as the reference's call) averaged
  over the hole pixels whose whole 7x7 window lies in the hole (the hole eroded by 3 px
  with the image border counting as kept). The crop's SSIM is exactly that average over
  the square (scikit-image drops a 3 px border of the crop), so the square hole gives the
  reference's number; no window sees a kept pixel, so the known pixels cannot inflate it.
  A hole with no such pixel (every part thinner than 7 px) has no SSIM: NaN.

Both look at the hole only, where G's output and the composite (G's output pasted into
the known pixels) agree, so it does not matter which of the two is scored.

**AOT-GAN's metrics** (:func:`composite_uint8`, :func:`aot_gan_metrics`), as its
``src/metric/metric.py`` computes them (github.com/researchmm/AOT-GAN-for-Inpainting,
commit 2cd1afd) on the 8-bit composite against the 8-bit original:

* ``aot_l1``: ``sum|r - f| / sum(r + f)`` in float32 (its ``compare_mae``; the paper's
  "L1 (%)" is this times 100);
* ``aot_psnr``: ``peak_signal_noise_ratio(real, fake)``, data range 255 from uint8;
* ``aot_ssim``: ``structural_similarity(real, fake, multichannel=True)`` (today
  ``channel_axis=-1``), data range 255 from uint8, 7x7 uniform window, whole image.

Its composite is ``(1 - m) * image + m * pred`` in float32 (m = 1 in the hole), saved by
``postprocess``: clamp to [-1, 1], ``(x + 1) / 2 * 255``, truncated to uint8. The hole
pixels here are made exactly that way. The known pixels are the original's 8-bit values
(``known="exact"``, the default): AOT-GAN's own float32 round trip
(``uint8 / 255 * 2 - 1``, then back, truncated) writes levels 1 to 63 one lower, so its
composites differ from the original outside the hole (dark pixels); ``known="aot-gan"``
reproduces that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dgp_jax.metrics.restoration import _pair, _unit

__all__ = [
    "SSIM_WINDOW",
    "aot_gan_metrics",
    "composite_evaluator",
    "composite_uint8",
    "hole_evaluator",
    "hole_metrics",
    "hole_psnr",
    "hole_ssim",
    "keep_masks",
    "original_uint8",
    "ssim_region",
]

Array = Any
# scikit-image's default window, the one the reference's SSIM uses.
SSIM_WINDOW = 7


def keep_masks(mask: Array, shape: tuple[int, ...]) -> np.ndarray:
    """A mask (see the module docstring) as (B, H, W) bool, True = keep, for images of
    ``shape`` (..., H, W, C) with B = the product of the leading axes."""
    mask = np.asarray(mask)
    if mask.ndim >= 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    h, w = shape[-3:-1]
    batch = int(np.prod(shape[:-3], dtype=np.int64))
    if mask.ndim not in (2, 3) or mask.shape[-2:] != (h, w):
        raise ValueError(
            f"mask shape {np.shape(mask)} does not fit images of shape {tuple(shape)}: use "
            f"(H, W), (H, W, 1), (B, H, W) or (B, H, W, 1) with H, W = {h}, {w}"
        )
    if mask.ndim == 3 and mask.shape[0] not in (1, batch):
        raise ValueError(f"{mask.shape[0]} masks for {batch} images: give one, or one per image")
    values = np.unique(mask)
    if not np.all(np.isin(values, (0, 1))):
        raise ValueError(f"masks must be binary (1 keep, 0 hole), got values {values[:6]}")
    return np.broadcast_to(mask.reshape((-1, h, w)) == 1, (batch, h, w))


def ssim_region(hole: np.ndarray) -> np.ndarray:
    """(H, W) bool: the hole pixels whose 7x7 SSIM window lies wholly in the hole."""
    return ndimage.binary_erosion(hole, structure=np.ones((SSIM_WINDOW, SSIM_WINDOW), bool),
                                  border_value=0)  # fmt: skip


def _hole_psnr_unit(x: np.ndarray, ref: np.ndarray, hole: np.ndarray) -> float:
    if not hole.any():
        return float("nan")
    err = np.mean((ref[hole] - x[hole]) ** 2, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return float(10 * np.log10(1.0 / err))


def _hole_ssim_unit(x: np.ndarray, ref: np.ndarray, hole: np.ndarray) -> float:
    region = ssim_region(hole)
    if not region.any():
        return float("nan")
    _, full = structural_similarity(ref, x, channel_axis=2, data_range=1.0, full=True)
    return float(np.mean(full[region], dtype=np.float64))


def _per_image(fn, x: Array, ref: Array, mask: Array) -> np.ndarray | float:
    x, ref = _pair(x, ref)
    holes = ~keep_masks(mask, x.shape)
    flat_x = _unit(x).reshape((-1,) + x.shape[-3:])
    flat_ref = _unit(ref).reshape((-1,) + x.shape[-3:])
    values = np.array([fn(a, b, h) for a, b, h in zip(flat_x, flat_ref, holes, strict=True)])
    return float(values[0]) if x.ndim == 3 else values.reshape(x.shape[:-3])


def hole_psnr(x: Array, ref: Array, mask: Array) -> np.ndarray | float:
    """PSNR in dB over the hole's pixels, on (x + 1) / 2 with data range 1, per image.

    Args:
      x, ref: (..., H, W, C) images in [-1, 1].
      mask: 1 = keep, 0 = hole; one mask for all images or one per image.

    Returns:
      (...,) float64 array (a float for a single image); inf where x equals ref in the
      hole, NaN for a mask without hole.
    """
    return _per_image(_hole_psnr_unit, x, ref, mask)


def hole_ssim(x: Array, ref: Array, mask: Array) -> np.ndarray | float:
    """SSIM over the hole: the SSIM map averaged over :func:`ssim_region`, per image.

    Returns:
      (...,) float64 array (a float for a single image); NaN where no 7x7 window fits in
      the hole.
    """
    return _per_image(_hole_ssim_unit, x, ref, mask)


def hole_metrics(x: Array, ref: Array, mask: Array) -> dict[str, np.ndarray]:
    """``{"hole_psnr", "hole_ssim"}``, each (B,) float64 (0-d for a single image)."""
    return {
        "hole_psnr": np.asarray(hole_psnr(x, ref, mask), np.float64),
        "hole_ssim": np.asarray(hole_ssim(x, ref, mask), np.float64),
    }


def _aot_postprocess(x: np.ndarray) -> np.ndarray:
    """AOT-GAN's ``postprocess``: clamp(-1, 1), (x + 1) / 2 * 255 in float32, to uint8."""
    x = np.clip(np.asarray(x, np.float32), -1.0, 1.0)
    return ((x + np.float32(1)) / np.float32(2) * np.float32(255)).astype(np.uint8)


def original_uint8(original: Array) -> np.ndarray:
    """Images in [-1, 1] that came from 8-bit files (``load_image``) -> their uint8 values.

    Rounded, not truncated: ``k / 255 * 2 - 1`` maps back to k exactly.
    """
    return np.rint((np.asarray(original, np.float64) + 1) * 127.5).clip(0, 255).astype(np.uint8)


def composite_uint8(
    restored: Array, original: Array, mask: Array, known: str = "exact"
) -> np.ndarray:
    """The 8-bit composite AOT-GAN scores: the result in the hole, the original elsewhere.

    Args:
      restored: (..., H, W, 3) the method's output in [-1, 1] (only the hole is used).
      original: (..., H, W, 3) the original in [-1, 1], from an 8-bit image.
      mask: 1 = keep, 0 = hole.
      known: "exact" (the original's 8-bit values outside the hole) or "aot-gan" (its
        float32 round trip, which lowers some levels by one; module docstring).

    Returns:
      (..., H, W, 3) uint8.
    """
    if known not in ("exact", "aot-gan"):
        raise ValueError(f"known must be 'exact' or 'aot-gan', got {known!r}")
    restored, original = _pair(restored, original)
    keep = keep_masks(mask, restored.shape).reshape(restored.shape[:-1] + (1,))
    real = original_uint8(original)
    hole = _aot_postprocess(restored)
    if known == "exact":
        return np.where(keep, real, hole)
    image = real.astype(np.float32) / np.float32(255) * np.float32(2) - np.float32(1)
    m = (~keep).astype(np.float32)
    comp = (np.float32(1) - m) * image + m * np.asarray(restored, np.float32)
    return _aot_postprocess(comp)


def _aot_l1(real: np.ndarray, fake: np.ndarray) -> float:
    real, fake = real.astype(np.float32), fake.astype(np.float32)
    return float(np.sum(np.abs(real - fake)) / np.sum(real + fake))


def aot_gan_metrics(composite: np.ndarray, original: np.ndarray) -> dict[str, np.ndarray]:
    """AOT-GAN's ``compare_mae`` / ``compare_psnr`` / ``compare_ssim`` per image.

    Args:
      composite, original: (..., H, W, 3) uint8 (the fake and the real, as AOT-GAN reads
        its PNGs).

    Returns:
      ``{"aot_l1", "aot_psnr", "aot_ssim"}``, each (B,) float64 (0-d for a single image).
    """
    composite, original = np.asarray(composite), np.asarray(original)
    if composite.dtype != np.uint8 or original.dtype != np.uint8:
        raise TypeError(
            f"AOT-GAN's metrics read 8-bit images: got {composite.dtype} and "
            f"{original.dtype}; build the composite with composite_uint8"
        )
    if composite.shape != original.shape or composite.ndim < 3:
        raise ValueError(
            f"shapes {composite.shape} and {original.shape}: need equal (..., H, W, C)"
        )
    lead = composite.shape[:-3]
    fakes = composite.reshape((-1,) + composite.shape[-3:])
    reals = original.reshape((-1,) + composite.shape[-3:])
    rows = [
        (
            _aot_l1(r, f),
            peak_signal_noise_ratio(r, f),
            structural_similarity(r, f, channel_axis=-1),
        )
        for r, f in zip(reals, fakes, strict=True)
    ]
    values = np.array(rows, np.float64).reshape(lead + (3,))
    return {"aot_l1": values[..., 0], "aot_psnr": values[..., 1], "aot_ssim": values[..., 2]}


# --------------------------------------------------------------------------- registry
def hole_evaluator() -> Callable[..., dict[str, np.ndarray]]:
    """Registry factory ``inpainting_hole``: evaluate(restored, reference, masks=...)."""

    def evaluate(restored: Array, reference: Array, masks: Array) -> dict[str, np.ndarray]:
        return hole_metrics(restored, reference, masks)

    return evaluate


def composite_evaluator(known: str = "exact") -> Callable[..., dict[str, np.ndarray]]:
    """Registry factory ``aot_gan``: evaluate(restored, reference, masks=...) builds the
    8-bit composite (:func:`composite_uint8`) and returns :func:`aot_gan_metrics`."""
    if known not in ("exact", "aot-gan"):
        raise ValueError(f"known must be 'exact' or 'aot-gan', got {known!r}")

    def evaluate(restored: Array, reference: Array, masks: Array) -> dict[str, np.ndarray]:
        composite = composite_uint8(restored, reference, masks, known=known)
        return aot_gan_metrics(composite, original_uint8(reference))

    return evaluate
