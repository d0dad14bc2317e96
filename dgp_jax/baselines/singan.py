"""SinGAN (Shaham et al., ICCV 2019) as in tamarott/SinGAN, for DGP's comparisons.

DGP compares with SinGAN on x4 super-resolution and on random jittering (SinGAN's random
samples). This module trains one SinGAN per image, many images at once: every image's
pyramid of generators and discriminators is one slice of a batched parameter tree, each
training epoch is one jitted step ``vmap``-ped over the images and sharded over a
('data',) device mesh (``shard_map``, as :mod:`dgp_jax.solve`). The reference trains one
image per process. The convolutions run as im2col matrix products
(:func:`dgp_jax.nets.per_image.im2col_conv`, ``Settings.lowering``): under ``vmap`` with
each image's own kernels XLA would make grouped convolutions, and on a CPU its own
convolutions are 15x slower than the products at SinGAN's shapes even for one image
(the gradient penalty's second derivatives; BENCHMARKS.md).

What is reproduced (reference file in brackets):

- Image I/O [functions.py ``np2torch`` / imresize.py ``torch2uint8``]: images are 8-bit,
  mapped to float32 ``(v / 255 - 0.5) * 2``; every resize first quantises its input back to
  8 bits by truncation (``255 * clamp((x + 1) / 2)`` cast to uint8) - also inside training,
  where the previous scale's output is upsampled.
- ``imresize`` [imresize.py, Assaf Shocher's resizer]: bicubic, antialiased when
  downscaling, output ``ceil(size * scale)``, taps past the right edge mirrored, taps left
  of the image given weight 0 (the reference builds them with ``np.uint`` of negative
  numbers, which wrap to huge positions whose cubic weight is 0) and each row
  renormalised. The host version (pyramid) reproduces it bit for bit; the JAX version
  (inside training) computes in the training dtype.
- The pyramid [functions.py ``adjust_scales2image``, ``creat_reals_pyramid``]: scale
  factor 0.75, coarsest side >= 25, finest side <= 250 (a larger image is first resized to
  it), the factor adjusted so that the coarsest scale's short side is exactly 25.
- Networks per scale [models.py; :mod:`dgp_jax.nets.singan`]: G and D of 5 conv blocks,
  ``min(32 * 2 ** (scale // 4), 128)`` channels; a scale whose channel count equals the
  previous scale's starts from the previous scale's trained G and D.
- Training per scale [training.py ``train_single_scale``]: WGAN-GP with lambda = 0.1
  (one uniform interpolation weight per step, gradient norm over channels per pixel),
  reconstruction loss ``alpha * MSE(G(noise_amp * z_opt + z_prev, z_prev), real)`` with
  alpha = 10, Adam(lr 5e-4, betas (0.5, 0.999)) for G and D, each epoch 3 D steps then
  3 G steps, ``iterations`` = 2000 epochs per scale with the learning rates x0.1 from epoch
  1600 on. At the coarsest scale the input is pure single-channel noise (the same on R, G,
  B) with amplitude 1 and ``z_opt`` is redrawn every epoch (the last draw is kept); at the
  next scales ``z_opt`` is 0 and the noise amplitude is
  ``0.1 * RMSE(real, reconstruction from the coarser scales)``. Every D step draws a new
  random sample through the coarser scales' generators (BatchNorm in eval mode).
  BatchNorm running statistics are updated on exactly the reference's forward passes,
  including the extra reconstruction pass it makes when it saves a preview (epoch % 500 == 0
  and the last epoch), because generation uses them.
- Random samples [manipulate.py ``SinGAN_generate``, random_samples.py,
  ``gen_start_scale = 0``].
- Super-resolution [SR.py, functions.py ``adjust_scales2image_SR``, ``calc_init_scale``]:
  the LR image is trained on with alpha = 100, min size 18 and scale factor 4^(-1/6) (for
  x4: ``r = 2^(-1/3)``, ``n = round(log(1 / factor, r))`` steps, factor ``factor^(-1/n)``),
  then upsampled ``n`` times, each time by ``imresize`` and the finest generator with the
  finest noise amplitude, and cropped to ``factor`` times the LR size. The reference's
  ``scale2stop`` there divides by ``max(real.shape[0], real.shape[3])`` (the batch size 1 and
  the width); reproduced.

One deliberate difference: the reference's G steps backpropagate, at every inner step,
through the ``fake`` graph built in the last D step, whose generator weights the previous
G step already changed in place; that runs only on torch <= 1.4 (later versions refuse).
Here every G step recomputes ``fake = G(noise, prev)`` with the current weights (same noise
and ``prev``; that recomputation does not touch BatchNorm's running statistics, which the
reference would not have updated either). The first G step of each epoch is exactly the
reference's.

Random numbers come from JAX keys, so results are not the reference's draws; everything
that depends on the draws is tested with the draws given (tests/test_singan.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dgp_jax.baselines import common
from dgp_jax.baselines.common import sr_factor
from dgp_jax.batching import pad_to
from dgp_jax.checks import fits_field_type
from dgp_jax.nets import singan as nets

Array = Any
PAD = nets.PAD

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    """The reference's ``config.py`` defaults (SR changes alpha and min_size, see
    :func:`sr_settings`). ``iterations`` is the reference's ``niter`` (epochs per scale);
    ``lr_milestone`` stays at 1600 whatever ``iterations`` is, as in the reference."""

    iterations: int = 2000
    lr_g: float = 5e-4
    lr_d: float = 5e-4
    beta1: float = 0.5
    gamma: float = 0.1
    lr_milestone: int = 1600
    g_steps: int = 3
    d_steps: int = 3
    lambda_grad: float = 0.1
    alpha: float = 10.0
    noise_amp: float = 0.1
    min_size: int = 25
    max_size: int = 250
    scale_factor: float = 0.75
    nfc: int = 32
    # Not the reference's: how the convolutions run (dgp_jax.nets.singan.LOWERINGS).
    lowering: str = "im2col"

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not fits_field_type(field.type, value):
                raise ValueError(f"singan: {field.name} must be {field.type}, got {value!r}")
        if self.iterations < 0:
            raise ValueError(f"singan: iterations must be >= 0, got {self.iterations}")
        if self.lowering not in nets.LOWERINGS:
            raise ValueError(
                f"singan: lowering must be one of {list(nets.LOWERINGS)}, got {self.lowering!r}"
            )


def sr_settings(factor: float = 4, **overrides) -> tuple[Settings, float, int]:
    """(settings, upsampling step, number of steps) of SR.py: alpha 100, min size 18 and the
    pyramid factor 1 / step, step = factor^(1/n), n = round(log(1/factor, 2^(-1/3)))."""
    in_scale = math.pow(1 / 2, 1 / 3)
    steps = round(math.log(1 / factor, in_scale))
    in_scale = pow(factor, 1 / steps)
    fields = {"alpha": 100.0, "min_size": 18, "scale_factor": 1 / in_scale}
    fields.update(overrides)
    return Settings(**fields), in_scale, steps


# ---------------------------------------------------------------------------------------------
# 8-bit images and imresize
# ---------------------------------------------------------------------------------------------


def from_uint8(image: np.ndarray) -> np.ndarray:
    """functions.py ``np2torch``: uint8 (or the float64 result of a resize) -> float32 in
    [-1, 1], ``clamp((float32(v / 255) - 0.5) * 2, -1, 1)``."""
    x = (np.asarray(image) / 255).astype(np.float32)
    return np.clip((x - np.float32(0.5)) * np.float32(2), -1, 1)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """imresize.py ``torch2uint8``: float32 [-1, 1] -> uint8 by truncation, in float32."""
    x = np.asarray(x, np.float32)
    return (np.float32(255) * np.clip((x + np.float32(1)) / np.float32(2), 0, 1)).astype(np.uint8)


def resized_length(length: int, scale: float) -> int:
    """imresize's output size along one axis: ``ceil(length * scale)`` (``length`` when
    ``scale`` is exactly 1, which imresize skips)."""
    if scale == 1.0:
        return int(length)
    return int(np.uint(np.ceil(np.array([length]) * np.array([scale]))[0]))


def _cubic(x):
    absx = np.abs(x)
    absx2 = absx**2
    absx3 = absx**3
    return (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1) + (
        -0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2
    ) * ((1 < absx) & (absx <= 2))


@functools.cache
def resize_taps(in_length: int, out_length: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights), both (out_length, taps): output pixel i is
    ``sum_k weights[i, k] * input[indices[i, k]]``, summed in k order, as imresize's
    ``contributions`` computes them (cubic kernel, antialiased when ``scale < 1``)."""
    antialias = scale < 1
    kernel_width = 4.0 * (1.0 / scale if antialias else 1.0)
    out = np.arange(1, out_length + 1)
    match = 1.0 * out / scale + 0.5 * (1 - 1.0 / scale)
    left = np.floor(match - kernel_width / 2)
    positions = left[:, None] + np.arange(np.ceil(kernel_width) + 2) - 1  # float, may be < 0
    distance = 1.0 * match[:, None] - positions - 1
    kernel = (scale * _cubic(scale * distance)) if antialias else _cubic(distance)
    # Negative positions become huge through the reference's np.uint: their weight is 0.
    weights = np.where(positions < 0, 0.0, kernel)
    sums = np.sum(weights, axis=1)
    sums[sums == 0] = 1.0
    weights = 1.0 * weights / sums[:, None]
    pos = np.maximum(positions, 0).astype(np.int64)
    period = 2 * in_length
    pos = np.mod(pos, period)
    indices = np.where(pos < in_length, pos, period - 1 - pos)
    keep = np.any(weights, axis=0)
    return indices[:, keep], weights[:, keep]


def _resize_axis(x, axis: int, indices: np.ndarray, weights: np.ndarray, xp):
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)  # uint8 * float64 weights, as the reference multiplies
    x = xp.moveaxis(x, axis, 0)
    out = None
    for k in range(indices.shape[1]):
        w = xp.asarray(weights[:, k].reshape((-1,) + (1,) * (x.ndim - 1)), dtype=x.dtype)
        term = xp.take(x, xp.asarray(indices[:, k]), axis=0) * w
        out = term if out is None else out + term
    return xp.moveaxis(out, 0, axis)


def _resize_float(x, out_hw: tuple[int, int], scales: tuple[float, float], xp):
    """imresize_in on (H, W, C) values: the axes in argsort order of their scale."""
    in_hw = x.shape[:2]
    order = np.argsort(np.array([scales[0], scales[1], 1.0])).tolist()
    for axis in order:
        if axis == 2 or scales[axis] == 1.0:
            continue
        idx, w = resize_taps(int(in_hw[axis]), int(out_hw[axis]), float(scales[axis]))
        x = _resize_axis(x, axis, idx, w, xp)
    return x


def imresize_host(x: np.ndarray, scale: float) -> np.ndarray:
    """imresize.py ``imresize`` on one float32 (H, W, 3) image in [-1, 1], in numpy: bit for
    bit the reference (8-bit quantisation, float64 resize, float32 result)."""
    q = to_uint8(x)
    out_hw = (resized_length(q.shape[0], scale), resized_length(q.shape[1], scale))
    return from_uint8(_resize_float(q, out_hw, (scale, scale), np))


def imresize_to_shape_host(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """imresize.py ``imresize_to_shape``: per-axis scale ``out / in``."""
    q = to_uint8(x)
    scales = (height / q.shape[0], width / q.shape[1])
    return from_uint8(_resize_float(q, (height, width), scales, np))


def imresize(x: Array, scale: float) -> jax.Array:
    """``imresize`` inside a jitted step, on one (H, W, 3) image in [-1, 1] of any float
    dtype: the same quantisation and taps, summed in ``x``'s dtype."""
    x = jnp.asarray(x)
    q = jnp.floor(255 * jnp.clip((x + 1) / 2, 0, 1))
    out_hw = (resized_length(x.shape[0], scale), resized_length(x.shape[1], scale))
    y = _resize_float(q, out_hw, (scale, scale), jnp) / 255
    return jnp.clip((y - 0.5) * 2, -1, 1)


# ---------------------------------------------------------------------------------------------
# The pyramid
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """The reference's pyramid for one image size.

    shapes: (height, width) per scale, coarsest first; scale1: the resize of the input to
    the finest scale; scale_factor: the adjusted factor between scales (the previous
    scale's output is upsampled by ``1 / scale_factor``)."""

    shapes: tuple[tuple[int, int], ...]
    scale1: float
    scale_factor: float

    @property
    def num_scales(self) -> int:
        return len(self.shapes)


def plan(
    height: int, width: int, *, min_size: int = 25, max_size: int = 250,
    scale_factor: float = 0.75, sr: bool = False,
) -> Plan:  # fmt: skip
    """``adjust_scales2image`` (``sr=True``: ``adjust_scales2image_SR``) and
    ``creat_reals_pyramid``'s sizes for an image of ``height`` x ``width``."""
    if min(height, width) < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    big, small = max(height, width), min(height, width)
    if sr:
        num_scales = int(math.log(min_size / small, scale_factor)) + 1
        # (sic) the reference divides by max(real.shape[0], real.shape[3]): batch 1, width.
        scale2stop = int(math.log(min(max_size, big) / max(1, width), scale_factor))
    else:
        num_scales = math.ceil(math.log(math.pow(min_size / small, 1), scale_factor)) + 1
        scale2stop = math.ceil(math.log(min([max_size, big]) / big, scale_factor))
    stop_scale = num_scales - scale2stop
    if stop_scale < 1:
        raise ValueError(
            f"an image of {height}x{width} is too small for SinGAN's pyramid "
            f"(min_size {min_size}): it needs at least 2 scales"
        )
    scale1 = min(max_size / big, 1)
    h1, w1 = resized_length(height, scale1), resized_length(width, scale1)
    factor = math.pow(min_size / min(h1, w1), 1 / stop_scale)
    shapes = []
    for i in range(stop_scale + 1):
        s = math.pow(factor, stop_scale - i)
        shapes.append((resized_length(h1, s), resized_length(w1, s)))
    return Plan(tuple(shapes), scale1, factor)


def upscaled_pyramid_warning(the_plan: Plan, height: int, width: int) -> str | None:
    """The warning for an image smaller than the pyramid's coarsest scale (below ``min_size``:
    the pyramid resizes *up*, factor > 1, as the reference computes it), else None. The
    official SR.py, run on 16 px inputs (min size 18), super-resolves into streaks that do
    not follow the input (README, 'Comparing methods'); on 32 px inputs it follows them."""
    if the_plan.scale_factor <= 1:
        return None
    return (
        f"singan: the {height}x{width} image is smaller than the pyramid's coarsest scale "
        f"{the_plan.shapes[0][0]}x{the_plan.shapes[0][1]} (scales "
        f"{', '.join(f'{h}x{w}' for h, w in the_plan.shapes)}): the pyramid upsamples it; "
        f"at such sizes the official SR.py's outputs do not follow their input (README)"
    )


def pyramid(image: np.ndarray, the_plan: Plan) -> list[np.ndarray]:
    """The float32 images of every scale, coarsest first, from one float32 image (as
    functions.py ``read_image`` makes it): the input resized by ``scale1``, then resized by
    ``scale_factor ** (stop - i)`` per scale."""
    real = imresize_host(image, the_plan.scale1)
    stop = the_plan.num_scales - 1
    reals = [
        imresize_host(real, math.pow(the_plan.scale_factor, stop - i)) for i in range(stop + 1)
    ]
    for r, shape in zip(reals, the_plan.shapes, strict=True):
        assert r.shape[:2] == shape, (r.shape, shape)
    return reals


# ---------------------------------------------------------------------------------------------
# One image's training step (vmapped over images)
# ---------------------------------------------------------------------------------------------


def _pad(x):
    return jnp.pad(x, ((PAD, PAD), (PAD, PAD), (0, 0)))


def _noise(key, shape: tuple[int, int], single_channel: bool, dtype):
    if single_channel:  # generate_noise([1, ...]).expand(1, 3, ...)
        return jnp.broadcast_to(jax.random.normal(key, shape + (1,), dtype), shape + (3,))
    return jax.random.normal(key, shape + (3,), dtype)


def _g(params, stats, noise, prev, train, lowering="im2col"):
    y, s = nets.generator(params, stats, noise[None], prev[None], train=train, lowering=lowering)
    return y[0], s


def _d(params, stats, x, train=True, lowering="im2col"):
    y, s = nets.discriminator(params, stats, x[None], train=train, lowering=lowering)
    return y[0], s


def cascade(coarser: list[dict], shapes, scale_factor: float, key=None, dtype=jnp.float32,
            lowering: str = "im2col"):  # fmt: skip
    """The coarser scales' generators (BatchNorm in eval mode) run from a zero image:
    training.py ``draw_concat`` and manipulate.py ``SinGAN_generate``. Scale k gets noise
    ``coarser[k]["noise_amp"] * z``: z fresh Gaussian noise (``key`` given; single-channel at
    scale 0) or, with ``key=None``, the stored reconstruction noise ``coarser[k]["z_opt"]``
    ('rec'). Returns the last generator's output upsampled by ``1 / scale_factor`` and
    cropped to ``shapes[len(coarser)]``; with ``len(coarser) == len(shapes)``, the finest
    output itself (a random sample)."""
    n = len(coarser)
    g_z = jnp.zeros(shapes[0] + (3,), dtype)
    keys = None if key is None else jax.random.split(key, max(n, 1))
    for k, scale in enumerate(coarser):
        h, w = shapes[k]
        if keys is None:
            z = scale["z_opt"]
        else:
            z = _pad(_noise(keys[k], (h, w), k == 0, dtype))
        g_z = _pad(g_z[:h, :w])
        g_z, _ = _g(scale["g"], scale["g_stats"], scale["noise_amp"] * z + g_z, g_z, False,
                    lowering)  # fmt: skip
        if k + 1 < len(shapes):
            g_z = imresize(g_z, 1 / scale_factor)
            nh, nw = shapes[k + 1]
            if g_z.shape[0] < nh or g_z.shape[1] < nw:
                raise ValueError(f"upsampled scale {k} to {g_z.shape[:2]}, smaller than {nh}x{nw}")
            g_z = g_z[:nh, :nw]
    return g_z


def _adam(params, grads, opt, lr, beta1, beta2=0.999, eps=1e-8):
    """torch.optim.Adam's update (no weight decay), in its order of operations."""
    t = opt["step"] + 1
    m = jax.tree.map(lambda m, g: m + (g - m) * (1 - beta1), opt["m"], grads)
    v = jax.tree.map(lambda v, g: v * beta2 + (1 - beta2) * g * g, opt["v"], grads)
    tf = t.astype(lr.dtype)
    step_size = lr / (1 - beta1**tf)
    bc2_sqrt = jnp.sqrt(1 - beta2**tf)
    new = jax.tree.map(
        lambda p, m, v: p - step_size * (m / (jnp.sqrt(v) / bc2_sqrt + eps)), params, m, v
    )
    return new, {"step": t, "m": m, "v": v}


def adam_init(params) -> dict:
    zeros = jax.tree.map(jnp.zeros_like, params)
    return {"step": jnp.zeros((), jnp.int32), "m": zeros, "v": jax.tree.map(jnp.zeros_like, params)}


def gradient_penalty(d, d_stats, real, fake, mix, lambda_grad, lowering="im2col"):
    """functions.py ``calc_gradient_penalty``: ``lambda * mean_pixels((|grad_x D(x)|_channels
    - 1)^2)`` at ``x = mix * real + (1 - mix) * fake`` (fake detached)."""
    x = mix * real + (1 - mix) * jax.lax.stop_gradient(fake)
    _, vjp, stats = jax.vjp(lambda x: _d(d, d_stats, x, True, lowering), x, has_aux=True)
    (grad,) = vjp(jnp.ones((x.shape[0] - 2 * PAD, x.shape[1] - 2 * PAD, 1), x.dtype))
    sq = jnp.sum(jnp.square(grad), axis=-1)
    safe = jnp.where(sq > 0, sq, 1)
    norm = jnp.where(sq > 0, jnp.sqrt(safe), 0)
    return jnp.mean(jnp.square(norm - 1)) * lambda_grad, stats


def d_step(state, real, fake, mix, lr, settings: Settings):
    """One discriminator step: ``-D(real) + D(fake) + GP``, Adam. BatchNorm statistics are
    updated by the three D passes in the reference's order."""

    def loss_fn(d):
        low = settings.lowering
        out_real, s = _d(d, state["d_stats"], real, True, low)
        out_fake, s = _d(d, s, jax.lax.stop_gradient(fake), True, low)
        gp, s = gradient_penalty(d, s, real, fake, mix, settings.lambda_grad, low)
        err_real, err_fake = -jnp.mean(out_real), jnp.mean(out_fake)
        return err_real + err_fake + gp, (s, jnp.stack([err_real, err_fake, gp]))

    (loss, (stats, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["d"])
    d, opt = _adam(state["d"], grads, state["d_opt"], lr, settings.beta1)
    return {**state, "d": d, "d_stats": stats, "d_opt": opt}, loss, parts


def g_step(state, real, noise, prev, z_rec, z_prev, lr, settings: Settings):
    """One generator step: ``-D(G(noise, prev)) + alpha * MSE(G(z_rec, z_prev), real)``,
    Adam. ``fake`` is recomputed with the current weights (see the module docstring); that
    pass leaves BatchNorm's running statistics alone, the D pass and the reconstruction
    pass update them as in the reference."""

    def loss_fn(g):
        low = settings.lowering
        fake, _ = _g(g, state["g_stats"], noise, prev, True, low)
        out, d_stats = _d(state["d"], state["d_stats"], fake, True, low)
        err_g = -jnp.mean(out)
        rec, g_stats = _g(g, state["g_stats"], z_rec, z_prev, True, low)
        rec_loss = settings.alpha * jnp.mean(jnp.square(rec - real))
        return err_g + rec_loss, (g_stats, d_stats, jnp.stack([err_g, rec_loss]))

    (loss, (g_stats, d_stats, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["g"])
    g, opt = _adam(state["g"], grads, state["g_opt"], lr, settings.beta1)
    new = {**state, "g": g, "g_stats": g_stats, "d_stats": d_stats, "g_opt": opt}
    return new, loss, parts


def _epoch_fn(n: int, shapes, settings: Settings, scale_factor: float):
    """One epoch of train_single_scale at scale ``n`` for one image."""
    h, w = shapes[n]
    first = n == 0

    def epoch(state, consts, key, lr_g, lr_d, preview):
        dtype = consts["real"].dtype
        k_zopt, k_noise, k_prev, k_mix = jax.random.split(key, 4)
        if first:
            state = {**state, "z_opt": _pad(_noise(k_zopt, (h, w), True, dtype))}
        noise_ = _pad(_noise(k_noise, (h, w), first, dtype))
        real, z_prev, amp = consts["real"], consts["z_prev"], consts["noise_amp"]
        prev_keys = jax.random.split(k_prev, settings.d_steps)
        mixes = jax.random.uniform(k_mix, (settings.d_steps,), dtype)

        def d_body(carry, xs):  # (a scan, so that the step compiles once, not d_steps times)
            state, _ = carry
            prev_key, mix = xs
            if first:
                prev = jnp.zeros((h + 2 * PAD, w + 2 * PAD, 3), dtype)
            else:
                prev = _pad(cascade(consts["coarser"], shapes, scale_factor, prev_key, dtype,
                                    settings.lowering))  # fmt: skip
            fake, g_stats = _g(state["g"], state["g_stats"], amp * noise_ + prev, prev, True,
                               settings.lowering)  # fmt: skip
            state = {**state, "g_stats": g_stats}
            state, loss, _ = d_step(state, real, fake, mix, lr_d, settings)
            return (state, prev), loss

        prev0 = jnp.zeros((h + 2 * PAD, w + 2 * PAD, 3), dtype)
        (state, prev), d_losses = jax.lax.scan(d_body, (state, prev0), (prev_keys, mixes))
        noise = amp * noise_ + prev  # the last D step's G input, which the G steps reuse
        z_rec = amp * state["z_opt"] + z_prev

        def g_body(state, _):
            state, loss, _ = g_step(state, real, noise, prev, z_rec, z_prev, lr_g, settings)
            return state, loss

        state, g_losses = jax.lax.scan(g_body, state, None, length=settings.g_steps)
        # The reference's preview image (epoch % 500 == 0, last epoch) is a train-mode pass.
        _, previewed = _g(state["g"], state["g_stats"], z_rec, z_prev, True, settings.lowering)
        g_stats = jax.tree.map(lambda a, b: jnp.where(preview, a, b), previewed, state["g_stats"])
        state = {**state, "g_stats": g_stats}
        return state, {"d_loss": d_losses[-1], "g_loss": g_losses[-1]}

    return epoch


# ---------------------------------------------------------------------------------------------
# Training many images at once
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Trained:
    """A batch of trained SinGANs: per scale, coarsest first, a dict of batched arrays
    ``g``, ``g_stats``, ``z_opt`` (padded reconstruction noise) and ``noise_amp`` (B,)."""

    plan: Plan
    reals: list[np.ndarray]  # per scale, (B, h, w, 3) float32
    scales: list[dict]
    batch: int  # real images (the arrays may hold mesh padding beyond)


def default_mesh(batch: int) -> Mesh:
    devices = jax.local_devices()
    n = max(d for d in range(1, min(batch, len(devices)) + 1) if batch % d == 0)
    return Mesh(np.array(devices[:n]), ("data",))


def _sharded(fn, mesh: Mesh, n_batched: int, n_replicated: int):
    data, rep = PartitionSpec("data"), PartitionSpec()
    mapped = jax.vmap(fn, in_axes=(0,) * n_batched + (None,) * n_replicated)
    return jax.jit(
        jax.shard_map(
            mapped, mesh=mesh, in_specs=(data,) * n_batched + (rep,) * n_replicated,
            out_specs=data, check_vma=False,
        )
    )  # fmt: skip


# Compiled functions by (what, static shapes, settings, mesh): a second call with the same
# image size (the next batch of a compare run) reuses them instead of compiling again.
@functools.lru_cache(maxsize=64)
def _compiled(kind: str, shapes, scale_factor: float, mesh: Mesh, settings=None, n: int = 0,
              steps: int = 0, sizes=()):  # fmt: skip
    if kind == "epoch":
        return _sharded(_epoch_fn(n, shapes, settings, scale_factor), mesh, 3, 3)
    if kind == "reconstruct":
        return _sharded(lambda c: cascade(c, shapes, scale_factor), mesh, 1, 0)
    if kind == "sample":
        return _sharded(lambda s, k: cascade(s, shapes, scale_factor, k), mesh, 2, 0)
    if kind == "sr":
        return _sharded(functools.partial(_sr_one, steps=steps, sizes=sizes, up=scale_factor),
                        mesh, 3, 0)  # fmt: skip
    raise ValueError(kind)


def _image_keys(key, batch: int):
    """Each image's key: ``fold_in(key, i)`` for one key; row i of a (n, 2) array of
    per-image keys (the rows that pad the batch repeat the last)."""
    key = jnp.asarray(key)
    if key.ndim == 2:
        if len(key) > batch:
            raise ValueError(f"singan: {len(key)} image keys for a batch of {batch}")
        return jnp.concatenate([key, jnp.repeat(key[-1:], batch - len(key), axis=0)])
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch))


def restore_keys(seed, batch: int):
    """(training keys, sampling keys) of ``restore``: for an int seed, one key each that
    image i folds in with i; for one seed per image, (B, 2) keys such that image i gets
    exactly the keys it gets alone with its own seed (``dgp-jax compare --batch``)."""
    if np.ndim(seed) == 0:
        return tuple(jax.random.split(jax.random.PRNGKey(int(seed))))
    seeds = [int(s) for s in seed]
    if len(seeds) != batch:
        raise ValueError(f"singan: {len(seeds)} seeds for {batch} images")
    alone = [restore_keys(s, 1) for s in seeds]
    return tuple(jnp.stack([_image_keys(pair[j], 1)[0] for pair in alone]) for j in (0, 1))


def train(
    images: np.ndarray, *, key, settings: Settings = Settings(), sr: bool = False,
    mesh: Mesh | None = None, progress: Callable[[str], None] | None = None,
) -> Trained:  # fmt: skip
    """Train one SinGAN per image, all at once.

    Args:
      images: (B, H, W, 3) uint8, one size for all (the pyramid's shapes are shared).
      key: a JAX key, image i using ``fold_in(key, i)``; or (B, 2) keys, one per image.
      settings: :class:`Settings` (``sr_settings()[0]`` for super-resolution).
      sr: use ``adjust_scales2image_SR``'s pyramid.
      mesh: a ('data',) mesh for the image axis (default: the local devices dividing B).
      progress: called with a line per scale.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 of shape (B, H, W, 3), got {images.dtype} {images.shape}"
        )
    batch, height, width, _ = images.shape
    the_plan = plan(height, width, min_size=settings.min_size, max_size=settings.max_size,
                    scale_factor=settings.scale_factor, sr=sr)  # fmt: skip
    message = upscaled_pyramid_warning(the_plan, height, width)
    if message is not None:
        warnings.warn(message, stacklevel=2)
    mesh = mesh or default_mesh(batch)
    padded = math.ceil(batch / mesh.devices.size) * mesh.devices.size
    images = pad_to(images, padded)
    per_image = [pyramid(from_uint8(im), the_plan) for im in images]
    reals = [np.stack([p[n] for p in per_image]) for n in range(the_plan.num_scales)]
    shard = NamedSharding(mesh, PartitionSpec("data"))
    put = lambda t: jax.device_put(t, shard)  # noqa: E731
    keys = _image_keys(key, padded)
    shapes = the_plan.shapes
    sf = the_plan.scale_factor
    scales: list[dict] = []
    previous = None
    for n, (h, w) in enumerate(shapes):
        channels = nets.channels_at(n, settings.nfc)
        scale_key = jax.vmap(lambda k, n=n: jax.random.fold_in(k, n))(keys)
        if previous is not None and nets.channels_at(n - 1, settings.nfc) == channels:
            g, g_stats, d, d_stats = (previous[k] for k in ("g", "g_stats", "d", "d_stats"))
        else:
            g, g_stats = jax.vmap(lambda k, c=channels: nets.init(
                jax.random.fold_in(k, 0), c, out_channels=3))(scale_key)  # fmt: skip
            d, d_stats = jax.vmap(lambda k, c=channels: nets.init(
                jax.random.fold_in(k, 1), c, out_channels=1))(scale_key)  # fmt: skip
        real = jnp.asarray(reals[n])
        coarser = scales[:n]
        if n == 0:
            z_prev = jnp.zeros((padded, h + 2 * PAD, w + 2 * PAD, 3), jnp.float32)
            amp = jnp.ones((padded,), jnp.float32)
        else:
            rec = _compiled("reconstruct", shapes, sf, mesh)(put(coarser))
            amp = settings.noise_amp * jnp.sqrt(jnp.mean(jnp.square(real - rec), axis=(1, 2, 3)))
            z_prev = jax.vmap(_pad)(rec)
        state = {
            "g": g, "g_stats": g_stats, "d": d, "d_stats": d_stats,
            "g_opt": jax.vmap(adam_init)(g), "d_opt": jax.vmap(adam_init)(d),
            "z_opt": jnp.zeros((padded, h + 2 * PAD, w + 2 * PAD, 3), jnp.float32),
        }  # fmt: skip
        state = put(state)
        consts = put({"real": real, "z_prev": z_prev, "noise_amp": amp, "coarser": coarser})
        step = _compiled("epoch", shapes, sf, mesh, settings, n)
        lr_g, lr_d = settings.lr_g, settings.lr_d
        for epoch in range(settings.iterations):
            drop = settings.gamma if epoch >= settings.lr_milestone else 1.0
            preview = epoch % 500 == 0 or epoch == settings.iterations - 1
            ek = jax.vmap(lambda k, e=epoch: jax.random.fold_in(k, e))(scale_key)
            state, losses = step(state, consts, put(ek), jnp.float32(lr_g * drop),
                                 jnp.float32(lr_d * drop), jnp.bool_(preview))  # fmt: skip
        if progress is not None:
            progress(
                f"scale {n}/{len(shapes) - 1} ({h}x{w}, {channels} ch): "
                f"D loss {float(losses['d_loss'][0]):.4f}, G loss {float(losses['g_loss'][0]):.4f}"
            )
        previous = state
        scales.append({"g": state["g"], "g_stats": state["g_stats"], "z_opt": state["z_opt"],
                       "noise_amp": amp})  # fmt: skip
    return Trained(the_plan, reals, scales, batch)


def random_samples(trained: Trained, key, mesh: Mesh | None = None) -> np.ndarray:
    """One random sample per image (``SinGAN_generate``, gen_start_scale 0): (B, h, w, 3)
    float32 at the finest scale's size."""
    padded = trained.reals[0].shape[0]
    mesh = mesh or default_mesh(padded)
    shapes, sf = trained.plan.shapes, trained.plan.scale_factor
    fn = _compiled("sample", shapes, sf, mesh)
    return np.asarray(fn(trained.scales, _image_keys(key, padded)))[: trained.batch]


def sr_step(scale, x, z):
    """One step of SR.py's chain: the finest G on the (upsampled) image ``x`` plus its noise
    amplitude times ``z``, both padded as in SinGAN_generate."""
    x = _pad(x)
    out, _ = _g(scale["g"], scale["g_stats"], scale["noise_amp"] * _pad(z) + x, x, False)
    return out


def _sr_one(scale, start, key, *, steps: int, sizes, up: float):
    keys = jax.random.split(key, steps)
    x = start
    for j in range(steps):
        if j > 0:
            x = imresize(x, up)
        x = sr_step(scale, x, _noise(keys[j], sizes[j], j == 0, x.dtype))
    return x


def super_resolve(trained: Trained, factor: float, key, mesh: Mesh | None = None) -> np.ndarray:
    """SR.py: ``n`` times imresize by ``factor ** (1 / n)`` then the finest generator (with
    the finest noise amplitude and fresh noise, single-channel at the first step), cropped
    to ``int(factor * size)``. Returns (B, int(factor * h), int(factor * w), 3) float32."""
    _, in_scale, steps = sr_settings(factor)
    up = 1 / (1 / in_scale)  # the reference upsamples by 1 / opt.scale_factor
    padded = trained.reals[0].shape[0]
    mesh = mesh or default_mesh(padded)
    finest = trained.scales[-1]
    lr_images = trained.reals[-1]
    h, w = lr_images.shape[1:3]
    # reals_sr: the LR image upsampled step by step, on the host (float32 like the reference)
    sizes = []
    cur = lr_images[0]
    for _ in range(steps):
        cur = imresize_host(cur, up)
        sizes.append(cur.shape[:2])
    first_inputs = np.stack([imresize_host(x, up) for x in lr_images])

    fn = _compiled("sr", (), up, mesh, steps=steps, sizes=tuple(sizes))
    out = np.asarray(fn(finest, jnp.asarray(first_inputs), _image_keys(key, padded)))
    return out[: trained.batch, : int(factor * h), : int(factor * w)]


# ---------------------------------------------------------------------------------------------
# dgp-jax compare
# ---------------------------------------------------------------------------------------------

_SETTING_KEYS = {f.name for f in dataclasses.fields(Settings)}
SETTINGS = (*sorted(_SETTING_KEYS), "factor", "progress")
"""Settings: the :class:`Settings` fields, the SR factor (``dgp-jax compare`` passes its
``--factor``; φ named 'SR<f>' gives it too) and ``progress`` (bool)."""


def _task(degradation, config: Mapping[str, Any]) -> tuple[str, int | None]:
    name = getattr(degradation, "name", None)
    factor = sr_factor(degradation, config) if name else None
    if factor is not None:
        return "SR", factor
    if name == "identity":
        return "random_samples", None
    raise ValueError(
        f"singan does super-resolution (degradation 'SR<factor>') and random samples (random "
        f"jittering; degradation 'identity'), the tasks DGP compares it on; got degradation "
        f"{name!r}"
    )


def check(config: Mapping[str, Any], *, degradation=None, resolution: int | None = None) -> None:
    """Before any work (``dgp-jax compare``): the task and the settings."""
    config = {k: v for k, v in config.items() if k != "progress"}
    unknown = sorted(set(config) - _SETTING_KEYS - {"factor"})
    if unknown:
        raise ValueError(
            f"singan: unknown config key {unknown[0]!r}; known: {sorted(_SETTING_KEYS)}"
        )
    if degradation is not None:
        task, factor = _task(degradation, config)
        settings = {k: v for k, v in config.items() if k != "factor"}
        if task == "SR":
            sr_settings(factor, **settings)
        else:
            Settings(**settings)


def to_bytes(x: np.ndarray) -> np.ndarray:
    """[-1, 1] images -> the 8-bit images SinGAN reads (rounded, so DGP's 8-bit inputs come
    back exactly)."""
    return np.clip(np.round((np.asarray(x, np.float64) + 1) * 127.5), 0, 255).astype(np.uint8)


def low_resolution(observed: np.ndarray, factor: int) -> np.ndarray:
    """The 8-bit LR images behind DGP's SR observation ``bilinear_up(LR)``: least squares
    (:func:`dgp_jax.baselines.common.low_resolution`) recovers LR to float64 rounding, and
    the 8-bit rounding removes that, so DGP's 8-bit LR comes back exactly."""
    return to_bytes(common.low_resolution(np.asarray(observed, np.float64), factor))


def restore(observed, degradation, *, seed, config: Mapping[str, Any]):
    """dgp_jax.baselines signature. SR (degradation ``SR<f>``): train on the LR image with
    SR.py's settings and super-resolve by ``f``. Identity (random jittering): train on the
    image and draw one random sample; the finest scale is at most ``max_size`` (250) pixels,
    so a larger image's sample is resized back to the image size with imresize. The result
    is clamped to [-1, 1] as the reference clamps the images it saves.

    ``seed``: an int, or one per image; image i then gets the keys it gets alone with its
    own seed (:func:`restore_keys`), so ``dgp-jax compare --batch`` does not change it.

    config keys: the :class:`Settings` fields (``iterations`` to shorten the schedule),
    ``factor`` (SR, needed when φ is named 'SR' without it, as ``degradations.for_mode``
    names it), ``progress`` (bool, default False)."""
    config = dict(config or {})
    progress = config.pop("progress", False)
    check(config, degradation=degradation)
    task, factor = _task(degradation, config)
    config.pop("factor", None)
    observed = np.asarray(observed)
    if observed.ndim != 4 or observed.shape[-1] != 3:
        raise ValueError(f"singan: observed must be (B, H, W, 3), got shape {observed.shape}")
    _, big_h, big_w, _ = observed.shape
    train_key, sample_key = restore_keys(seed, len(observed))
    report = print if progress else None
    if task == "SR":
        settings, _, _ = sr_settings(factor, **config)
        trained = train(low_resolution(observed, factor), key=train_key, settings=settings,
                        sr=True, progress=report)  # fmt: skip
        out = super_resolve(trained, factor, sample_key)
    else:
        settings = Settings(**config)
        trained = train(to_bytes(observed), key=train_key, settings=settings, progress=report)
        out = random_samples(trained, sample_key)
    if out.shape[1:3] != (big_h, big_w):
        out = np.stack([imresize_to_shape_host(x, big_h, big_w) for x in out])
    # G's output is tanh + the upsampled image and can leave [-1, 1]; the reference clamps
    # when it saves (functions.py convert_image_np).
    out = np.clip(out, -1, 1)
    return out.astype(observed.dtype if np.issubdtype(observed.dtype, np.floating) else np.float32)


def main(argv: list[str] | None = None) -> None:
    """``python -m dgp_jax.baselines.singan``: train SinGANs on photos (all at once) and write
    their super-resolved images or random samples as PNGs."""
    import argparse
    from pathlib import Path

    from PIL import Image

    p = argparse.ArgumentParser(prog="python -m dgp_jax.baselines.singan", description=main.__doc__)
    p.add_argument("inputs", nargs="+", help="photos of one size (RGB)")
    p.add_argument("--task", choices=["SR", "random_samples"], required=True,
                   help="SR: the inputs are the low-resolution images")  # fmt: skip
    p.add_argument("--factor", type=int, default=4, help="SR factor (default 4)")
    p.add_argument("--iterations", type=int, default=2000, help="epochs per scale (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    args = p.parse_args(argv)
    images = []
    for path in args.inputs:
        try:
            images.append(np.asarray(Image.open(path).convert("RGB")))
        except OSError as e:
            raise SystemExit(f"cannot read image {path}: {e}") from None
    if len({im.shape for im in images}) != 1:
        shapes = {path: im.shape for path, im in zip(args.inputs, images, strict=True)}
        raise SystemExit(f"all inputs must have one size (one pyramid), got {shapes}")
    key = jax.random.PRNGKey(args.seed)
    train_key, sample_key = jax.random.split(key)
    if args.task == "SR":
        settings, _, _ = sr_settings(args.factor, iterations=args.iterations)
        trained = train(np.stack(images), key=train_key, settings=settings, sr=True, progress=print)
        out = super_resolve(trained, args.factor, sample_key)
    else:
        settings = Settings(iterations=args.iterations)
        trained = train(np.stack(images), key=train_key, settings=settings, progress=print)
        out = random_samples(trained, sample_key)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    for path, image in zip(args.inputs, out, strict=True):
        target = folder / f"{Path(path).stem}_{args.task}.png"
        Image.fromarray(to_uint8(np.clip(image, -1, 1))).save(target)
        print(target, image.shape)


if __name__ == "__main__":
    main()
