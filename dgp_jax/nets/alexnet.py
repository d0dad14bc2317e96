"""AlexNet's convolutional trunk, as ``torchvision.models.alexnet().features`` builds it.

Used by LPIPS (its default "alex" trunk), which reads the five relus. Conventions as in
``dgp_jax.nets.vgg``: NHWC activations, OIHW kernels, parameter paths that mirror the
checkpoint keys. Weights: torchvision's ``alexnet-owt-7be5be79.pth``; only ``features.*``
is read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dgp_jax import pth
from dgp_jax.nets.vgg import check_taps_and_images, conv2d, max_pool, tree_from_state

Array = jax.Array

# (index in ``features``, in, out, kernel, stride, padding) of each conv.
CONVS = ((0, 3, 64, 11, 4, 2), (3, 64, 192, 5, 1, 2), (6, 192, 384, 3, 1, 1),
         (8, 384, 256, 3, 1, 1), (10, 256, 256, 3, 1, 1))  # fmt: skip
POOLS = (2, 5, 12)  # MaxPool2d(3, 2) at these indices
TAPS = {"relu1": 1, "relu2": 4, "relu3": 7, "relu4": 9, "relu5": 11}

WEIGHT_FILE = "alexnet-owt-7be5be79.pth"
WEIGHT_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


def state_shapes() -> dict[str, tuple[int, ...]]:
    """The ``features.*`` keys of torchvision's state dict and their shapes."""
    shapes = {}
    for index, c_in, c_out, k, _, _ in CONVS:
        shapes[f"features.{index}.weight"] = (c_out, c_in, k, k)
        shapes[f"features.{index}.bias"] = (c_out,)
    return shapes


def params_from_state_dict(
    state: Mapping[str, np.ndarray], source: str = "state dict", dtype=jnp.float32
) -> dict:
    """The trunk's parameter tree; missing or mis-shaped keys are named with ``source``."""
    return tree_from_state(state, state_shapes(), source, dtype)


def load_params(path: str | os.PathLike, dtype=jnp.float32) -> dict:
    """``params_from_state_dict`` of a ``.pth`` file, read without torch."""
    return params_from_state_dict(pth.read_state_dict(path), source=str(path), dtype=dtype)


def features(params: Mapping, x: Array, taps: Sequence[str]) -> tuple[Array, ...]:
    """The activations at ``taps`` (names of :data:`TAPS`) of (N, H, W, 3) inputs."""
    check_taps_and_images("AlexNet", taps, TAPS, x)
    wanted = {TAPS[t]: t for t in taps}
    convs = {c[0]: c for c in CONVS}
    out = {}
    for index in range(max(wanted) + 1):
        if index in convs:
            _, _, _, _, stride, padding = convs[index]
            layer = params["features"][str(index)]
            x = conv2d(x, layer["weight"], layer["bias"], stride=stride, padding=padding)
        elif index in POOLS:
            x = max_pool(x, 3, 2)
        else:
            x = jax.nn.relu(x)
        if index in wanted:
            out[wanted[index]] = x
    return tuple(out[t] for t in taps)
