"""SinGAN's per-scale networks (tamarott/SinGAN ``SinGAN/models.py``), as pure functions.

At every scale of the pyramid SinGAN trains one generator and one discriminator of five
convolution blocks (``num_layer = 5``): a head ``ConvBlock``, three body ``ConvBlock``s and a
tail convolution. A ``ConvBlock`` is a 3x3 convolution without padding, ``BatchNorm2d`` and
``LeakyReLU(0.2)``. Every block has ``channels`` feature maps (the reference's ``nfc`` and
``min_nfc`` are equal, so ``max(N, min_nfc)`` is always ``nfc``), 32 at the coarsest scales,
doubled every 4 scales, at most 128 (:func:`channels_at`).

- The generator (``GeneratorConcatSkip2CleanAdd``) ends in a 3-channel convolution and tanh,
  and adds the previous scale's image ``prev`` (cropped by the 10 pixels the valid
  convolutions removed): ``G(noise, prev) = tanh(tail(body(head(noise)))) + crop(prev)``.
- The discriminator (``WDiscriminator``) ends in a 1-channel convolution: a patch critic.

Parameters are nested dicts whose paths are the reference's ``state_dict`` keys
(``head.conv.weight`` is ``params["head"]["conv"]["weight"]``, the generator's last
convolution ``tail.0``, the discriminator's ``tail``); kernels are kept in torch's OIHW
layout, images are NHWC. BatchNorm's running statistics live in a separate ``stats`` tree
of the same paths (``running_mean``, ``running_var``). ``train=True`` normalises with the
batch statistics and returns the updated running statistics (momentum 0.1, unbiased
variance, as torch); ``train=False`` normalises with the running statistics, as the
reference does for every scale it has finished training (``G.eval()``).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dgp_jax.nets.per_image import im2col_conv

Array = jax.Array
Params = dict[str, Any]

KERNEL = 3
NUM_LAYER = 5
# Five valid 3x3 convolutions remove 5 pixels on each side; inputs are zero-padded by this.
PAD = (KERNEL - 1) * NUM_LAYER // 2
BN_EPS = 1e-5
BN_MOMENTUM = 0.1
LEAK = 0.2
BLOCKS = ("head", "block1", "block2", "block3")


def channels_at(scale: int, nfc: int = 32, max_channels: int = 128) -> int:
    """Feature maps of the networks at pyramid scale ``scale`` (0 = coarsest):
    ``min(nfc * 2 ** floor(scale / 4), 128)`` (training.py ``train``)."""
    return min(nfc * 2 ** (scale // 4), max_channels)


def _block_path(name: str) -> tuple[str, ...]:
    return ("head",) if name == "head" else ("body", name)


def _get(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _conv_init(key, out_ch: int, in_ch: int, dtype) -> dict:
    """``weights_init``: weight ~ N(0, 0.02); the bias keeps torch's default
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (weights_init leaves conv biases alone)."""
    kw, kb = jax.random.split(key)
    bound = 1.0 / math.sqrt(in_ch * KERNEL * KERNEL)
    return {
        "weight": 0.02 * jax.random.normal(kw, (out_ch, in_ch, KERNEL, KERNEL), dtype),
        "bias": jax.random.uniform(kb, (out_ch,), dtype, -bound, bound),
    }


@functools.partial(jax.jit, static_argnames=("channels", "out_channels", "image_channels", "dtype"))
def init(
    key, channels: int, *, out_channels: int, image_channels: int = 3, dtype=jnp.float32
) -> tuple[Params, Params]:
    """Fresh (params, stats) of a generator (``out_channels=3``) or a discriminator
    (``out_channels=1``), initialised like the reference's ``weights_init``: conv weights
    N(0, 0.02), BatchNorm weights N(1, 0.02) and biases 0, running mean 0 and variance 1."""
    keys = jax.random.split(key, 2 * len(BLOCKS) + 1)
    params: Params = {}
    stats: Params = {}
    in_ch = image_channels
    for i, name in enumerate(BLOCKS):
        path = _block_path(name)
        _set(params, path + ("conv",), _conv_init(keys[2 * i], channels, in_ch, dtype))
        norm_w = 1.0 + 0.02 * jax.random.normal(keys[2 * i + 1], (channels,), dtype)
        _set(params, path + ("norm",), {"weight": norm_w, "bias": jnp.zeros(channels, dtype)})
        _set(stats, path + ("norm",), {"running_mean": jnp.zeros(channels, dtype),
                                       "running_var": jnp.ones(channels, dtype)})  # fmt: skip
        in_ch = channels
    tail = _conv_init(keys[-1], out_channels, channels, dtype)
    if out_channels == 1:
        params["tail"] = tail  # WDiscriminator: tail is the Conv2d itself
    else:
        params["tail"] = {"0": tail}  # Generator: tail = Sequential(Conv2d, Tanh)
    return params, stats


def is_generator(params: Params) -> bool:
    return "0" in params["tail"]


LOWERINGS = ("im2col", "xla")


def _conv(x: Array, conv: dict, lowering: str) -> Array:
    if lowering == "im2col":
        y = im2col_conv(x, conv["weight"])
    elif lowering == "xla":
        y = lax.conv_general_dilated(
            x, conv["weight"].astype(x.dtype), (1, 1), "VALID",
            dimension_numbers=("NHWC", "OIHW", "NHWC"), precision=lax.Precision.HIGHEST,
        )  # fmt: skip
    else:
        raise ValueError(f"lowering must be one of {list(LOWERINGS)}, got {lowering!r}")
    return y + conv["bias"].astype(x.dtype)


def _batch_norm(x: Array, norm: dict, stats: dict, train: bool) -> tuple[Array, dict]:
    if train:
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
        n = x.size // x.shape[-1]
        unbiased = var * (n / max(n - 1, 1))
        new_stats = {
            "running_mean": (1 - BN_MOMENTUM) * stats["running_mean"] + BN_MOMENTUM * mean,
            "running_var": (1 - BN_MOMENTUM) * stats["running_var"] + BN_MOMENTUM * unbiased,
        }
    else:
        mean, var, new_stats = stats["running_mean"], stats["running_var"], stats
    y = (x - mean) * lax.rsqrt(var + BN_EPS) * norm["weight"] + norm["bias"]
    return y, new_stats


def _body(params: Params, stats: Params, x: Array, train: bool,
          lowering: str) -> tuple[Array, Params]:  # fmt: skip
    new_stats: Params = {}
    for name in BLOCKS:
        path = _block_path(name)
        block = _get(params, path)
        x = _conv(x, block["conv"], lowering)
        x, s = _batch_norm(x, block["norm"], _get(stats, path)["norm"], train)
        _set(new_stats, path + ("norm",), s)
        x = jnp.where(x >= 0, x, LEAK * x)
    return x, new_stats


def generator(
    params: Params,
    stats: Params,
    noise: Array,
    prev: Array,
    *,
    train: bool,
    lowering: str = "im2col",
) -> tuple[Array, Params]:
    """``GeneratorConcatSkip2CleanAdd.forward(noise, prev)``.

    Args:
      noise: (N, H + 10, W + 10, 3), the padded noisy input ``noise_amp * z + prev``.
      prev: (N, H + 10, W + 10, 3), the padded previous-scale image.
      lowering: the convolutions as im2col matrix products (``"im2col"``, the default:
        15x faster than XLA's own on a CPU at SinGAN's shapes, gradient penalty included,
        and batched over images as matrix products; BENCHMARKS.md) or ``"xla"``.

    Returns:
      ((N, H, W, 3) image, updated stats). As the reference, the crop of ``prev`` is
      computed from the heights and applied to both axes.
    """
    x, new_stats = _body(params, stats, noise, train, lowering)
    x = jnp.tanh(_conv(x, params["tail"]["0"], lowering))
    ind = (prev.shape[1] - x.shape[1]) // 2
    prev = prev[:, ind : prev.shape[1] - ind, ind : prev.shape[2] - ind]
    return x + prev, new_stats


def discriminator(params: Params, stats: Params, x: Array, *, train: bool,
                  lowering: str = "im2col") -> tuple[Array, Params]:  # fmt: skip
    """``WDiscriminator.forward``: (N, H, W, 3) -> ((N, H - 10, W - 10, 1) scores, stats);
    ``lowering`` as :func:`generator`'s."""
    x, new_stats = _body(params, stats, x, train, lowering)
    return _conv(x, params["tail"], lowering), new_stats


def flatten_state_dict(params: Params, stats: Params) -> dict[str, np.ndarray]:
    """The reference's ``state_dict`` keys and values (OIHW kernels), for comparisons."""
    out: dict[str, np.ndarray] = {}

    def walk(tree, prefix):
        for k, v in tree.items():
            if isinstance(v, dict):
                walk(v, prefix + k + ".")
            else:
                out[prefix + k] = np.asarray(v)

    walk(params, "")
    walk(stats, "")
    return out


def from_state_dict(state: dict[str, Any], what: str = "state_dict") -> tuple[Params, Params]:
    """(params, stats) from reference ``state_dict`` keys (``num_batches_tracked`` ignored);
    an unexpected key is an error naming it."""
    params: Params = {}
    stats: Params = {}
    for key, value in state.items():
        parts = tuple(key.split("."))
        if parts[-1] == "num_batches_tracked":
            continue
        if parts[-1] in ("running_mean", "running_var"):
            _set(stats, parts, jnp.asarray(value))
        elif parts[-1] in ("weight", "bias"):
            _set(params, parts, jnp.asarray(value))
        else:
            raise ValueError(f"{what}: unexpected SinGAN key {key!r}")
    return params, stats
