"""Deep Image Prior's encoder-decoder with skip connections (DmitryUlyanov/deep-image-prior,
``models/skip.py`` and ``models/common.py``), as a pure function over a parameter dict.

Images are NHWC in [0, 1] (the network ends in a sigmoid, as DIP's). Parameters are a flat
dict keyed exactly as the official ``skip(...)``'s ``state_dict()`` (conv kernels OIHW, as
torch stores them), so a key table from the official code reads straight across; batch-norm
running statistics are left out, because DIP never leaves training mode: every forward pass,
the final one included, normalises with the batch's own statistics.

Where the keys come from: ``skip`` nests ``nn.Sequential``s whose children are numbered from
"1" (``common.add_module``); level i holds ``Concat(skip, deeper)`` at "1" (children "0" and
"1"; no Concat when the level has no skip channels), then bn "2", the up conv "3", bn "4",
and with ``need1x1_up`` the 1x1 conv "6" and bn "7". ``deeper`` holds the strided conv "1",
bn "2", conv "4", bn "5" and the next level at "7". Each conv is itself a Sequential: with
reflection padding the padder is child "0" (even for a 1x1 conv) and the Conv2d child "1".

Only ``downsample_mode='stride'`` is implemented: every published setting uses it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dgp_jax.degradations import upsample_bilinear
from dgp_jax.nets.per_image import im2col_conv

Array = jax.Array
Params = dict[str, Array]

LEAKY_SLOPE = 0.2  # common.act('LeakyReLU')
BN_EPS = 1e-5  # nn.BatchNorm2d's default


@dataclasses.dataclass(frozen=True)
class SkipSpec:
    """The arguments of the official ``skip(...)`` (per-level lists already expanded)."""

    input_depth: int
    channels_down: tuple[int, ...]
    channels_up: tuple[int, ...]
    channels_skip: tuple[int, ...]
    filter_size_down: int = 3
    filter_size_up: int = 3
    filter_skip_size: int = 1
    upsample_mode: str = "nearest"  # 'nearest' | 'bilinear'
    pad: str = "reflection"  # 'reflection' | 'zero'
    need1x1_up: bool = True
    need_sigmoid: bool = True
    output_channels: int = 3

    def __post_init__(self):
        n = len(self.channels_down)
        if not n or len(self.channels_up) != n or len(self.channels_skip) != n:
            raise ValueError(
                "channels_down, channels_up and channels_skip must have one entry per level, "
                f"got {self.channels_down}, {self.channels_up}, {self.channels_skip}"
            )
        if self.upsample_mode not in ("nearest", "bilinear"):
            raise ValueError(
                f"upsample_mode must be 'nearest' or 'bilinear', got {self.upsample_mode!r}"
            )
        if self.pad not in ("reflection", "zero"):
            raise ValueError(f"pad must be 'reflection' or 'zero', got {self.pad!r}")

    @property
    def scales(self) -> int:
        return len(self.channels_down)


def _five(c: int) -> tuple[int, ...]:
    return (c,) * 5


# The notebooks' networks (reflection padding everywhere, as every notebook sets pad).
PRESETS: dict[str, SkipSpec] = {
    # super-resolution.ipynb and denoising.ipynb (F16): get_net(32, 'skip', skip_n33d=128,
    # skip_n33u=128, skip_n11=4, num_scales=5, upsample_mode='bilinear').
    "super-resolution": SkipSpec(32, _five(128), _five(128), _five(4), upsample_mode="bilinear"),
    "denoising": SkipSpec(32, _five(128), _five(128), _five(4), upsample_mode="bilinear"),
    # inpainting.ipynb, kate.png / peppers.png.
    "inpainting": SkipSpec(32, _five(128), _five(128), _five(128), upsample_mode="nearest"),
    # inpainting.ipynb, vase.png (meshgrid input, no skip connections).
    "inpainting-vase": SkipSpec(2, _five(128), _five(128), _five(0), upsample_mode="nearest"),
    # inpainting.ipynb, library.png with NET_TYPE 'skip_depth6'.
    "inpainting-library": SkipSpec(
        1,
        (16, 32, 64, 128, 128, 128),
        (16, 32, 64, 128, 128, 128),
        (0,) * 6,
        filter_size_down=5,
        filter_size_up=3,
        need1x1_up=False,
    ),  # fmt: skip
}


# --------------------------------------------------------------------------- key table
def _conv_key(spec: SkipSpec, module: str) -> str:
    return f"{module}.1" if spec.pad == "reflection" else f"{module}.0"


def _level_prefixes(spec: SkipSpec, level: int, prefix: str) -> tuple[str, str]:
    """(skip branch, deeper branch) module prefixes of a level whose Sequential is ``prefix``."""
    if spec.channels_skip[level]:
        return f"{prefix}1.0.", f"{prefix}1.1."
    return "", f"{prefix}1."


def layer_table(spec: SkipSpec) -> list[tuple[str, str, tuple[int, ...]]]:
    """Every parameterised layer: (state_dict module name, 'conv'|'bn', shape), where a conv's
    shape is (out, in, k, k) and a bn's is (channels,)."""
    table: list[tuple[str, str, tuple[int, ...]]] = []
    prefix, depth = "", spec.input_depth
    last = spec.scales - 1
    for i in range(spec.scales):
        skip_p, deep_p = _level_prefixes(spec, i, prefix)
        down, up, sk = spec.channels_down[i], spec.channels_up[i], spec.channels_skip[i]
        fd = spec.filter_size_down
        if sk:
            table.append(
                (
                    _conv_key(spec, f"{skip_p}1"),
                    "conv",
                    (sk, depth, spec.filter_skip_size, spec.filter_skip_size),
                )
            )
            table.append((f"{skip_p}2", "bn", (sk,)))
        table.append((_conv_key(spec, f"{deep_p}1"), "conv", (down, depth, fd, fd)))
        table.append((f"{deep_p}2", "bn", (down,)))
        table.append((_conv_key(spec, f"{deep_p}4"), "conv", (down, down, fd, fd)))
        table.append((f"{deep_p}5", "bn", (down,)))
        k = down if i == last else spec.channels_up[i + 1]
        table.append((f"{prefix}2", "bn", (sk + k,)))
        fu = spec.filter_size_up
        table.append((_conv_key(spec, f"{prefix}3"), "conv", (up, sk + k, fu, fu)))
        table.append((f"{prefix}4", "bn", (up,)))
        if spec.need1x1_up:
            table.append((_conv_key(spec, f"{prefix}6"), "conv", (up, up, 1, 1)))
            table.append((f"{prefix}7", "bn", (up,)))
        prefix, depth = f"{deep_p}7.", down
    final = "9" if spec.need1x1_up else "6"
    table.append(
        (_conv_key(spec, final), "conv", (spec.output_channels, spec.channels_up[0], 1, 1))
    )
    return table


def param_shapes(spec: SkipSpec) -> dict[str, tuple[int, ...]]:
    """state_dict key -> shape, for every parameter (no batch-norm running statistics)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, _, shape in layer_table(spec):
        shapes[f"{name}.weight"] = shape
        shapes[f"{name}.bias"] = (shape[0],)
    return shapes


def init(key: Array, spec: SkipSpec, dtype=jnp.float32) -> Params:
    """torch's default initialisation: Conv2d weight and bias uniform in ±1/sqrt(fan_in)
    (kaiming_uniform with a = sqrt(5)), BatchNorm2d weight 1 and bias 0."""
    params: Params = {}
    table = layer_table(spec)
    keys = jax.random.split(key, len(table))
    for k, (name, kind, shape) in zip(keys, table, strict=True):
        if kind == "bn":
            params[f"{name}.weight"] = jnp.ones(shape, dtype)
            params[f"{name}.bias"] = jnp.zeros(shape, dtype)
            continue
        bound = 1.0 / math.sqrt(shape[1] * shape[2] * shape[3])
        kw, kb = jax.random.split(k)
        params[f"{name}.weight"] = jax.random.uniform(kw, shape, dtype, -bound, bound)
        params[f"{name}.bias"] = jax.random.uniform(kb, (shape[0],), dtype, -bound, bound)
    return params


def check_params(params: dict[str, Any], spec: SkipSpec) -> None:
    """Raise a ValueError naming the first missing, extra or mis-shaped key."""
    shapes = param_shapes(spec)
    missing = [k for k in shapes if k not in params]
    if missing:
        raise ValueError(
            f"DIP skip parameters: missing key {missing[0]!r} ({len(missing)} missing)"
        )
    extra = [k for k in params if k not in shapes]
    if extra:
        raise ValueError(f"DIP skip parameters: unexpected key {extra[0]!r}")
    for k, shape in shapes.items():
        if tuple(np.shape(params[k])) != shape:
            raise ValueError(
                f"DIP skip parameters: {k!r} has shape {tuple(np.shape(params[k]))}, "
                f"expected {shape}"
            )


# --------------------------------------------------------------------------- forward
CONV_LOWERINGS = ("xla", "im2col")  # im2col: dgp_jax.nets.per_image.im2col_conv


def _conv(params: Params, name: str, x: Array, spec: SkipSpec, stride: int = 1,
          lowering: str = "xla") -> Array:  # fmt: skip
    w = params[f"{name}.weight"]
    k = w.shape[-1]
    p = (k - 1) // 2
    if spec.pad == "reflection" and p:
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
        padding = ((0, 0), (0, 0))
    else:
        padding = ((p, p), (p, p))
    if lowering == "im2col":
        y = im2col_conv(x, w, stride, padding)
    else:
        y = jax.lax.conv_general_dilated(
            x, w.astype(x.dtype), (stride, stride), padding,
            dimension_numbers=("NHWC", "OIHW", "NHWC"), precision=jax.lax.Precision.HIGHEST,
        )  # fmt: skip
    return y + params[f"{name}.bias"].astype(x.dtype)


def _bn(params: Params, name: str, x: Array) -> Array:
    """BatchNorm2d in training mode: the batch's mean and biased variance over N, H, W."""
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    y = (x - mean) / jnp.sqrt(var + BN_EPS)
    return y * params[f"{name}.weight"].astype(x.dtype) + params[f"{name}.bias"].astype(x.dtype)


def _act(x: Array) -> Array:
    return jnp.where(x >= 0, x, LEAKY_SLOPE * x)


def _upsample(x: Array, mode: str) -> Array:
    if mode == "nearest":
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return upsample_bilinear(x, 2)


def _concat(a: Array, b: Array) -> Array:
    """common.Concat: centre-crop both to the smaller size, then stack channels."""
    h, w = min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2])

    def crop(x):
        dh, dw = (x.shape[1] - h) // 2, (x.shape[2] - w) // 2
        return x[:, dh : dh + h, dw : dw + w]

    return jnp.concatenate([crop(a), crop(b)], axis=-1)


def _level(params: Params, spec: SkipSpec, i: int, x: Array, prefix: str,
           lowering: str) -> Array:  # fmt: skip
    conv = functools.partial(_conv, lowering=lowering)
    skip_p, deep_p = _level_prefixes(spec, i, prefix)
    d = _act(_bn(params, f"{deep_p}2", conv(params, _conv_key(spec, f"{deep_p}1"), x, spec, 2)))
    d = _act(_bn(params, f"{deep_p}5", conv(params, _conv_key(spec, f"{deep_p}4"), d, spec)))
    if i < spec.scales - 1:
        d = _level(params, spec, i + 1, d, f"{deep_p}7.", lowering)
    d = _upsample(d, spec.upsample_mode)
    if spec.channels_skip[i]:
        s = _act(_bn(params, f"{skip_p}2", conv(params, _conv_key(spec, f"{skip_p}1"), x, spec)))
        d = _concat(s, d)
    y = _bn(params, f"{prefix}2", d)
    y = _act(_bn(params, f"{prefix}4", conv(params, _conv_key(spec, f"{prefix}3"), y, spec)))
    if spec.need1x1_up:
        y = _act(_bn(params, f"{prefix}7", conv(params, _conv_key(spec, f"{prefix}6"), y, spec)))
    return y


def check_size(spec: SkipSpec, height: int, width: int) -> None:
    """DIP crops its images to a multiple of 2^scales; so must its inputs here."""
    unit = 2**spec.scales
    if height % unit or width % unit:
        raise ValueError(
            f"the DIP skip network with {spec.scales} scales needs H and W divisible by {unit}, "
            f"got {height}x{width} (DIP crops its images to such a size)"
        )
    deepest = min(height, width) // 2**spec.scales
    pad = (max(spec.filter_size_down, spec.filter_size_up) - 1) // 2
    if spec.pad == "reflection" and deepest <= pad:
        raise ValueError(
            f"{height}x{width} is too small for this DIP skip network: its deepest convolution "
            f"sees "
            f"{deepest} px, and reflection padding of {pad} px needs more (torch refuses it too)"
        )


def apply(params: Params, spec: SkipSpec, x: Array, lowering: str = "xla") -> Array:
    """The network on (N, H, W, input_depth) input; returns (N, H, W, output_channels),
    in (0, 1) with the sigmoid. N > 1 shares batch statistics, as torch's batch would."""
    if x.ndim != 4 or x.shape[-1] != spec.input_depth:
        raise ValueError(
            f"DIP skip input must have shape (N, H, W, {spec.input_depth}), got {tuple(x.shape)}"
        )
    check_size(spec, x.shape[1], x.shape[2])
    if lowering not in CONV_LOWERINGS:
        raise ValueError(f"lowering must be one of {list(CONV_LOWERINGS)}, got {lowering!r}")
    y = _level(params, spec, 0, x, "", lowering)
    y = _conv(params, _conv_key(spec, "9" if spec.need1x1_up else "6"), y, spec,
              lowering=lowering)  # fmt: skip
    return jax.nn.sigmoid(y) if spec.need_sigmoid else y


def network_input(key: Array, spec: SkipSpec, height: int, width: int, kind: str = "noise",
                  dtype=jnp.float32) -> Array:  # fmt: skip
    """common_utils.get_noise: 'noise' = uniform [0, 1) times 1/10; 'meshgrid' = the two
    coordinate planes in [0, 1] (input_depth must be 2). Shape (1, H, W, input_depth)."""
    if kind == "noise":
        return jax.random.uniform(key, (1, height, width, spec.input_depth), dtype) * 0.1
    if kind == "meshgrid":
        if spec.input_depth != 2:
            raise ValueError(f"meshgrid input needs input_depth 2, got {spec.input_depth}")
        xs = np.arange(width) / float(width - 1)
        ys = np.arange(height) / float(height - 1)
        gx, gy = np.meshgrid(xs, ys)
        return jnp.asarray(np.stack([gx, gy], -1)[None], dtype)
    raise ValueError(f"network input must be 'noise' or 'meshgrid', got {kind!r}")


def spec_from(preset: str | None = None, **fields: Sequence[int] | int | str | bool) -> SkipSpec:
    """A preset (see PRESETS), with fields replaced."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown DIP network {preset!r}; presets: {', '.join(PRESETS)}")
    base = PRESETS[preset] if preset else PRESETS["super-resolution"]
    return dataclasses.replace(base, **fields)
