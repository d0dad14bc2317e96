"""InceptionV3 as pytorch-fid builds it for FID, with torch-fidelity's 1008-class logits.

This is the network behind FID, KID, IS and P-IDS/U-IDS: the 2015-12-05 TensorFlow
Inception graph that the original TTUR FID code used, in the form pytorch-fid
(``pytorch_fid.inception.fid_inception_v3``) and torch-fidelity
(``FeatureExtractorInceptionV3``) port it. It differs from torchvision's Inception3:

* the average pools inside the A, C and first E blocks do not count the zero padding
  (``count_include_pad=False``, TensorFlow's behaviour);
* the last E block (``Mixed_7c``) pools with a 3x3 max pool instead of an average pool;
* the classifier has 1008 outputs (TensorFlow's label map), and no auxiliary head.

Weights: ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's release; torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth`` has the same keys). Parameters are a flat dict
keyed exactly by the checkpoint keys (``Mixed_6b.branch7x7_2.conv.weight``), conv kernels
kept OIHW, so the converter is the key table :data:`LAYERS` and nothing else.
``num_batches_tracked`` entries are accepted and dropped; any other unexpected key, a
missing key or a wrong shape is an error that names it.

Preprocessing (``preprocess=``), each as its reference does it, from NHWC images in [-1, 1]:

``"pytorch-fid"`` (default)
    ``x01 = (x + 1) / 2``, ``F.interpolate(size=(299, 299), mode="bilinear",
    align_corners=False)`` (no antialias, also when shrinking), then ``2 * x01 - 1``.
``"torch-fidelity"``
    the uint8 image ``round(127.5 (x + 1))`` (exactly the bytes an image loaded as
    ``u / 127.5 - 1`` came from), torch-fidelity's TensorFlow-1.x bilinear resize
    (``interpolate_bilinear_2d_like_tensorflow1x``, ``align_corners=False``, "slow"), then
    ``(x - 128) / 128``.

Outputs: ``pool3`` (N, 2048), the global average pool that FID/KID/IDS use;
``logits_unbiased`` = ``pool3 @ fc.weight.T`` (what torch-fidelity's IS uses) and
``logits`` = ``logits_unbiased + fc.bias`` (N, 1008).

Extraction (:class:`InceptionV3`) is jit-compiled, runs in fixed-size chunks (padded, so
one compilation serves a whole dataset) and shards each chunk over a ('data',) mesh with
``shard_map``, the weights replicated. Preprocessing is compiled separately from the
network, so a new input size recompiles only the resize.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dgp_jax import pth
from dgp_jax.checks import unit_range_images

Array = jax.Array

INPUT_SIZE = 299
NUM_FEATURES = 2048
NUM_CLASSES = 1008
BN_EPS = 1e-3
PREPROCESSING = ("pytorch-fid", "torch-fidelity")
OUTPUTS = ("pool3", "logits", "logits_unbiased")


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """One BasicConv2d: conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)


def _pad(k: tuple[int, int]) -> tuple[int, int]:
    return (k[0] // 2, k[1] // 2)


def _a_block(cin: int, pool_features: int) -> dict[str, ConvSpec]:
    return {
        "branch1x1": ConvSpec(cin, 64, (1, 1)),
        "branch5x5_1": ConvSpec(cin, 48, (1, 1)),
        "branch5x5_2": ConvSpec(48, 64, (5, 5), padding=(2, 2)),
        "branch3x3dbl_1": ConvSpec(cin, 64, (1, 1)),
        "branch3x3dbl_2": ConvSpec(64, 96, (3, 3), padding=(1, 1)),
        "branch3x3dbl_3": ConvSpec(96, 96, (3, 3), padding=(1, 1)),
        "branch_pool": ConvSpec(cin, pool_features, (1, 1)),
    }


def _b_block(cin: int) -> dict[str, ConvSpec]:
    return {
        "branch3x3": ConvSpec(cin, 384, (3, 3), stride=2),
        "branch3x3dbl_1": ConvSpec(cin, 64, (1, 1)),
        "branch3x3dbl_2": ConvSpec(64, 96, (3, 3), padding=(1, 1)),
        "branch3x3dbl_3": ConvSpec(96, 96, (3, 3), stride=2),
    }


def _c_block(cin: int, c7: int) -> dict[str, ConvSpec]:
    row, col = (1, 7), (7, 1)
    return {
        "branch1x1": ConvSpec(cin, 192, (1, 1)),
        "branch7x7_1": ConvSpec(cin, c7, (1, 1)),
        "branch7x7_2": ConvSpec(c7, c7, row, padding=_pad(row)),
        "branch7x7_3": ConvSpec(c7, 192, col, padding=_pad(col)),
        "branch7x7dbl_1": ConvSpec(cin, c7, (1, 1)),
        "branch7x7dbl_2": ConvSpec(c7, c7, col, padding=_pad(col)),
        "branch7x7dbl_3": ConvSpec(c7, c7, row, padding=_pad(row)),
        "branch7x7dbl_4": ConvSpec(c7, c7, col, padding=_pad(col)),
        "branch7x7dbl_5": ConvSpec(c7, 192, row, padding=_pad(row)),
        "branch_pool": ConvSpec(cin, 192, (1, 1)),
    }


def _d_block(cin: int) -> dict[str, ConvSpec]:
    return {
        "branch3x3_1": ConvSpec(cin, 192, (1, 1)),
        "branch3x3_2": ConvSpec(192, 320, (3, 3), stride=2),
        "branch7x7x3_1": ConvSpec(cin, 192, (1, 1)),
        "branch7x7x3_2": ConvSpec(192, 192, (1, 7), padding=(0, 3)),
        "branch7x7x3_3": ConvSpec(192, 192, (7, 1), padding=(3, 0)),
        "branch7x7x3_4": ConvSpec(192, 192, (3, 3), stride=2),
    }


def _e_block(cin: int) -> dict[str, ConvSpec]:
    return {
        "branch1x1": ConvSpec(cin, 320, (1, 1)),
        "branch3x3_1": ConvSpec(cin, 384, (1, 1)),
        "branch3x3_2a": ConvSpec(384, 384, (1, 3), padding=(0, 1)),
        "branch3x3_2b": ConvSpec(384, 384, (3, 1), padding=(1, 0)),
        "branch3x3dbl_1": ConvSpec(cin, 448, (1, 1)),
        "branch3x3dbl_2": ConvSpec(448, 384, (3, 3), padding=(1, 1)),
        "branch3x3dbl_3a": ConvSpec(384, 384, (1, 3), padding=(0, 1)),
        "branch3x3dbl_3b": ConvSpec(384, 384, (3, 1), padding=(1, 0)),
        "branch_pool": ConvSpec(cin, 192, (1, 1)),
    }


# Module name -> its BasicConv2d layers, in the checkpoint's order.
BLOCKS: dict[str, dict[str, ConvSpec]] = {
    "Conv2d_1a_3x3": {"": ConvSpec(3, 32, (3, 3), stride=2)},
    "Conv2d_2a_3x3": {"": ConvSpec(32, 32, (3, 3))},
    "Conv2d_2b_3x3": {"": ConvSpec(32, 64, (3, 3), padding=(1, 1))},
    "Conv2d_3b_1x1": {"": ConvSpec(64, 80, (1, 1))},
    "Conv2d_4a_3x3": {"": ConvSpec(80, 192, (3, 3))},
    "Mixed_5b": _a_block(192, 32),
    "Mixed_5c": _a_block(256, 64),
    "Mixed_5d": _a_block(288, 64),
    "Mixed_6a": _b_block(288),
    "Mixed_6b": _c_block(768, 128),
    "Mixed_6c": _c_block(768, 160),
    "Mixed_6d": _c_block(768, 160),
    "Mixed_6e": _c_block(768, 192),
    "Mixed_7a": _d_block(768),
    "Mixed_7b": _e_block(1280),
    "Mixed_7c": _e_block(2048),
}

# Checkpoint prefix of every BasicConv2d ("Mixed_5b.branch1x1", "Conv2d_1a_3x3").
LAYERS: dict[str, ConvSpec] = {
    f"{block}.{name}" if name else block: spec
    for block, layers in BLOCKS.items()
    for name, spec in layers.items()
}


def state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """Every checkpoint key this network reads, with its shape, in checkpoint order."""
    shapes: dict[str, tuple[int, ...]] = {}
    for prefix, spec in LAYERS.items():
        shapes[f"{prefix}.conv.weight"] = (spec.out_channels, spec.in_channels, *spec.kernel)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.bn.{stat}"] = (spec.out_channels,)
    shapes["fc.weight"] = (NUM_CLASSES, NUM_FEATURES)
    shapes["fc.bias"] = (NUM_CLASSES,)
    return shapes


def params_from_state_dict(
    state: dict[str, np.ndarray], *, dtype=jnp.float32, source: str = "state dict"
) -> dict[str, Array]:
    """The checkpoint's tensors as this network's parameters (a flat dict, same keys).

    Raises ValueError naming ``source`` and the key for a missing key, a wrong shape or an
    unexpected key (``num_batches_tracked`` is dropped silently: torch writes it or not
    depending on its version, and evaluation never reads it).
    """
    shapes = state_dict_shapes()
    missing = [key for key in shapes if key not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(
            f"{source}: missing key {missing[0]!r}{more}; is this the FID Inception "
            "(pt_inception-2015-12-05-6726825d.pth)?"
        )
    unexpected = [
        key for key in state if key not in shapes and not key.endswith(".num_batches_tracked")
    ]
    if unexpected:
        raise ValueError(
            f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} in all); the FID "
            "Inception has no such parameter (torchvision's Inception3 has AuxLogits and a "
            "1000-class fc; the FID one has neither)"
        )
    params = {}
    for key, shape in shapes.items():
        value = np.asarray(state[key])
        if value.shape != shape:
            raise ValueError(f"{source}: {key!r} has shape {value.shape}, expected {shape}")
        params[key] = jnp.asarray(value, dtype=dtype)
    return params


def random_state_dict(seed: int, dtype=np.float64) -> dict[str, np.ndarray]:
    """Random weights and random BN statistics, drawn from ``seed`` in key-table order.

    For tests and benchmarks, where the real file cannot be downloaded. Scaled so that
    activations stay O(1) through the network: He-normal kernels, BN scale in [0.8, 1.2],
    running variance in [0.5, 1.5], small shifts and means.
    """
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in state_dict_shapes().items():
        if key.endswith("conv.weight") or key == "fc.weight":
            fan_in = int(np.prod(shape[1:]))
            gain = 2.0 if key.endswith("conv.weight") else 1.0
            value = rng.standard_normal(shape) * np.sqrt(gain / fan_in)
        elif key.endswith("bn.weight"):
            value = rng.uniform(0.8, 1.2, shape)
        elif key.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        else:  # bn.bias, bn.running_mean, fc.bias
            value = 0.1 * rng.standard_normal(shape)
        state[key] = value.astype(dtype)
    return state


def read_params(path: str | os.PathLike, *, dtype=jnp.float32) -> dict[str, Array]:
    """``pt_inception-2015-12-05-6726825d.pth`` (read with :mod:`dgp_jax.pth`, no torch)."""
    return params_from_state_dict(pth.read_state_dict(path), dtype=dtype, source=os.fspath(path))


# --------------------------------------------------------------------------------------------
# The network (NHWC activations, OIHW kernels as stored)

_HIGHEST = lax.Precision.HIGHEST


def _basic_conv(params: dict, prefix: str, x: Array) -> Array:
    spec = LAYERS[prefix]
    y = lax.conv_general_dilated(
        x,
        params[f"{prefix}.conv.weight"],
        window_strides=(spec.stride, spec.stride),
        padding=[(spec.padding[0],) * 2, (spec.padding[1],) * 2],
        dimension_numbers=("NHWC", "OIHW", "NHWC"),
        precision=_HIGHEST,
    )
    scale = params[f"{prefix}.bn.weight"] * lax.rsqrt(params[f"{prefix}.bn.running_var"] + BN_EPS)
    y = (y - params[f"{prefix}.bn.running_mean"]) * scale + params[f"{prefix}.bn.bias"]
    return jax.nn.relu(y)


def _max_pool(x: Array, size: int, stride: int, padding: int = 0) -> Array:
    pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return lax.reduce_window(
        x, jnp.array(-jnp.inf, x.dtype), lax.max, (1, size, size, 1), (1, stride, stride, 1), pads
    )


def _avg_pool_3x3_valid_only(x: Array) -> Array:
    """3x3, stride 1, padding 1, averaging over the in-image pixels only (TensorFlow's pool;
    torch's ``count_include_pad=False``)."""
    pads = ((0, 0), (1, 1), (1, 1), (0, 0))
    window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
    zero = jnp.array(0, x.dtype)
    total = lax.reduce_window(x, zero, lax.add, window, strides, pads)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = lax.reduce_window(ones, zero, lax.add, window, strides, pads)
    return total / count


def _mixed_a(params, name, x):
    def conv(layer, h):
        return _basic_conv(params, f"{name}.{layer}", h)

    b1 = conv("branch1x1", x)
    b5 = conv("branch5x5_2", conv("branch5x5_1", x))
    b3 = conv("branch3x3dbl_3", conv("branch3x3dbl_2", conv("branch3x3dbl_1", x)))
    bp = conv("branch_pool", _avg_pool_3x3_valid_only(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


def _mixed_b(params, name, x):
    def conv(layer, h):
        return _basic_conv(params, f"{name}.{layer}", h)

    b3 = conv("branch3x3", x)
    bd = conv("branch3x3dbl_3", conv("branch3x3dbl_2", conv("branch3x3dbl_1", x)))
    return jnp.concatenate([b3, bd, _max_pool(x, 3, 2)], axis=-1)


def _mixed_c(params, name, x):
    def conv(layer, h):
        return _basic_conv(params, f"{name}.{layer}", h)

    b1 = conv("branch1x1", x)
    b7 = x
    for i in (1, 2, 3):
        b7 = conv(f"branch7x7_{i}", b7)
    bd = x
    for i in (1, 2, 3, 4, 5):
        bd = conv(f"branch7x7dbl_{i}", bd)
    bp = conv("branch_pool", _avg_pool_3x3_valid_only(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


def _mixed_d(params, name, x):
    def conv(layer, h):
        return _basic_conv(params, f"{name}.{layer}", h)

    b3 = conv("branch3x3_2", conv("branch3x3_1", x))
    b7 = x
    for i in (1, 2, 3, 4):
        b7 = conv(f"branch7x7x3_{i}", b7)
    return jnp.concatenate([b3, b7, _max_pool(x, 3, 2)], axis=-1)


def _mixed_e(params, name, x, pool):
    def conv(layer, h):
        return _basic_conv(params, f"{name}.{layer}", h)

    b1 = conv("branch1x1", x)
    b3 = conv("branch3x3_1", x)
    b3 = jnp.concatenate([conv("branch3x3_2a", b3), conv("branch3x3_2b", b3)], axis=-1)
    bd = conv("branch3x3dbl_2", conv("branch3x3dbl_1", x))
    bd = jnp.concatenate([conv("branch3x3dbl_3a", bd), conv("branch3x3dbl_3b", bd)], axis=-1)
    # Mixed_7c max-pools here: a quirk of the TensorFlow graph that FID is defined on.
    pooled = _max_pool(x, 3, 1, padding=1) if pool == "max" else _avg_pool_3x3_valid_only(x)
    bp = conv("branch_pool", pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def forward(params: dict, x: Array) -> dict[str, Array]:
    """The network on preprocessed (N, 299, 299, 3) input in [-1, 1] -> pool3 and logits."""
    for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"):
        x = _basic_conv(params, name, x)
    x = _max_pool(x, 3, 2)
    x = _basic_conv(params, "Conv2d_3b_1x1", x)
    x = _basic_conv(params, "Conv2d_4a_3x3", x)
    x = _max_pool(x, 3, 2)
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        x = _mixed_a(params, name, x)
    x = _mixed_b(params, "Mixed_6a", x)
    for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        x = _mixed_c(params, name, x)
    x = _mixed_d(params, "Mixed_7a", x)
    x = _mixed_e(params, "Mixed_7b", x, pool="avg")
    x = _mixed_e(params, "Mixed_7c", x, pool="max")
    pool3 = jnp.mean(x, axis=(1, 2))
    logits_unbiased = jnp.matmul(pool3, params["fc.weight"].T, precision=_HIGHEST)
    return {
        "pool3": pool3,
        "logits_unbiased": logits_unbiased,
        "logits": logits_unbiased + params["fc.bias"],
    }


# --------------------------------------------------------------------------------------------
# Preprocessing


def _torch_bilinear_taps(in_size: int, out_size: int, dtype) -> tuple[np.ndarray, ...]:
    """Source rows and weights of ``F.interpolate(mode="bilinear", align_corners=False)``
    along one axis, computed in ``dtype`` as torch's CPU kernel does (its opmath type is the
    input's float type)."""
    real = np.dtype(dtype).type
    scale = real(in_size) / real(out_size)
    dst = np.arange(out_size).astype(dtype)
    src = np.maximum(scale * (dst + real(0.5)) - real(0.5), real(0))
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.where(lo < in_size - 1, lo + 1, lo)
    w_hi = np.clip(src - lo.astype(dtype), real(0), real(1))
    w_lo = real(1) - w_hi
    return lo, hi, w_lo, w_hi


def resize_bilinear_torch(x: Array, size: int = INPUT_SIZE) -> Array:
    """pytorch-fid's resize: ``F.interpolate(x, (size, size), mode="bilinear",
    align_corners=False)`` without antialias, on NHWC. Same taps and weights as torch,
    combined in torch's order (along W, then along H)."""
    _, h, w, _ = x.shape
    if (h, w) == (size, size):
        return x  # torch's weights are exactly (1, 0) here: a copy
    y_lo, y_hi, wy_lo, wy_hi = _torch_bilinear_taps(h, size, x.dtype)
    x_lo, x_hi, wx_lo, wx_hi = _torch_bilinear_taps(w, size, x.dtype)
    wx_lo, wx_hi = (jnp.asarray(v, x.dtype)[None, None, :, None] for v in (wx_lo, wx_hi))
    wy_lo, wy_hi = (jnp.asarray(v, x.dtype)[None, :, None, None] for v in (wy_lo, wy_hi))

    def along_w(rows):
        return wx_lo * rows[:, :, x_lo] + wx_hi * rows[:, :, x_hi]

    return wy_lo * along_w(x[:, y_lo]) + wy_hi * along_w(x[:, y_hi])


def resize_bilinear_tf1(x: Array, size: int = INPUT_SIZE) -> Array:
    """torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x(align_corners=False)``
    ("slow" method) on NHWC: source coordinate ``dst * float32(in / out)``, two taps
    clamped at the edge, combined as ``a + (b - a) * t`` along W, then along H."""
    _, h, w, _ = x.shape

    def taps(in_size):
        grid = np.arange(size, dtype=np.float64).astype(x.dtype) * np.float32(in_size / size)
        lo = grid.astype(np.int64)
        hi = np.minimum(lo + 1, in_size - 1)
        return lo, hi, (grid - lo.astype(np.float32)).astype(x.dtype)

    y_lo, y_hi, dy = taps(h)
    x_lo, x_hi, dx = taps(w)
    dx = jnp.asarray(dx)[None, None, :, None]
    dy = jnp.asarray(dy)[None, :, None, None]

    def along_w(rows):
        left, right = rows[:, :, x_lo], rows[:, :, x_hi]
        return left + (right - left) * dx

    top, bottom = along_w(x[:, y_lo]), along_w(x[:, y_hi])
    return top + (bottom - top) * dy


def preprocess(images: Array, method: str = "pytorch-fid") -> Array:
    """NHWC images in [-1, 1], any size -> the network's (N, 299, 299, 3) input."""
    if method == "pytorch-fid":
        x01 = (images + 1) / 2
        return 2 * resize_bilinear_torch(x01) - 1
    if method == "torch-fidelity":
        pixels = jnp.clip(jnp.round((images + 1) * 127.5), 0, 255)
        return (resize_bilinear_tf1(pixels) - 128) / 128
    raise ValueError(f"preprocess must be one of {list(PREPROCESSING)}, got {method!r}")


# --------------------------------------------------------------------------------------------
# Batched, sharded extraction


@functools.cache
def _compiled_preprocess(mesh: Mesh, method: str):
    data = PartitionSpec("data")
    local = functools.partial(preprocess, method=method)
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(data,), out_specs=data,
                                 check_vma=False))  # fmt: skip


@functools.cache
def _compiled_network(mesh: Mesh):
    data, rep = PartitionSpec("data"), PartitionSpec()
    return jax.jit(
        jax.shard_map(forward, mesh=mesh, in_specs=(rep, data), out_specs=data, check_vma=False)
    )


def default_mesh() -> Mesh:
    """A ('data',) mesh over this process's devices."""
    return Mesh(np.array(jax.local_devices()), ("data",))


def _check_chunk(images: np.ndarray, index: int) -> np.ndarray:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"images (batch {index}) must be NHWC with 3 channels, got shape {images.shape}"
        )
    unit_range_images(images, f"images (batch {index})", slack=0.001, nan_ok=True)
    return images


def _chunks(images, chunk: int) -> Iterator[np.ndarray]:
    """Split an (N, H, W, 3) array, or pass an iterable of such arrays through, in pieces
    of at most ``chunk`` images."""
    if hasattr(images, "shape"):
        images = [images]
    for index, batch in enumerate(images):
        batch = _check_chunk(np.asarray(batch), index)
        for start in range(0, len(batch), chunk):
            yield batch[start : start + chunk]


@dataclasses.dataclass(frozen=True, eq=False)
class InceptionV3:
    """The FID Inception with its weights; call :meth:`features`, :meth:`logits`.

    ``batch_size`` images per device run per step; a dataset is processed in chunks of
    ``batch_size * devices`` (fewer when it is smaller), the last one padded, so every chunk
    reuses one compilation. Images may be an (N, H, W, 3) array or an iterable of such
    batches (e.g. read from disk), so 50k images never need to be in memory at once.
    """

    params: dict
    preprocess: str = "pytorch-fid"
    batch_size: int = 32
    mesh: Mesh | None = None

    def __post_init__(self):
        if self.preprocess not in PREPROCESSING:
            raise ValueError(
                f"preprocess must be one of {list(PREPROCESSING)}, got {self.preprocess!r}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def dtype(self):
        return self.params["fc.weight"].dtype

    @functools.cached_property
    def _placed(self) -> tuple[Mesh, dict]:
        """The mesh and the weights replicated on it, once per model (not per call)."""
        mesh = self.mesh if self.mesh is not None else default_mesh()
        return mesh, jax.device_put(self.params, NamedSharding(mesh, PartitionSpec()))

    def outputs(self, images, names: Iterable[str] = OUTPUTS) -> dict[str, np.ndarray]:
        """``{name: (N, dim) array}`` for ``names`` among pool3, logits, logits_unbiased."""
        names = tuple(names)
        for name in names:
            if name not in OUTPUTS:
                raise ValueError(f"unknown Inception output {name!r}; known: {list(OUTPUTS)}")
        mesh, params = self._placed
        devices = mesh.devices.size
        prep, net = _compiled_preprocess(mesh, self.preprocess), _compiled_network(mesh)
        sharding = NamedSharding(mesh, PartitionSpec("data"))
        full = self.batch_size * devices
        if hasattr(images, "shape"):  # one array: no bigger chunk than it needs
            full = min(full, -(-max(len(images), 1) // devices) * devices)
        results: dict[str, list[np.ndarray]] = {name: [] for name in names}
        pending = None

        def collect(done):
            out, count = done
            for name in names:
                results[name].append(np.asarray(out[name][:count]))

        for batch in _chunks(images, full):
            count = len(batch)
            if count == 0:
                continue
            padded = np.zeros((full, *batch.shape[1:]), self.dtype)
            padded[:count] = batch
            x = net(params, prep(jax.device_put(padded, sharding)))
            if pending is not None:  # fetch the previous chunk while this one runs
                collect(pending)
            pending = ({name: x[name] for name in names}, count)
        if pending is not None:
            collect(pending)
        dims = {"pool3": NUM_FEATURES, "logits": NUM_CLASSES, "logits_unbiased": NUM_CLASSES}
        return {
            name: np.concatenate(parts) if parts else np.zeros((0, dims[name]), self.dtype)
            for name, parts in results.items()
        }

    def features(self, images) -> np.ndarray:
        """pool3 features, (N, 2048): what FID, KID and P-IDS/U-IDS compare."""
        return self.outputs(images, ("pool3",))["pool3"]

    def logits(self, images, *, fc_bias: bool = True) -> np.ndarray:
        """The 1008-class logits, (N, 1008). ``fc_bias=False`` drops the fc bias, as
        torch-fidelity's Inception Score does (its ``logits_unbiased``)."""
        name = "logits" if fc_bias else "logits_unbiased"
        return self.outputs(images, (name,))[name]


def load(
    path: str | os.PathLike,
    *,
    dtype=jnp.float32,
    preprocess: str = "pytorch-fid",
    batch_size: int = 32,
    mesh: Mesh | None = None,
) -> InceptionV3:
    """The FID Inception from ``pt_inception-2015-12-05-6726825d.pth`` (no torch needed)."""
    return InceptionV3(
        read_params(path, dtype=dtype), preprocess=preprocess, batch_size=batch_size, mesh=mesh
    )
