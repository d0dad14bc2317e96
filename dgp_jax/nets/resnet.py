"""torchvision's ResNet-50 (``torchvision.models.resnet50``) as a pure function of its weights.

The parameters are a flat dict keyed exactly as torchvision's state dict
(``layer1.0.conv2.weight``, ``layer3.2.bn1.running_var``, ``fc.bias``), so the converter is
the key table :func:`resnet50_shapes` and nothing else. Conv kernels stay OIHW as in the
``.pth`` file and activations are NHWC (``lax.conv_general_dilated`` takes both layouts).

Architecture, as torchvision builds it (ResNet "v1.5"): a 7x7/2 stem conv, BN, ReLU, a 3x3/2
max pool with padding 1; four stages of (3, 4, 6, 3) bottlenecks of widths 64..512 with
expansion 4, the stride on the 3x3 conv, and a 1x1 conv + BN projection ("downsample") on the
first block of each stage; global average pool; a 1000-way linear layer. Every conv has no
bias; batch norm is in evaluation mode (running statistics, eps 1e-5).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dgp_jax.pth import CheckpointError

Array = jax.Array
Params = dict[str, Array]

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride)
EXPANSION = 4
NUM_CLASSES = 1000
BN_EPS = 1e-5
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")
# Present in every torchvision checkpoint, read by nothing in evaluation mode.
_IGNORED_SUFFIX = ".num_batches_tracked"


def _bn_shapes(name: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.{field}": (channels,) for field in _BN_FIELDS}


def resnet50_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of torchvision's resnet50 state dict (``num_batches_tracked`` aside) and its
    shape, in the state dict's order."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}
    shapes.update(_bn_shapes("bn1", 64))
    in_channels = 64
    for stage, (width, blocks, _) in enumerate(STAGES, start=1):
        out_channels = width * EXPANSION
        for block in range(blocks):
            p = f"layer{stage}.{block}"
            shapes[f"{p}.conv1.weight"] = (width, in_channels, 1, 1)
            shapes.update(_bn_shapes(f"{p}.bn1", width))
            shapes[f"{p}.conv2.weight"] = (width, width, 3, 3)
            shapes.update(_bn_shapes(f"{p}.bn2", width))
            shapes[f"{p}.conv3.weight"] = (out_channels, width, 1, 1)
            shapes.update(_bn_shapes(f"{p}.bn3", out_channels))
            if block == 0:
                shapes[f"{p}.downsample.0.weight"] = (out_channels, in_channels, 1, 1)
                shapes.update(_bn_shapes(f"{p}.downsample.1", out_channels))
            in_channels = out_channels
    shapes["fc.weight"] = (NUM_CLASSES, in_channels)
    shapes["fc.bias"] = (NUM_CLASSES,)
    return shapes


def params_from_state_dict(
    state: Mapping[str, np.ndarray], *, source: str = "state dict", dtype=jnp.float32
) -> Params:
    """The parameters :func:`resnet50` takes, from a torchvision resnet50 state dict.

    Every key of :func:`resnet50_shapes` must be present with its shape and no other key may
    be (``*.num_batches_tracked`` is ignored); the error names each offending key, and
    ``source`` (the file) says where it came from.
    """
    table = resnet50_shapes()
    keys = [k for k in state if not k.endswith(_IGNORED_SUFFIX)]
    problems = []
    missing = [k for k in table if k not in state]
    if missing:
        problems.append(f"missing keys {missing}")
    extra = [k for k in keys if k not in table]
    if extra:
        problems.append(f"unexpected keys {extra}")
    for key in keys:
        if key in table and tuple(np.shape(state[key])) != table[key]:
            problems.append(
                f"key {key!r} has shape {tuple(np.shape(state[key]))} in the file, "
                f"ResNet-50 expects {table[key]}"
            )
    if problems:
        raise CheckpointError(f"{source} is not a torchvision resnet50 state dict: "
                              + "; ".join(problems))  # fmt: skip
    return {k: jnp.asarray(np.asarray(state[k]), dtype=dtype) for k in table}


def _conv(x: Array, weight: Array, stride: int = 1) -> Array:
    pad = weight.shape[-1] // 2
    return lax.conv_general_dilated(
        x,
        weight.astype(x.dtype),
        window_strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "OIHW", "NHWC"),
        precision=lax.Precision.HIGHEST,
    )


def _bn(x: Array, p: Params, name: str) -> Array:
    scale = p[f"{name}.weight"] * lax.rsqrt(p[f"{name}.running_var"] + BN_EPS)
    shift = p[f"{name}.bias"] - p[f"{name}.running_mean"] * scale
    return x * scale.astype(x.dtype) + shift.astype(x.dtype)


def _max_pool(x: Array) -> Array:
    """3x3, stride 2, padding 1 (padded positions never win, as torch's -inf padding)."""
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )


def _bottleneck(x: Array, p: Params, prefix: str, stride: int) -> Array:
    out = jax.nn.relu(_bn(_conv(x, p[f"{prefix}.conv1.weight"]), p, f"{prefix}.bn1"))
    out = jax.nn.relu(_bn(_conv(out, p[f"{prefix}.conv2.weight"], stride), p, f"{prefix}.bn2"))
    out = _bn(_conv(out, p[f"{prefix}.conv3.weight"]), p, f"{prefix}.bn3")
    if f"{prefix}.downsample.0.weight" in p:
        x = _bn(_conv(x, p[f"{prefix}.downsample.0.weight"], stride), p, f"{prefix}.downsample.1")
    return jax.nn.relu(out + x)


def features(params: Params, x: Array) -> Array:
    """(N, H, W, 3) normalised images -> (N, 2048) globally pooled features."""
    x = _conv(x, params["conv1.weight"], stride=2)
    x = _max_pool(jax.nn.relu(_bn(x, params, "bn1")))
    for stage, (_, blocks, stride) in enumerate(STAGES, start=1):
        for block in range(blocks):
            x = _bottleneck(x, params, f"layer{stage}.{block}", stride if block == 0 else 1)
    return jnp.mean(x, axis=(1, 2))


def resnet50(params: Params, x: Array) -> Array:
    """(N, H, W, 3) images, already through the eval transform (ImageNet mean/std
    normalised) -> (N, 1000) logits."""
    pooled = features(params, x)
    weight = params["fc.weight"].astype(pooled.dtype)
    return lax.dot(pooled, weight.T, precision=lax.Precision.HIGHEST) + params["fc.bias"]
