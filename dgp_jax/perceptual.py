"""Perceptual feature losses for the DGP solver, in place of the discriminator's features.

``SolverConfig.ftr_type`` picks the feature loss (the reference's flag name):

* ``"Discriminator"`` (default): the L1 distance of BigGAN's discriminator features, the
  paper's method (``dgp_jax.solve.feature_l1``).
* ``"VGG"``: the reference's own ablation (``--ftr_type VGG``: ``models/dgp.py`` with
  ``utils/losses.py PerceptLoss``): torchvision's VGG16 ``features`` up to relu4_2
  (``subsequence(vgg.features, last_layer='20')``), applied to the raw [-1, 1] images with
  no ImageNet normalisation, and ``F.mse_loss`` between the features of G's degraded output
  and of the observation. The loss weight is the stage's ``w_D_loss``; ``stop_ftr`` and the
  start-candidate search use this loss, as in the reference.
* ``"johnson"``: Johnson et al.'s losses (ECCV 2016) as pytorch/examples'
  ``fast_neural_style`` computes them: images mapped to [0, 1] and normalised with the
  ImageNet mean and std; feature reconstruction loss = MSE of relu2_2; style loss =
  ``style_weight`` x the sum over relu1_2, relu2_2, relu3_3, relu4_3 of the MSE between
  Gram matrices ``F Fᵀ / (C H W)``. (``style_weight`` = 0, the default, is the feature
  reconstruction loss alone.)

A feature loss is two pure functions: ``features(params, x)`` -> a list of per-image
arrays (computed once for the observation, every step for G's output) and
``distance(features, targets)`` -> one value per leading row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dgp_jax.config import FTR_TYPES
from dgp_jax.nets import vgg

Array = jax.Array

DGP_VGG_TAP = "relu4_2"
JOHNSON_CONTENT_TAP = "relu2_2"
JOHNSON_STYLE_TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
# float64 here, cast to the images' dtype: torch's ``new_tensor`` of these decimals
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def check_ftr_type(ftr_type: str) -> None:
    if ftr_type not in FTR_TYPES:
        raise ValueError(f"ftr_type must be one of {FTR_TYPES}, got {ftr_type!r}")


def _mean_square(a: Array, b: Array) -> Array:
    return jnp.mean(jnp.square(a - b), axis=tuple(range(1, a.ndim)))


def gram(f: Array) -> Array:
    """(N, H, W, C) -> (N, C, C): F Fᵀ / (C H W), fast_neural_style's ``gram_matrix``."""
    n, h, w, c = f.shape
    flat = f.reshape(n, h * w, c)
    return jnp.einsum("npc,npd->ncd", flat, flat) / (c * h * w)


def imagenet_normalize(x: Array) -> Array:
    """[-1, 1] images -> ImageNet-normalised ones, as fast_neural_style's ``normalize_batch``
    does to 0..255 images (/255, - mean, / std)."""
    mean, std = jnp.asarray(IMAGENET_MEAN, x.dtype), jnp.asarray(IMAGENET_STD, x.dtype)
    return ((x + 1) / 2 - mean) / std


def dgp_vgg_features(params, x: Array) -> list[Array]:
    """The reference ablation's features: relu4_2 of the raw [-1, 1] images."""
    return list(vgg.features(params, x, (DGP_VGG_TAP,)))


def dgp_vgg_distance(features: list[Array], targets: list[Array]) -> Array:
    """``F.mse_loss`` of the relu4_2 features, per leading row."""
    return _mean_square(features[0], targets[0])


def johnson_features(params, x: Array, style: bool) -> list[Array]:
    """[relu2_2] and, with ``style``, the Gram matrices of the four style layers."""
    taps = JOHNSON_STYLE_TAPS if style else (JOHNSON_CONTENT_TAP,)
    feats = vgg.features(params, imagenet_normalize(x), taps)
    content = feats[taps.index(JOHNSON_CONTENT_TAP)]
    return [content] + ([gram(f) for f in feats] if style else [])


def johnson_distance(features: list[Array], targets: list[Array], style_weight: float) -> Array:
    """Feature reconstruction loss + ``style_weight`` x style loss, per leading row."""
    loss = _mean_square(features[0], targets[0])
    if style_weight:
        style = sum(_mean_square(f, t) for f, t in zip(features[1:], targets[1:], strict=True))
        loss = loss + style_weight * style
    return loss


@dataclasses.dataclass(frozen=True)
class FeatureLoss:
    """A VGG feature loss: ``features(params, x)`` and ``distance(features, targets)``."""

    features: Callable[..., list[Array]]
    distance: Callable[[list[Array], list[Array]], Array]


def vgg_feature_loss(ftr_type: str, style_weight: float = 0.0) -> FeatureLoss:
    """The feature loss of a VGG ``ftr_type`` ("VGG" or "johnson")."""
    check_ftr_type(ftr_type)
    if ftr_type == "VGG":
        return FeatureLoss(dgp_vgg_features, dgp_vgg_distance)
    if ftr_type == "johnson":
        style = bool(style_weight)
        return FeatureLoss(
            lambda params, x: johnson_features(params, x, style),
            lambda f, t: johnson_distance(f, t, style_weight),
        )
    raise ValueError("the discriminator feature loss lives in dgp_jax.solve")


def deepest_tap(ftr_type: str, style_weight: float = 0.0) -> str:
    """The deepest VGG16 relu a loss reads: the weights needed go up to there."""
    if ftr_type == "VGG":
        return DGP_VGG_TAP
    return JOHNSON_STYLE_TAPS[-1] if style_weight else JOHNSON_CONTENT_TAP
