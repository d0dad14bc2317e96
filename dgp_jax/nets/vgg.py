"""VGG16's convolutional trunk, as ``torchvision.models.vgg16().features`` builds it.

One network for every VGG feature consumer: LPIPS (``dgp_jax.metrics.lpips``, the five
``relu*_?`` taps the lpips package reads), DGP's own perceptual ablation (relu4_2, on raw
[-1, 1] images) and Johnson et al.'s losses (relu1_2 ... relu4_3), see
``dgp_jax.perceptual``.

Conventions as in ``dgp_jax.nets.layers``: activations NHWC, kernels kept OIHW as in the
``.pth`` file, and the parameter tree mirrors the checkpoint keys (``features.0.weight`` is
``params["features"]["0"]["weight"]``), so the converter is a key table. The trunk runs only
as deep as the deepest tap asked for. Inputs are whatever the caller's recipe feeds
torchvision's network (no normalisation is applied here).

Weights: torchvision's ``vgg16-397923af.pth`` (IMAGENET1K_V1); only ``features.*`` is read,
the classifier is ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dgp_jax import pth

Array = jax.Array

# torchvision's configuration "D": channels per conv, "M" a 2x2 max pool.
_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
           512, 512, 512, "M")  # fmt: skip


def _layers() -> tuple[tuple, ...]:
    """(kind, index in ``features``, in_channels, out_channels) for every module, plus the
    relu names (block_conv, 1-based) at their indices."""
    layers, taps = [], {}
    index, channels, block, conv = 0, 3, 1, 0
    for item in _CONFIG:
        if item == "M":
            layers.append(("pool", index, channels, channels))
            index += 1
            block, conv = block + 1, 0
            continue
        conv += 1
        layers.append(("conv", index, channels, item))
        layers.append(("relu", index + 1, item, item))
        taps[f"relu{block}_{conv}"] = index + 1
        index += 2
        channels = item
    return tuple(layers), taps


LAYERS, TAPS = _layers()
"""LAYERS: the 31 modules of ``features``; TAPS: relu name -> its index in ``features``
(relu1_2 = 3, relu2_2 = 8, relu3_3 = 15, relu4_2 = 20, relu4_3 = 22, relu5_3 = 29)."""

WEIGHT_FILE = "vgg16-397923af.pth"
WEIGHT_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"


def state_shapes(depth: int = len(LAYERS)) -> dict[str, tuple[int, ...]]:
    """The ``features.*`` keys of torchvision's state dict and their shapes, for the first
    ``depth`` modules."""
    shapes = {}
    for kind, index, c_in, c_out in LAYERS[:depth]:
        if kind == "conv":
            shapes[f"features.{index}.weight"] = (c_out, c_in, 3, 3)
            shapes[f"features.{index}.bias"] = (c_out,)
    return shapes


def params_from_state_dict(
    state: Mapping[str, np.ndarray], source: str = "state dict", dtype=jnp.float32,
    depth: int = len(LAYERS),
) -> dict:  # fmt: skip
    """The trunk's parameter tree from torchvision's VGG16 state dict.

    Every ``features.*`` key of the first ``depth`` modules must be present with its shape;
    the error names each missing or mis-shaped key and ``source``. Other keys (deeper
    layers, the classifier) are ignored.
    """
    return tree_from_state(state, state_shapes(depth), source, dtype)


def tree_from_state(state, shapes: Mapping[str, tuple], source: str, dtype) -> dict:
    """The nested tree of the ``shapes`` keys of ``state`` (split at "."), after checking
    that each is present with its shape; the error names ``source`` and every bad key."""
    missing = [k for k in shapes if k not in state]
    wrong = [
        f"{k}: {tuple(np.shape(state[k]))} (expected {shapes[k]})"
        for k in shapes
        if k in state and tuple(np.shape(state[k])) != shapes[k]
    ]
    if missing or wrong:
        problems = ([f"missing keys {missing}"] if missing else []) + (
            [f"mis-shaped keys {wrong}"] if wrong else []
        )
        raise pth.CheckpointError(f"{source} does not fit the network: " + "; ".join(problems))
    tree: dict = {}
    for key in shapes:
        *path, leaf = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = jnp.asarray(np.asarray(state[key], np.float32), dtype)
    return tree


def load_params(path: str | os.PathLike, dtype=jnp.float32) -> dict:
    """``params_from_state_dict`` of a ``.pth`` file, read without torch (``dgp_jax.pth``)."""
    return params_from_state_dict(pth.read_state_dict(path), source=str(path), dtype=dtype)


def conv2d(x: Array, weight: Array, bias: Array, stride: int = 1, padding: int = 1) -> Array:
    """torch's Conv2d on NHWC activations with an OIHW kernel."""
    y = lax.conv_general_dilated(
        x,
        weight.astype(x.dtype),
        (stride, stride),
        ((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "OIHW", "NHWC"),
    )
    return y + bias.astype(x.dtype)


def max_pool(x: Array, size: int, stride: int) -> Array:
    """torch's MaxPool2d(size, stride) (no padding, floor mode) on NHWC."""
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, size, size, 1), (1, stride, stride, 1), "VALID"
    )


def check_taps_and_images(net: str, taps: Sequence[str], known: Mapping, x: Array) -> None:
    """A trunk's input checks: every tap known, images (N, H, W, 3)."""
    unknown = [t for t in taps if t not in known]
    if unknown:
        raise ValueError(f"unknown {net} taps {unknown}; known: {list(known)}")
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{net} takes (N, H, W, 3) images, got shape {x.shape}")


def features(params: Mapping, x: Array, taps: Sequence[str]) -> tuple[Array, ...]:
    """The activations at ``taps`` (names of :data:`TAPS`), in the order given.

    Args:
      params: the tree of :func:`params_from_state_dict` (any prefix of the trunk deep
        enough for the taps).
      x: (N, H, W, 3), already in the input space the caller's recipe uses.
    """
    check_taps_and_images("VGG16", taps, TAPS, x)
    wanted = {TAPS[t]: t for t in taps}
    out = {}
    for kind, index, _, _ in LAYERS[: max(wanted) + 1]:
        if kind == "conv":
            layer = params["features"][str(index)]
            x = conv2d(x, layer["weight"], layer["bias"])
        elif kind == "relu":
            x = jax.nn.relu(x)
        else:
            x = max_pool(x, 2, 2)
        if index in wanted:
            out[wanted[index]] = x
    return tuple(out[t] for t in taps)
