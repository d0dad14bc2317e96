"""ResNet-50 top-1 / top-5 accuracy: the DGP paper's colorization score.

The DGP paper scores colorization by how often an ImageNet classifier still recognises the
restored image: top-1 / top-5 accuracy of torchvision's ResNet-50 (``resnet50-0676ba61.pth``,
``ResNet50_Weights.IMAGENET1K_V1``) against the images' ImageNet labels.

The classifier sees what torchvision's eval transform for those weights
(``ImageClassification(crop_size=224, resize_size=256)``) makes of the image:

1. resize so that the short side is 256 (long side ``int(256 * long / short)``), bilinear
   with antialiasing; an image whose short side is already 256 is not resized;
2. centre crop 224 (offset ``int(round((size - 224) / 2))``, Python's round);
3. [0, 1] floats (uint8 / 255), then ``(x - mean) / std`` with the ImageNet mean and std.

Which resize that is depends on what the transform is given, and the two differ by up to one
grey level:

* ``backend="pil"`` (default): a PIL image, as ImageNet evaluation loads it
  (``ImageFolder`` + PIL, how the published 76.13 % top-1 was measured). The transform then
  calls PIL's own ``Image.resize(..., BILINEAR)`` (8-bit fixed-point convolution, result
  rounded to uint8), which is called here too, so the pixels are PIL's. Images in [-1, 1]
  are first rounded to uint8 (exact for images read from 8-bit files).
* ``backend="tensor"``: a float tensor in [0, 1]. The transform then calls
  ``torch.nn.functional.interpolate(mode="bilinear", antialias=True, align_corners=False)``
  on floats, which is rebuilt here as two resampling matrices (no quantisation).

Preprocessing runs on the host per image (images may differ in size); the network runs
jit-compiled on fixed-size batches sharded over a ('data',) device mesh.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec
from PIL import Image

from dgp_jax import pth
from dgp_jax.batching import pad_to
from dgp_jax.checks import is_int
from dgp_jax.metrics.weights import WeightFile, locate
from dgp_jax.nets import resnet

RESNET50_WEIGHTS = WeightFile(
    filename="resnet50-0676ba61.pth",
    url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
    sha256_prefix="0676ba61",
    metric="resnet50",
)
RESIZE_SIZE = 256
CROP_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKENDS = ("pil", "tensor")

Images = np.ndarray | Sequence[np.ndarray]


# --------------------------------------------------------------------------- eval transform
def resized_size(height: int, width: int, size: int = RESIZE_SIZE) -> tuple[int, int]:
    """(new height, new width) with the short side ``size``, as torchvision's
    ``_compute_resized_output_size`` (the long side truncated)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def center_crop_offsets(height: int, width: int, crop: int = CROP_SIZE) -> tuple[int, int]:
    """(top, left) of torchvision's ``center_crop`` (Python's round: halves go to even)."""
    if height < crop or width < crop:
        raise ValueError(f"a {height}x{width} image is smaller than the {crop}x{crop} crop")
    return int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[-1, 1] -> uint8, rounded (exact for an image read from an 8-bit file)."""
    return np.clip(np.round((np.asarray(image, np.float64) + 1) * 127.5), 0, 255).astype(np.uint8)


def bilinear_antialias_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) resampling matrix of torch's antialiased bilinear interpolation
    (``_upsample_bilinear2d_aa``, align_corners=False): a triangle filter widened by the
    scale when downsampling, each row normalised to sum 1."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    matrix = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((taps - center + 0.5) * invscale))
        total = w.sum()
        matrix[i, lo:hi] = w / total if total != 0 else w
    return matrix


def resize_bilinear_antialias(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) floats -> (height, width, C) as torch's
    ``interpolate(mode="bilinear", antialias=True, align_corners=False)`` (float64)."""
    image = np.asarray(image, np.float64)
    rows = bilinear_antialias_matrix(image.shape[0], height)
    cols = bilinear_antialias_matrix(image.shape[1], width)
    vertical = np.tensordot(rows, image, axes=(1, 0))  # (height, W, C)
    return np.moveaxis(np.tensordot(cols, vertical, axes=(1, 1)), 0, 1)


def _resize_crop_pil(image: np.ndarray) -> np.ndarray:
    pixels = to_uint8(image)
    h, w = pixels.shape[:2]
    new_h, new_w = resized_size(h, w)
    pil = Image.fromarray(pixels, "RGB")
    if (new_h, new_w) != (h, w):
        pil = pil.resize((new_w, new_h), Image.BILINEAR)
    top, left = center_crop_offsets(new_h, new_w)
    cropped = np.asarray(pil.crop((left, top, left + CROP_SIZE, top + CROP_SIZE)))
    return cropped.astype(np.float32) / np.float32(255)


def _resize_crop_tensor(image: np.ndarray) -> np.ndarray:
    unit = (np.asarray(image, np.float64) + 1) / 2
    h, w = unit.shape[:2]
    new_h, new_w = resized_size(h, w)
    if (new_h, new_w) != (h, w):
        unit = resize_bilinear_antialias(unit, new_h, new_w)
    top, left = center_crop_offsets(new_h, new_w)
    return unit[top : top + CROP_SIZE, left : left + CROP_SIZE].astype(np.float32)


def _as_list(images: Images) -> list[np.ndarray]:
    if isinstance(images, np.ndarray | jax.Array):
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must have shape (N, H, W, 3), got {images.shape}")
        return list(images)
    out = [np.asarray(im) for im in images]
    for k, im in enumerate(out):
        if im.ndim != 3 or im.shape[-1] != 3:
            raise ValueError(f"image {k} must have shape (H, W, 3), got {im.shape}")
    return out


def eval_transform(images: Images, backend: str = "pil") -> np.ndarray:
    """torchvision's IMAGENET1K_V1 eval transform, channels last.

    Args:
      images: (N, H, W, 3) in [-1, 1], or a list of (H, W, 3) images of any sizes (short
        side at least 224 after the resize, i.e. any size).
      backend: "pil" (the transform on a PIL image, default) or "tensor" (on a float
        tensor); see the module docstring.

    Returns:
      (N, 224, 224, 3) float32, normalised with the ImageNet mean and std.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    step = _resize_crop_pil if backend == "pil" else _resize_crop_tensor
    batch = np.stack([step(im) for im in _as_list(images)])
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    return (batch - mean) / std


# --------------------------------------------------------------------------- the network
def _mesh(batch: int) -> Mesh:
    """The local devices that divide ``batch`` (no device works on padding)."""
    devices = jax.local_devices()
    count = max(d for d in range(1, min(batch, len(devices)) + 1) if batch % d == 0)
    return Mesh(np.array(devices[:count]), ("data",))


@functools.lru_cache(maxsize=8)
def _sharded_logits(mesh: Mesh) -> Callable[[resnet.Params, jax.Array], jax.Array]:
    data, replicated = PartitionSpec("data"), PartitionSpec()
    return jax.jit(
        jax.shard_map(resnet.resnet50, mesh=mesh, in_specs=(replicated, data), out_specs=data)
    )


class ResNet50:
    """torchvision's ResNet-50 with its eval transform. ``logits(images)`` -> (N, 1000)."""

    def __init__(self, params: resnet.Params, backend: str = "pil", batch_size: int = 64):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.params = params
        self.backend = backend
        self.batch_size = batch_size

    def logits_of_normalized(self, batch: np.ndarray) -> np.ndarray:
        """(N, 224, 224, 3) eval-transformed images -> (N, 1000) float32 logits, in
        fixed-size chunks (the last one padded), so one compilation serves every call."""
        n = len(batch)
        if n == 0:
            return np.zeros((0, resnet.NUM_CLASSES), np.float32)
        chunk = min(self.batch_size, n)
        forward = _sharded_logits(_mesh(chunk))
        out = []
        for start in range(0, n, chunk):
            part = pad_to(batch[start : start + chunk], chunk)
            logits = forward(self.params, jnp.asarray(part, jnp.float32))
            out.append(np.asarray(logits)[: n - start])
        return np.concatenate(out)

    def logits(self, images: Images) -> np.ndarray:
        """(N, H, W, 3) images in [-1, 1] (or a list of any sizes) -> (N, 1000) logits of
        the eval-transformed images."""
        return self.logits_of_normalized(eval_transform(images, self.backend))


def load_resnet50(path: str | os.PathLike, backend: str = "pil", batch_size: int = 64) -> ResNet50:
    """torchvision's ``resnet50-0676ba61.pth`` (or a folder holding it), read without torch.

    A missing file raises :class:`~dgp_jax.metrics.weights.MissingWeightsError` (file, URL,
    sha256 prefix, metric); a missing or mis-shaped key a ``CheckpointError`` naming it.
    """
    file = locate(RESNET50_WEIGHTS, path)
    state = pth.read_state_dict(file)
    params = resnet.params_from_state_dict(state, source=str(file))
    return ResNet50(params, backend=backend, batch_size=batch_size)


# --------------------------------------------------------------------------- accuracy
def topk_correct(logits: Any, labels: Any, k: int) -> np.ndarray:
    """(N,) bool: whether each image's label is among its k highest logits (equal logits
    rank the lower class index first)."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits (N, classes) and labels (N,) needed, got {logits.shape} "
                         f"and {labels.shape}")  # fmt: skip
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if np.any((labels < 0) | (labels >= logits.shape[1])):
        raise ValueError(f"labels must be class indices in [0, {logits.shape[1]})")
    if not is_int(k) or not 1 <= k <= logits.shape[1]:
        # k above the class count would count every image as correct
        raise ValueError(f"k must be an integer in [1, {logits.shape[1]}] (the classes), got {k!r}")
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return np.any(order == labels[:, None], axis=1)


def accuracy(logits: Any, labels: Any) -> dict[str, float]:
    """Top-1 and top-5 accuracy (fractions in [0, 1]) of ``logits`` against ``labels``
    (at least 5 classes)."""
    return {
        "top1": float(np.mean(topk_correct(logits, labels, 1))),
        "top5": float(np.mean(topk_correct(logits, labels, 5))),
    }


def resnet50_evaluator(
    nets: str | os.PathLike | None = None, backend: str = "pil", batch_size: int = 64
) -> Callable[..., dict[str, np.ndarray]]:
    """Registry factory: per image ``resnet50_top1`` / ``resnet50_top5`` (1.0 or 0.0, so
    their mean is the accuracy) of the restored images; needs ``labels`` (ImageNet class
    per image). ``nets``: the folder holding ``resnet50-0676ba61.pth`` (or the file)."""
    model = load_resnet50(nets, backend=backend, batch_size=batch_size)

    def evaluate(restored: Images, reference: Images | None = None, *,
                 labels: Sequence[int] | None = None) -> dict[str, np.ndarray]:  # fmt: skip
        if labels is None or any(label is None for label in labels):
            raise ValueError(
                "metric 'resnet50' needs the ImageNet class of every image (a labels list)"
            )
        logits = model.logits(restored)
        labels = np.asarray(labels, np.int64)
        return {
            "resnet50_top1": topk_correct(logits, labels, 1).astype(np.float64),
            "resnet50_top5": topk_correct(logits, labels, 5).astype(np.float64),
        }

    return evaluate
