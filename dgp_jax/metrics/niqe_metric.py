"""NIQE (Mittal, Soundararajan and Bovik, "Making a 'completely blind' image quality
analyzer", 2013) as the LIVE MATLAB release (``niqe_release.zip``: ``computequality.m``,
``estimatemodelparam.m``) computes it. Lower is better.

Per image: the gray image is cropped to whole 96x96 blocks. At each of two scales (the
second a MATLAB ``imresize(im, 0.5)``: bicubic, antialiased, symmetric borders) it is
normalised to MSCN coefficients ``(im - mu) / (sigma + 1)`` with a 7x7 Gaussian window
(``fspecial('gaussian', 7, 7/6)``, ``imfilter(..., 'replicate')``), and every block (96x96,
then 48x48) gives 18 features: a generalised Gaussian fit (shape, scale) of the
coefficients and asymmetric generalised Gaussian fits (shape, mean, left and right scale)
of the products of horizontal, vertical and both diagonal neighbours. The 36 features of
all blocks are fitted by a Gaussian (NaN-ignoring mean, covariance of the rows without
NaN), and NIQE is the distance between it and the pristine model::

    sqrt((mu_p - mu) pinv((cov_p + cov) / 2) (mu_p - mu)^T)

The computation is float64 throughout, as MATLAB's. (BasicSR's port, used for the test
fixtures, resizes in float32; tests/fixtures/make_niqe.py says by how much that moves it.)

**Gray conversion.** The MATLAB code reads an 8-bit file and calls ``rgb2gray``, which on
uint8 returns uint8: ``round(0.298936021293775 R + 0.587043074451121 G + 0.114020904255103
B)``, halves away from zero. That is the default here (``gray="rgb2gray"``); images in
[-1, 1] are first rounded to uint8 (exact for images read from 8-bit files). BasicSR's
``calculate_niqe`` instead scores the rounded Y channel of MATLAB's ``rgb2ycbcr``
(``16 + (65.481 R + 128.553 G + 24.966 B) / 255`` on 0..255 values, rounded half to even,
as numpy rounds): ``gray="y"`` gives its numbers, which super-resolution papers built on
BasicSR report. The two differ (Y has a 16..235 range), so say which one a table uses.

**Pristine model.** :func:`load_niqe_params` reads the LIVE release's
``modelparameters.mat`` (``mu_prisparam``, ``cov_prisparam``) or BasicSR's
``niqe_pris_params.npz`` (the same numbers, ``mu_pris_param``, ``cov_pris_param``,
``gaussian_window``). :func:`fit_niqe_params` fits one from a folder of pristine images as
``estimatemodelparam.m`` does (blocks whose sharpness, the mean of sigma over the block, is
above 0.75 of the image's sharpest block).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage, special

from dgp_jax.metrics.weights import MissingWeightsError, WeightFile

BLOCK = 96
FEATURES_PER_SCALE = 18
SHARPNESS_THRESHOLD = 0.75
GRAY_METHODS = ("rgb2gray", "y")
# MATLAB's rgb2gray weights (the inverse of the NTSC YIQ matrix's first row, rounded).
_RGB2GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])
_YCBCR_Y = np.array([65.481, 128.553, 24.966])

MODEL_MAT = WeightFile(
    filename="modelparameters.mat",
    url="http://live.ece.utexas.edu/research/quality/niqe_release.zip",
    sha256_prefix="(not recorded: inside the zip)",
    metric="niqe",
)
MODEL_NPZ = WeightFile(
    filename="niqe_pris_params.npz",
    url="https://github.com/XPixelGroup/BasicSR/raw/master/basicsr/metrics/niqe_pris_params.npz",
    sha256_prefix="2a7c182a",
    metric="niqe",
)


class NIQEParams(NamedTuple):
    """A pristine model: mean (36,), covariance (36, 36), and the 7x7 smoothing window."""

    mu: np.ndarray
    cov: np.ndarray
    window: np.ndarray


def gaussian_window(size: int = 7, sigma: float = 7 / 6) -> np.ndarray:
    """MATLAB's ``fspecial('gaussian', size, sigma)``, normalised to sum 1."""
    half = (size - 1) / 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < np.finfo(np.float64).eps * h.max()] = 0
    return h / h.sum()


# --------------------------------------------------------------------------- gray
def to_gray(image: np.ndarray, method: str = "rgb2gray") -> np.ndarray:
    """(H, W, 3) in [-1, 1] -> (H, W) float64 gray levels 0..255 (integers); see the module
    docstring. A (H, W) or (H, W, 1) image is taken as gray already (rounded to uint8)."""
    if method not in GRAY_METHODS:
        raise ValueError(f"gray must be one of {GRAY_METHODS}, got {method!r}")
    image = np.asarray(image, np.float64)
    pixels = np.clip(np.round((image + 1) * 127.5), 0, 255)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        return pixels[..., 0]
    if pixels.ndim == 2:
        return pixels
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"an image must have shape (H, W, 3) or (H, W), got {image.shape}")
    if method == "rgb2gray":
        return np.floor(pixels @ _RGB2GRAY + 0.5)
    return np.round(16 + pixels @ _YCBCR_Y / 255)


# --------------------------------------------------------------------------- imresize
def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1) + (
        -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    ) * ((ax > 1) & (ax <= 2))


@functools.lru_cache(maxsize=64)
def _imresize_matrix(in_size: int, scale: float) -> np.ndarray:
    """(out, in) matrix of MATLAB's bicubic ``imresize`` along one axis (``contributions``):
    antialiased when shrinking, indices past the border mirrored symmetrically."""
    out_size = math.ceil(in_size * scale)
    width = 4.0 / scale if scale < 1 else 4.0
    x = np.arange(1, out_size + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    indices = left[:, None] + np.arange(taps)[None, :]
    distance = u[:, None] - indices
    weights = scale * _cubic(distance * scale) if scale < 1 else _cubic(distance)
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_size), np.arange(in_size - 1, -1, -1)])
    columns = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_size)]
    matrix = np.zeros((out_size, in_size), np.float64)
    np.add.at(matrix, (np.repeat(np.arange(out_size), taps), columns.ravel()), weights.ravel())
    return matrix


def imresize(image: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB's ``imresize(image, scale)`` (bicubic, antialiasing) of a 2-D float image."""
    rows = _imresize_matrix(image.shape[0], float(scale))
    cols = _imresize_matrix(image.shape[1], float(scale))
    return rows @ np.asarray(image, np.float64) @ cols.T


# --------------------------------------------------------------------------- features
@functools.lru_cache(maxsize=1)
def _shape_table() -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's ``gam = 0.2:0.001:10`` and ``r_gam = gamma(2/gam)^2 / (gamma(1/gam)
    gamma(3/gam))``."""
    gam = 0.2 + 0.001 * np.arange(9801)
    r_gam = special.gamma(2 / gam) ** 2 / (special.gamma(1 / gam) * special.gamma(3 / gam))
    return gam, r_gam


def _aggd(values: np.ndarray) -> tuple[float, float, float]:
    """``estimateaggdparam.m``: (shape alpha, left scale, right scale) by moment matching
    on the grid of shapes. Without negative (or positive) values a scale is NaN."""
    gam, r_gam = _shape_table()
    with np.errstate(invalid="ignore", divide="ignore"):
        left_std = np.sqrt(np.mean(values[values < 0] ** 2)) if np.any(values < 0) else np.nan
        right_std = np.sqrt(np.mean(values[values > 0] ** 2)) if np.any(values > 0) else np.nan
        gammahat = left_std / right_std
        rhat = np.mean(np.abs(values)) ** 2 / np.mean(values**2)
        rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / (gammahat**2 + 1) ** 2
        # min() of MATLAB and argmin both take the first of equal values; an all-NaN
        # difference (NaN rhatnorm) gives position 1 in MATLAB, 0 here: the same.
        position = int(np.argmin((r_gam - rhatnorm) ** 2)) if np.isfinite(rhatnorm) else 0
    alpha = gam[position]
    factor = math.sqrt(special.gamma(1 / alpha) / special.gamma(3 / alpha))
    return float(alpha), float(left_std * factor), float(right_std * factor)


def _block_features(block: np.ndarray) -> list[float]:
    """``computefeature.m``: 18 features of one block of MSCN coefficients."""
    alpha, left, right = _aggd(block.ravel())
    features = [alpha, (left + right) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        pair = block * np.roll(block, shift, axis=(0, 1))  # MATLAB's circshift
        alpha, left, right = _aggd(pair.ravel())
        mean = (right - left) * special.gamma(2 / alpha) / special.gamma(1 / alpha)
        features += [alpha, mean, left, right]
    return features


def _mscn(image: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = ndimage.correlate(image, window, mode="nearest")
    sigma = np.sqrt(np.abs(ndimage.correlate(image * image, window, mode="nearest") - mu * mu))
    return (image - mu) / (sigma + 1), sigma


def niqe_features(gray: np.ndarray, window: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per-block features of a gray image (0..255), as ``computequality.m`` builds them.

    Returns:
      (blocks, 36) features (scale 1, then scale 2) and (blocks,) sharpness (mean sigma of
      each block at scale 1), blocks in MATLAB's column-major order (down each column of
      blocks first).
    """
    window = gaussian_window() if window is None else np.asarray(window, np.float64)
    gray = np.asarray(gray, np.float64)
    rows, cols = gray.shape[0] // BLOCK, gray.shape[1] // BLOCK
    if rows == 0 or cols == 0:
        raise ValueError(f"NIQE needs an image of at least {BLOCK}x{BLOCK}, got {gray.shape}")
    image = gray[: rows * BLOCK, : cols * BLOCK]
    per_scale, sharpness = [], None
    for scale in (1, 2):
        mscn, sigma = _mscn(image, window)
        size = BLOCK // scale
        per_scale.append([
            _block_features(mscn[r * size : (r + 1) * size, c * size : (c + 1) * size])
            for c in range(cols) for r in range(rows)
        ])  # fmt: skip
        if scale == 1:
            sharpness = np.array([
                sigma[r * size : (r + 1) * size, c * size : (c + 1) * size].mean()
                for c in range(cols) for r in range(rows)
            ])  # fmt: skip
            image = imresize(image, 0.5)
    return np.concatenate([np.asarray(f, np.float64) for f in per_scale], axis=1), sharpness


def _gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's ``nanmean`` and ``nancov`` (rows with a NaN dropped, N - 1 normalisation)."""
    with np.errstate(invalid="ignore"):
        mu = np.nanmean(features, axis=0)
    complete = features[~np.isnan(features).any(axis=1)]
    cov = np.cov(complete, rowvar=False) if len(complete) > 1 else np.full((36, 36), np.nan)
    return mu, cov


def niqe_of_gray(gray: np.ndarray, params: NIQEParams) -> float:
    """NIQE of one (H, W) gray image (0..255, at least 96x96)."""
    features, _ = niqe_features(gray, params.window)
    if len(features) < 2:
        # One block has no covariance (MATLAB's cov of a single row is the variance of its
        # 36 numbers, BasicSR's NaN): NIQE is not defined.
        raise ValueError(f"NIQE needs at least two 96x96 blocks, a {gray.shape[1]}x"
                         f"{gray.shape[0]} image has one")  # fmt: skip
    mu, cov = _gaussian_fit(features)
    diff = np.asarray(params.mu, np.float64).reshape(-1) - mu
    inverse = np.linalg.pinv((np.asarray(params.cov, np.float64) + cov) / 2)
    return float(np.sqrt(diff @ inverse @ diff))


def niqe(images: Any, params: NIQEParams, gray: str = "rgb2gray") -> np.ndarray:
    """NIQE of each image (lower is better).

    Args:
      images: (N, H, W, 3) in [-1, 1], or a list of (H, W, 3) images of any sizes (at least
        two 96x96 blocks, e.g. 96x192; only whole blocks, from the top left, are scored).
      params: the pristine model (:func:`load_niqe_params`, :func:`fit_niqe_params`).
      gray: "rgb2gray" (the MATLAB code's, default) or "y" (BasicSR's); see the module
        docstring.

    Returns:
      (N,) float64.
    """
    if isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[-1] in (1, 3):
        images = images[None]
    return np.array([niqe_of_gray(to_gray(im, gray), params) for im in images], np.float64)


# --------------------------------------------------------------------------- models
def load_niqe_params(path: str | os.PathLike) -> NIQEParams:
    """The pristine model from LIVE's ``modelparameters.mat`` or BasicSR's
    ``niqe_pris_params.npz`` (by extension); errors name the file and the missing key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIQE model {path} does not exist")
    if path.suffix == ".mat":
        from scipy.io import loadmat

        data, keys = loadmat(path), ("mu_prisparam", "cov_prisparam")
    elif path.suffix == ".npz":
        data, keys = dict(np.load(path)), ("mu_pris_param", "cov_pris_param")
    else:
        raise ValueError(f"NIQE model {path}: expected a .mat or .npz file")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"NIQE model {path} lacks {missing} (has {sorted(data)})")
    mu = np.asarray(data[keys[0]], np.float64).reshape(-1)
    cov = np.asarray(data[keys[1]], np.float64)
    if mu.shape != (36,) or cov.shape != (36, 36):
        raise ValueError(f"NIQE model {path}: {keys[0]} has shape {mu.shape} and {keys[1]} "
                         f"{cov.shape}, expected (36,) and (36, 36)")  # fmt: skip
    window = np.asarray(data.get("gaussian_window", gaussian_window()), np.float64)
    return NIQEParams(mu, cov, window)


def save_niqe_params(params: NIQEParams, path: str | os.PathLike) -> Path:
    """Write a pristine model as BasicSR's ``niqe_pris_params.npz`` lays it out (so
    :func:`load_niqe_params` and BasicSR both read it)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: a NIQE model is saved as .npz")
    np.savez(path, mu_pris_param=np.asarray(params.mu)[None], cov_pris_param=params.cov,
             gaussian_window=params.window)  # fmt: skip
    return path


def fit_niqe_params(
    images: str | os.PathLike | Sequence[np.ndarray],
    sharpness_threshold: float = SHARPNESS_THRESHOLD,
    gray: str = "rgb2gray",
) -> NIQEParams:
    """A pristine model fitted as ``estimatemodelparam(folder, 96, 96, 0, 0, 0.75)``.

    Args:
      images: a folder of pristine image files (every file PIL reads, in sorted order), or
        a list of (H, W, 3) images in [-1, 1].
      sharpness_threshold: keep each image's blocks whose sharpness exceeds this fraction of
        its sharpest block's.
      gray: the gray conversion (as for :func:`niqe`).
    """
    if isinstance(images, str | os.PathLike):
        images = _read_folder(Path(images))
    kept = []
    for image in images:
        features, sharpness = niqe_features(to_gray(image, gray))
        kept.append(features[sharpness > sharpness_threshold * sharpness.max()])
    if not kept:
        raise ValueError("fit_niqe_params needs at least one image")
    mu, cov = _gaussian_fit(np.concatenate(kept))
    return NIQEParams(mu, cov, gaussian_window())


def _read_folder(folder: Path) -> list[np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    if not folder.is_dir():
        raise FileNotFoundError(f"pristine image folder {folder} does not exist")
    images = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("RGB"), np.float64) / 255 * 2 - 1)
        except UnidentifiedImageError:
            continue
    if not images:
        raise ValueError(f"pristine image folder {folder} holds no image PIL can read")
    return images


def locate_model(nets: str | os.PathLike | None) -> Path:
    """The pristine model in a ``--nets`` folder (``modelparameters.mat`` first, else
    ``niqe_pris_params.npz``), or the file itself."""
    if nets is not None:
        path = Path(nets)
        if path.is_file():
            return path
        for weights in (MODEL_MAT, MODEL_NPZ):
            if (path / weights.filename).is_file():
                return path / weights.filename
    where = f"neither is in {nets}" if nets is not None else "no --nets folder was given"
    raise MissingWeightsError(
        f"metric 'niqe' needs its pristine model, {MODEL_MAT.filename} (from {MODEL_MAT.url}) "
        f"or {MODEL_NPZ.filename} (sha256 {MODEL_NPZ.sha256_prefix}..., from {MODEL_NPZ.url}):"
        f" {where}; put one in the --nets folder (or fit one with "
        "dgp_jax.metrics.fit_niqe_params)"
    )


def niqe_evaluator(
    nets: str | os.PathLike | None = None,
    params: NIQEParams | None = None,
    gray: str = "rgb2gray",
) -> Callable[..., dict[str, np.ndarray]]:
    """Registry factory: per-image ``niqe`` of the restored images (no reference needed).
    The model: ``params`` if given, else the file :func:`locate_model` finds in ``nets``."""
    if gray not in GRAY_METHODS:
        raise ValueError(f"gray must be one of {GRAY_METHODS}, got {gray!r}")
    model = params if params is not None else load_niqe_params(locate_model(nets))

    def evaluate(restored: Any, reference: Any = None) -> dict[str, np.ndarray]:
        return {"niqe": niqe(restored, model, gray)}

    return evaluate
