"""Restoration metrics, as the reference DGP reports them.

Host side, numpy, per image. Inputs are channels-last images in [-1, 1], shape (B, H, W, 3)
(or a single (H, W, 3) image); every function returns one value per image.

Why scikit-image: the reference computes PSNR and SSIM with scikit-image (its old
``compare_psnr`` / ``compare_ssim(multichannel=True)``, today
``peak_signal_noise_ratio(true, test, data_range=1.0)`` and
``structural_similarity(true, test, channel_axis=2, data_range=1.0)``) and does the
colorization merge with ``skimage.color.rgb2lab`` / ``lab2rgb``. SSIM in particular has
many variants (window size and shape, sample vs population covariance, how channels and
borders are treated); calling the same library with the same settings gives the same
numbers as the reference rather than numbers that are merely close, and the colour
conversions' constants and clipping come along for free. The metrics are reported, never
differentiated, so a host-side numpy library costs nothing in the solver.

Reference mapping (``DGP.get_metrics``): ``mse`` / ``l1`` here are its ``mse_loss_origin`` /
``l1_loss_origin``; ``psnr`` / ``ssim`` are its ``psnr`` / ``ssim``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from skimage import color
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dgp_jax.checks import unit_range_images
from dgp_jax.degradations import MODES, hole_box

__all__ = [
    "colorization_merge",
    "l1",
    "mse",
    "psnr",
    "restoration_metrics",
    "ssim",
]

Array = Any  # numpy or jax array


def _pair(x: Array, ref: Array) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 numpy arrays of one (..., H, W, C) shape."""
    # [-1, 1] with room for rounding: 0..255 images would give scores on another scale.
    # (A NaN image, a diverged solve, scores NaN, which shows.)
    x = unit_range_images(x, "images", slack=0.5, nan_ok=True).astype(np.float64)
    ref = unit_range_images(ref, "reference", slack=0.5, nan_ok=True).astype(np.float64)
    if x.ndim < 3:
        raise ValueError(f"images must have shape (..., H, W, C), got {x.shape}")
    if x.shape != ref.shape:
        raise ValueError(f"image shape {x.shape} does not match reference shape {ref.shape}")
    return x, ref


def _unit(x: np.ndarray) -> np.ndarray:
    """[-1, 1] -> [0, 1], the scale on which the reference computes PSNR/SSIM."""
    return (x + 1) / 2


def _per_image(
    fn: Callable[[np.ndarray, np.ndarray], float], x: np.ndarray, ref: np.ndarray
) -> np.ndarray | float:
    """fn(x_hwc, ref_hwc) for each image of (..., H, W, C) arrays: an array over the leading
    axes, or a float for a single image."""
    lead = x.shape[:-3]
    flat_x = x.reshape((-1,) + x.shape[-3:])
    flat_ref = ref.reshape((-1,) + ref.shape[-3:])
    values = np.array([fn(a, b) for a, b in zip(flat_x, flat_ref, strict=True)], np.float64)
    return float(values[0]) if lead == () else values.reshape(lead)


def _reduce(values: np.ndarray) -> np.ndarray | float:
    return float(values) if values.ndim == 0 else values


def mse(x: Array, ref: Array) -> np.ndarray | float:
    """Mean squared error on the [0, 1] scale: mean((x - ref)^2) / 4, per image.

    Args:
      x, ref: (..., H, W, C) images in [-1, 1].

    Returns:
      (...,) float64 array (a float for a single image).
    """
    x, ref = _pair(x, ref)
    return _reduce(np.mean((x - ref) ** 2, axis=(-3, -2, -1)) / 4)


def l1(x: Array, ref: Array) -> np.ndarray | float:
    """Mean absolute error on the [0, 1] scale: mean|x - ref| / 2, per image.

    Args:
      x, ref: (..., H, W, C) images in [-1, 1].

    Returns:
      (...,) float64 array (a float for a single image).
    """
    x, ref = _pair(x, ref)
    return _reduce(np.mean(np.abs(x - ref), axis=(-3, -2, -1)) / 2)


def _psnr_unit(x: np.ndarray, ref: np.ndarray) -> float:
    # Argument order as the reference: (ground truth, test image).
    return float(peak_signal_noise_ratio(ref, x, data_range=1.0))


def _ssim_unit(x: np.ndarray, ref: np.ndarray) -> float:
    return float(structural_similarity(ref, x, channel_axis=2, data_range=1.0))


def psnr(x: Array, ref: Array) -> np.ndarray | float:
    """PSNR in dB of x against ref, on (x + 1) / 2 with data range 1, per image.

    Args:
      x, ref: (..., H, W, C) images in [-1, 1].

    Returns:
      (...,) float64 array (a float for a single image); inf where x == ref.
    """
    x, ref = _pair(x, ref)
    return _per_image(_psnr_unit, _unit(x), _unit(ref))


def ssim(x: Array, ref: Array) -> np.ndarray | float:
    """SSIM of x against ref, on (x + 1) / 2 with data range 1, channels last, per image.

    scikit-image's defaults otherwise (7x7 uniform window, sample covariance), as the
    reference. H and W must be at least 7.

    Args:
      x, ref: (..., H, W, C) images in [-1, 1].

    Returns:
      (...,) float64 array (a float for a single image).
    """
    x, ref = _pair(x, ref)
    if min(x.shape[-3:-1]) < 7:
        raise ValueError(f"SSIM's 7x7 window needs images of at least 7x7 pixels, got {x.shape}")
    return _per_image(_ssim_unit, _unit(x), _unit(ref))


def _merge_unit(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1]: lightness of ref, chroma (ab) of x, back to RGB in [0, 1]."""
    x_lab = color.rgb2lab(x)
    x_lab[..., 0] = color.rgb2lab(ref)[..., 0]
    # New L with old ab often leaves the sRGB gamut; lab2rgb clips, as in the reference, and
    # says so in a warning that would otherwise fire at nearly every solver step.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*negative Z values.*", category=UserWarning)
        return color.lab2rgb(x_lab)


def colorization_merge(x: Array, ref: Array) -> np.ndarray:
    """Colorization result as the reference scores it: L of ``ref`` with ab of ``x`` in Lab.

    A colorization only chooses colours; the lightness is given by the gray input, so the
    reference keeps the input's L channel and takes the ab channels from G's output.

    Args:
      x: (..., H, W, 3) G's output in [-1, 1].
      ref: (..., H, W, 3) the original image (its L equals that of the gray input).

    Returns:
      (..., H, W, 3) float64 RGB image in [-1, 1] (lab2rgb clips to the sRGB gamut).
    """
    x, ref = _pair(x, ref)
    if x.shape[-1] != 3:
        raise ValueError(f"colorization_merge needs RGB images, got shape {x.shape}")
    flat = [
        _merge_unit(a, b)
        for a, b in zip(
            _unit(x).reshape((-1,) + x.shape[-3:]),
            _unit(ref).reshape((-1,) + x.shape[-3:]),
            strict=True,
        )
    ]
    return (np.stack(flat) * 2 - 1).reshape(x.shape)


def restoration_metrics(
    x: Array,
    original: Array,
    mode: str,
    mask_box: tuple[int, int] | None = None,
    mask: Array | None = None,
) -> dict[str, np.ndarray]:
    """The reference's per-step metrics of a restoration against the original image.

    * ``mse``, ``l1``: whole image, [0, 1] scale (the reference's ``mse_loss_origin`` and
      ``l1_loss_origin``).
    * ``psnr``, ``ssim``: for 'colorization' on the Lab merge (:func:`colorization_merge`)
      against the original; for 'inpainting' on the hole only (rows and columns
      begin..end-1 of ``mask_box``, default :func:`~dgp_jax.degradations.hole_box`; with
      ``mask``, the hole of any mask as :mod:`dgp_jax.metrics.inpainting` defines it,
      which for the centre square gives the same numbers); for every other mode on the
      whole image. (The reference reports no metrics for 'hybrid' and the manipulation
      modes; here they get the whole-image numbers.)

    Args:
      x: (B, H, W, 3) restored images (G's output) in [-1, 1]; a single (H, W, 3) works too.
      original: the undegraded images, same shape.
      mode: a DGP mode name (see :data:`~dgp_jax.degradations.MODES`).
      mask_box: (begin, end) of the inpainting hole; only for 'inpainting'.
      mask: an inpainting keep-mask (1 = keep; (H, W[, 1]) or one per image); only for
        'inpainting', not with ``mask_box``.

    Returns:
      dict with keys 'mse', 'l1', 'psnr', 'ssim', each a float64 array of shape (B,)
      (0-d arrays for a single image): one value per image, as the reference computes them
      for its batch of one.
    """
    if mode not in MODES:
        raise ValueError(f"unknown DGP mode {mode!r}; valid modes: {', '.join(MODES)}")
    if (mask_box is not None or mask is not None) and mode != "inpainting":
        raise ValueError(f"mask_box and mask apply only to mode 'inpainting', not {mode!r}")
    if mask_box is not None and mask is not None:
        raise ValueError("give mask_box (a centred box) or mask (any hole), not both")
    x, original = _pair(x, original)
    if mask is not None:
        from dgp_jax.metrics.inpainting import hole_metrics

        hole = hole_metrics(x, original, mask)
        return {
            "mse": np.asarray(mse(x, original), dtype=np.float64),
            "l1": np.asarray(l1(x, original), dtype=np.float64),
            "psnr": hole["hole_psnr"],
            "ssim": hole["hole_ssim"],
        }
    h, w = x.shape[-3:-1]
    x_unit, ref_unit = _unit(x), _unit(original)

    if mode == "colorization":

        def score(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
            merged = _merge_unit(a, b)
            return _psnr_unit(merged, b), _ssim_unit(merged, b)

    elif mode == "inpainting":
        if mask_box is not None and len(mask_box) != 2:
            raise ValueError(f"mask_box must be (begin, end), got {mask_box!r}")
        begin, end = hole_box(h, w) if mask_box is None else (int(mask_box[0]), int(mask_box[1]))
        if not 0 <= begin < end <= min(h, w):
            raise ValueError(f"mask_box {mask_box!r} is not a box inside the {h}x{w} image")

        def score(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
            a, b = a[begin:end, begin:end], b[begin:end, begin:end]
            return _psnr_unit(a, b), _ssim_unit(a, b)

    else:

        def score(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
            return _psnr_unit(a, b), _ssim_unit(a, b)

    lead = x.shape[:-3]
    pairs = zip(
        x_unit.reshape((-1,) + x.shape[-3:]), ref_unit.reshape((-1,) + x.shape[-3:]), strict=True
    )
    scores = np.array([score(a, b) for a, b in pairs], dtype=np.float64).reshape(lead + (2,))
    return {
        "mse": np.asarray(mse(x, original), dtype=np.float64),
        "l1": np.asarray(l1(x, original), dtype=np.float64),
        "psnr": scores[..., 0],
        "ssim": scores[..., 1],
    }


def restoration_evaluator(
    mode: str, mask_box: tuple[int, int] | None = None
) -> Callable[..., dict[str, np.ndarray]]:
    """Registry factory: :func:`restoration_metrics` with ``mode`` and ``mask_box`` fixed.
    Given ``masks`` (as compare and the inpainting protocol pass them), 'inpainting' scores
    each mask's hole unless ``mask_box`` was fixed; the other modes score the whole image."""
    if mode not in MODES:
        raise ValueError(f"unknown DGP mode {mode!r}; valid modes: {', '.join(MODES)}")

    def evaluate(restored: Array, reference: Array, masks: Array | None = None):
        use = masks if mode == "inpainting" and mask_box is None else None
        return restoration_metrics(restored, reference, mode, mask_box=mask_box, mask=use)

    return evaluate
