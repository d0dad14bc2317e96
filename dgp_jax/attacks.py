"""Adversarial examples for the defense task: FGSM and L-infinity PGD against a classifier.

The DGP paper's adversarial defense restores attacked images (``--task defense``: DGP's
reconstruction) and classifies the results. The reference ships no attack; this module
makes the attacked images, white-box, against torchvision's ResNet-50 seen through its
eval transform, on the images as the solver reads them (after its centre crop and resize,
in [-1, 1]). The defended pipeline is then ``dgp-jax attack`` (``dgp_jax/run/attack.py``)
-> ``dgp-jax restore --task defense`` -> ``dgp-jax evaluate --metrics resnet50``.

``eps`` and ``step_size`` are in [0, 1] pixel units (8/255 is the usual ImageNet budget);
an image in [-1, 1] therefore moves by at most ``2 * eps`` per value here.

* ``fgsm`` (Goodfellow et al. 2015): one step of ``eps`` along the sign of the gradient
  of the cross-entropy.
* ``pgd_linf`` (Madry et al. 2018; without the random start, Kurakin et al.'s iterative
  FGSM / BIM): ``steps`` signed-gradient steps, each projected back onto the eps-ball
  around the image and onto the pixel range.

Both are pure functions of the classifier's params (``logits_fn(params, images)``), jitted
once per classifier, image shape and step count.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dgp_jax.metrics import classification
from dgp_jax.nets import resnet

Array = jax.Array
LogitsFn = Callable[[dict, Array], Array]


@functools.lru_cache(maxsize=16)
def resnet50_on_images(height: int, width: int) -> LogitsFn:
    """``logits(params, images)`` for (N, height, width, 3) images in [-1, 1]: ResNet-50
    after the eval transform on a float tensor (``backend="tensor"``: antialiased bilinear
    resize of the short side to 256, centre crop 224, ImageNet mean/std), written as
    matrix products so that it is differentiable. The same logits as
    ``ResNet50(params, backend="tensor").logits`` (float32 rounding)."""
    new_h, new_w = classification.resized_size(height, width)
    top, left = classification.center_crop_offsets(new_h, new_w)
    crop = classification.CROP_SIZE
    # The transform does not resize an image whose short side is already 256.
    same = (new_h, new_w) == (height, width)
    resize = np.eye if same else classification.bilinear_antialias_matrix
    rows = resize(height, new_h)[top : top + crop].astype(np.float32)
    cols = resize(width, new_w)[left : left + crop].astype(np.float32)
    mean = np.asarray(classification.IMAGENET_MEAN, np.float32)
    std = np.asarray(classification.IMAGENET_STD, np.float32)

    def logits(params: dict, images: Array) -> Array:
        unit = (images.astype(jnp.float32) + 1) / 2
        hp = jax.lax.Precision.HIGHEST
        cropped = jnp.einsum("ih,nhwc,jw->nijc", rows, unit, cols, precision=hp)
        return resnet.resnet50(params, (cropped - mean) / std)

    return logits


def default_step_size(eps: float, steps: int) -> float:
    """Madry et al.'s PGD step: ``2.5 * eps / steps``."""
    return 2.5 * eps / steps


def _cross_entropy(logits_fn: LogitsFn, params: dict, images: Array, labels: Array) -> Array:
    logits = logits_fn(params, images)
    picked = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    # Summed over images: image i's gradient is its own loss's (the images do not interact).
    return jnp.sum(jax.nn.logsumexp(logits, axis=1) - picked)


@functools.partial(jax.jit, static_argnames=("logits_fn", "steps"))
def _pgd(logits_fn, params, images, labels, eps, step_size, start, steps):
    low, high = jnp.maximum(images - 2 * eps, -1.0), jnp.minimum(images + 2 * eps, 1.0)
    gradient = jax.grad(functools.partial(_cross_entropy, logits_fn), argnums=1)

    def step(_, x):
        moved = x + 2 * step_size * jnp.sign(gradient(params, x, labels))
        return jnp.clip(moved, low, high)

    return jax.lax.fori_loop(0, steps, step, jnp.clip(images + start, low, high))


def pgd_linf(
    logits_fn: LogitsFn,
    params: dict,
    images,
    labels,
    *,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    key=None,
) -> np.ndarray:
    """Untargeted L-infinity PGD: ``steps`` steps of ``step_size`` along the sign of the
    cross-entropy's gradient, each projected onto ``|x - images| <= eps`` and [-1, 1].

    Args:
      logits_fn: ``logits(params, images)``, e.g. ``resnet50_on_images(h, w)``.
      images: (N, H, W, 3) in [-1, 1]. labels: (N,) true classes (or the clean
        predictions, for images without labels).
      eps, step_size: in [0, 1] pixel units; step_size defaults to ``2.5 * eps / steps``
        (Madry et al.).
      key: a PRNG key for a uniform random start in the eps-ball (PGD); None starts at the
        image (iterative FGSM / BIM).

    Returns:
      (N, H, W, 3) adversarial images, float32, in [-1, 1].
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, H, W, 3), got {images.shape}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
    if not eps > 0 or steps < 1:
        raise ValueError(f"eps must be positive and steps at least 1, got {eps} and {steps}")
    step_size = default_step_size(eps, steps) if step_size is None else step_size
    if key is None:
        start = np.zeros_like(images)
    else:
        start = jax.random.uniform(key, images.shape, jnp.float32, -2 * eps, 2 * eps)
    out = _pgd(logits_fn, params, jnp.asarray(images), jnp.asarray(labels),
               jnp.float32(eps), jnp.float32(step_size), start, steps)  # fmt: skip
    return np.asarray(out)


def fgsm(logits_fn: LogitsFn, params: dict, images, labels, *, eps: float) -> np.ndarray:
    """The fast gradient sign method: one step of ``eps`` (in [0, 1] pixel units) along
    the sign of the cross-entropy's gradient, clipped to [-1, 1]."""
    return pgd_linf(logits_fn, params, images, labels, eps=eps, steps=1, step_size=eps)
