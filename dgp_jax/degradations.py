"""Degradation transforms φ of Deep Generative Prior (DGP).

DGP restores an image by fitting a generator G so that φ(G(z)) matches φ(target): the same
degradation φ is applied once to the target and to G's output at every optimisation step.
The reference applies φ in two slightly different ways, and both are reproduced here:

* the *target side* runs once on the host, in numpy, and may be non-differentiable (for
  super-resolution the reference quantises the target to 8 bits and downsamples it with
  PIL's Lanczos resize);
* the *generator side* runs inside the optimisation loop, in JAX, and must be differentiable,
  jit- and vmap-friendly (for super-resolution it is a fixed lanczos2 convolution).

Conventions: images are channels-last arrays in [-1, 1] of shape (..., H, W, C), usually
(B, H, W, 3); any leading axes are treated as batch axes, so a single (H, W, 3) image works
too and ``jax.vmap`` over a batch gives the per-image results. The dtype follows the input
(float32 or float64); constants (kernels, masks, interpolation weights) are cast to it.

The pieces are bundled by :class:`Degradation` (a ``target_fn`` / ``generator_fn`` pair),
combined with :func:`compose`, and :func:`for_mode` maps the reference's ``dgp_mode`` names
to the degradation that mode uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from dgp_jax.checks import is_int, mask_values

__all__ = [
    "MASK_MODES",
    "MODES",
    "Degradation",
    "apply_mask",
    "center_mask",
    "colorization",
    "compose",
    "custom",
    "downsample_generator",
    "downsample_target",
    "for_mode",
    "grayscale",
    "hole_box",
    "identity",
    "inpainting",
    "lanczos2_kernel",
    "super_resolution",
    "to_gray",
    "upsample_bilinear",
]

Array = Any  # a numpy or jax array

# The reference's dgp_mode names. The reference's trainer spells the adversarial-defence
# mode 'defence'; both spellings are accepted.
MODES: tuple[str, ...] = (
    "reconstruct",
    "colorization",
    "inpainting",
    "SR",
    "hybrid",
    "defense",
    "defence",
    "jitter",
    "morphing",
    "category_transfer",
)
# The modes whose degradation removes a hole (an inpainting mask; the centre square unless
# one is given): the only ones a mask, or a metric of the hole, applies to.
MASK_MODES: tuple[str, ...] = ("inpainting", "hybrid")

# ITU-R 601 luma weights, exactly as the reference writes them.
_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------


def _check_image(x: Array, what: str = "image") -> tuple[int, int, int]:
    """Return (H, W, C) of a (..., H, W, C) array, or raise a ValueError naming its shape."""
    if x.ndim < 3:
        raise ValueError(
            f"{what} must have shape (..., H, W, C) (channels last), got shape {tuple(x.shape)}"
        )
    h, w, c = x.shape[-3:]
    return int(h), int(w), int(c)


def _check_factor(factor: Any) -> int:
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    return int(factor)


def _check_divides(factor: int, height: int, width: int) -> None:
    if height % factor or width % factor:
        raise ValueError(
            f"factor {factor} does not divide the image size {height}x{width} (H x W); "
            "the low-resolution image could not be upsampled back to the same size"
        )


def _check_float(x: Array, what: str = "image") -> None:
    if not np.issubdtype(np.dtype(x.dtype), np.floating):
        raise TypeError(f"{what} must be a floating-point array in [-1, 1], got dtype {x.dtype}")


# ---------------------------------------------------------------------------------------------
# Grayscale
# ---------------------------------------------------------------------------------------------


def _gray(x: Array, xp: Any) -> Array:
    # Same expression and evaluation order as the reference, so float64 results agree bitwise.
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    gray = _GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b
    return xp.repeat(gray[..., None], 3, axis=-1)


def to_gray(x: Array) -> jax.Array:
    """Luma 0.2989 R + 0.5870 G + 0.1140 B, repeated on the 3 channels.

    Args:
      x: (..., H, W, 3) RGB image(s) in [-1, 1]. The weights sum to 0.9999, so a [-1, 1]
        image stays (almost exactly) in [-1, 1]; the reference applies them to the [-1, 1]
        values directly and so do we.

    Returns:
      (..., H, W, 3) array of the input's dtype, the three channels equal.
    """
    x = jnp.asarray(x)
    _, _, c = _check_image(x)
    if c != 3:
        raise ValueError(f"to_gray needs 3 channels (RGB), got shape {tuple(x.shape)}")
    return _gray(x, jnp)


# ---------------------------------------------------------------------------------------------
# Inpainting mask
# ---------------------------------------------------------------------------------------------


def hole_box(height: int, width: int) -> tuple[int, int]:
    """(begin, end) of the reference's centre hole: rows and columns begin..end-1.

    hole = min(H, W) // 3, begin = (H - hole) // 2, end = H - begin (42 px at 128, 86 px
    at 256). Like the reference, the column range is computed from H as well; the two agree
    for the square images DGP works on.
    """
    if not (is_int(height) and is_int(width)):
        raise ValueError(f"image size must be integers, got height={height!r}, width={width!r}")
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    hole = min(height, width) // 3
    begin = (height - hole) // 2
    end = height - begin
    return begin, end


def center_mask(height: int, width: int, dtype: Any = np.float32) -> np.ndarray:
    """The reference's inpainting mask: (H, W, 1) ones with a zero square hole in the centre.

    1 = pixel kept, 0 = pixel removed; see :func:`hole_box` for the hole's position. Returned
    as a numpy constant so that it can be closed over by jitted code.
    """
    begin, end = hole_box(height, width)
    mask = np.ones((int(height), int(width), 1), dtype=dtype)
    mask[begin:end, begin:end] = 0
    return mask


def _normalise_mask(mask: Array) -> Array:
    """Accept (H, W), (H, W, 1) or (B, H, W, 1) masks; return (..., H, W, 1)."""
    if mask.ndim == 2:
        return mask[..., None]
    if mask.ndim in (3, 4) and mask.shape[-1] == 1:
        return mask
    raise ValueError(
        f"mask must have shape (H, W), (H, W, 1) or (B, H, W, 1), got {tuple(mask.shape)}"
    )


def _check_mask_matches(mask: Array, image_shape: Sequence[int]) -> None:
    if tuple(mask.shape[-3:-1]) != tuple(image_shape[-3:-1]):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match image shape {tuple(image_shape)}: "
            "the mask's H and W must equal the image's"
        )
    if mask.ndim == 4 and len(image_shape) == 4 and mask.shape[0] not in (1, image_shape[0]):
        raise ValueError(
            f"{mask.shape[0]} masks {tuple(mask.shape)} for {image_shape[0]} images "
            f"{tuple(image_shape)}: one mask, or one per image"
        )


def apply_mask(x: Array, mask: Array) -> jax.Array:
    """x * mask, removing the pixels where the mask is 0.

    Args:
      x: (..., H, W, C) image(s) in [-1, 1]. Removed pixels become 0, i.e. mid-grey, as in
        the reference.
      mask: (H, W, 1), (B, H, W, 1) (one mask per image) or (H, W); 1 = keep. Free-form
        masks are allowed; soft values in between scale the pixel.

    Returns:
      Array of x's shape and dtype.
    """
    x = jnp.asarray(x)
    _check_image(x)
    mask = _normalise_mask(jnp.asarray(mask))
    _check_mask_matches(mask, x.shape)
    return x * mask.astype(x.dtype)


# ---------------------------------------------------------------------------------------------
# Super-resolution: downsampling (generator and target side) and bilinear upsampling
# ---------------------------------------------------------------------------------------------


def lanczos2_kernel(factor: int) -> np.ndarray:
    """The reference Downsampler's kernel (kernel_type 'lanczos2', phase 0.5).

    Lanczos window with support 2 and nominal width 4*factor + 1; with phase 0.5 the taps
    sit between pixels, so the kernel array is (4*factor) x (4*factor). It is the outer
    product of the 1-D Lanczos taps, normalised to sum 1. The arithmetic follows the
    reference's expression order so that the float64 values agree to the last bit.

    Returns:
      float64 array of shape (4*factor, 4*factor).
    """
    factor = _check_factor(factor)
    support = 2
    kernel_width = 4 * factor + 1
    center = (kernel_width + 1) / 2.0
    idx = np.arange(1, kernel_width, dtype=np.float64)  # 1 .. kernel_width - 1
    d = np.abs(idx + 0.5 - center) / factor  # never 0 with phase 0.5
    # Factors of sinc(d) * sinc(d / support) kept apart: the reference multiplies them into
    # the running product one at a time (row tap, then each factor of the column tap), and
    # that order decides the last bit.
    sin_1 = np.sin(np.pi * d)
    sin_2 = np.sin(np.pi * d / support)
    den = np.pi * np.pi * d * d
    row = support * sin_1 * sin_2 / den
    kernel = row[:, None] * support * sin_1[None, :] * sin_2[None, :] / den[None, :]
    kernel /= kernel.sum()
    return kernel


def downsample_generator(x: Array, factor: int) -> jax.Array:
    """Generator-side downsampling by ``factor``: the reference's lanczos2 Downsampler.

    On (x + 1) / 2: replicate padding of (k - factor) // 2 pixels (k = 4*factor, the kernel
    size), per-channel convolution with :func:`lanczos2_kernel` at stride ``factor``, then
    back to [-1, 1]. Differentiable; used on G's output at every step.

    Args:
      x: (..., H, W, C) image(s) in [-1, 1]; ``factor`` must divide H and W.

    Returns:
      (..., H / factor, W / factor, C) array of x's dtype.
    """
    factor = _check_factor(factor)
    x = jnp.asarray(x)
    _check_float(x)
    h, w, c = _check_image(x)
    _check_divides(factor, h, w)
    kernel = lanczos2_kernel(factor)
    k = kernel.shape[0]
    pad = (k - factor) // 2
    lead = x.shape[:-3]
    v = (x.reshape((-1, h, w, c)) + 1) / 2
    v = jnp.pad(v, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    # Depthwise conv (feature_group_count = C): the reference's conv has the kernel on its
    # diagonal and zeros elsewhere, which is the same map. HIGHEST precision keeps float32
    # matmul-based convs on accelerators from dropping to bf16/tf32.
    rhs = jnp.broadcast_to(jnp.asarray(kernel, dtype=x.dtype)[:, :, None, None], (k, k, 1, c))
    out = jax.lax.conv_general_dilated(
        v,
        rhs,
        window_strides=(factor, factor),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
        precision=jax.lax.Precision.HIGHEST,
    )
    out = out * 2 - 1
    return out.reshape(lead + out.shape[1:])


def downsample_target(x: Array, factor: int) -> np.ndarray:
    """Target-side downsampling by ``factor``, exactly as the reference prepares an SR target.

    Host side, numpy, not differentiable. Per image: (x + 1) / 2, quantised to uint8 by
    truncation (clip(v * 255, 0, 255).astype(uint8)), PIL ``resize((W // f, H // f), LANCZOS)``,
    divided by 255 in float32 (the reference's ``pil_to_np`` works in float32, which moves
    values by up to ~6e-8; we keep that rounding to reproduce its numbers), then cast to the
    input dtype and mapped back to [-1, 1].

    Args:
      x: (..., H, W, 3) (or 1-channel) image(s) in [-1, 1]; ``factor`` must divide H and W.

    Returns:
      (..., H / factor, W / factor, C) numpy array of x's dtype.
    """
    factor = _check_factor(factor)
    x = np.asarray(x)
    _check_float(x)
    h, w, c = _check_image(x)
    if c not in (1, 3):
        raise ValueError(f"downsample_target needs 1 or 3 channels, got shape {x.shape}")
    _check_divides(factor, h, w)
    if np.isnan(x).any():
        # uint8 quantisation would turn NaN into 0 (-1 after the round trip) without a trace
        raise ValueError(
            f"downsample_target: the image(s) {x.shape} hold NaN at "
            f"{np.argwhere(np.isnan(x))[0].tolist()} (first); the 8-bit target needs finite values"
        )
    v = (x + 1) / 2
    quantised = np.clip(v * 255, 0, 255).astype(np.uint8).reshape((-1, h, w, c))
    size = (w // factor, h // factor)  # PIL sizes are (width, height)
    low = []
    for im in quantised:
        pil = Image.fromarray(im[..., 0] if c == 1 else im)
        arr = np.asarray(pil.resize(size, Image.Resampling.LANCZOS))
        low.append(arr.reshape(size[1], size[0], c))
    unit = (np.stack(low).astype(np.float32) / np.float32(255)).astype(x.dtype)
    out = unit * 2 - 1
    return out.reshape(x.shape[:-3] + out.shape[1:])


def _linear_taps(n_in: int, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of torch's bilinear upsampling along one axis.

    align_corners=False with an explicit scale_factor: src = (dst + 0.5) / f - 0.5, clamped
    below at 0; the upper neighbour is clamped to the last pixel (edge replication).
    """
    dst = np.arange(n_in * factor, dtype=np.float64)
    src = np.maximum((1.0 / factor) * (dst + 0.5) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = np.clip(src - i0, 0.0, 1.0)
    return i0, i1, 1.0 - lam, lam


def _upsample_bilinear(x: Array, factor: int, xp: Any) -> Array:
    h, w, _ = x.shape[-3:]
    # Width first, then height: torch's CPU kernel evaluates
    # wh0 * (ww0 * x00 + ww1 * x01) + wh1 * (ww0 * x10 + ww1 * x11), and this order gives the
    # same roundings.
    j0, j1, a0, a1 = _linear_taps(w, factor)
    a0, a1 = (xp.asarray(a[:, None], dtype=x.dtype) for a in (a0, a1))
    x = xp.take(x, j0, axis=-2) * a0 + xp.take(x, j1, axis=-2) * a1
    i0, i1, b0, b1 = _linear_taps(h, factor)
    b0, b1 = (xp.asarray(b[:, None, None], dtype=x.dtype) for b in (b0, b1))
    return xp.take(x, i0, axis=-3) * b0 + xp.take(x, i1, axis=-3) * b1


def upsample_bilinear(x: Array, factor: int) -> jax.Array:
    """Bilinear upsampling by an integer ``factor``, as torch's
    ``F.interpolate(x, scale_factor=factor, mode='bilinear', align_corners=False)``.

    Half-pixel centres, edges clamped (replicated). Written out as two gathers and lerps
    rather than ``jax.image.resize``: resize agrees only to rounding (it builds normalised
    weight matrices and contracts them, which on accelerators may also run at reduced
    matmul precision in float32), while this reproduces torch's arithmetic.

    Args:
      x: (..., H, W, C) image(s) in [-1, 1].

    Returns:
      (..., H * factor, W * factor, C) array of x's dtype.
    """
    factor = _check_factor(factor)
    x = jnp.asarray(x)
    _check_float(x)
    _check_image(x)
    return _upsample_bilinear(x, factor, jnp)


# ---------------------------------------------------------------------------------------------
# Composable degradations
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Degradation:
    """A degradation φ as the pair of ways DGP applies it.

    Attributes:
      name: a short label ('SR4', 'gray', 'inpainting', 'SR2+gray+inpainting', ...).
      target_fn: host side, numpy in / numpy out, (..., H, W, 3) in [-1, 1] -> same shape and
        dtype; applied once to the target image. Need not be differentiable.
      generator_fn: JAX, differentiable, jit/vmap-friendly, (..., H, W, 3) in [-1, 1] -> same
        shape and dtype; applied to G's output at every step. With ``per_image`` it is
        called per image as ``generator_fn(x, per_image[i])``.
      per_image: (B, ...) data that differs between the images of a batch (one inpainting
        mask per image), or None. The solver passes image i's row to ``generator_fn`` as
        data, so batches with other masks reuse the compiled program.
      mask: the inpainting keep-mask ((H, W, 1) or (B, H, W, 1), 1 = keep) when one was
        given, so that metrics can score its hole; None for the reference's centre hole
        and for the other degradations.

    Frozen (hence hashable: the arrays are left out of hash and equality), so a Degradation
    can be a static argument of ``jax.jit``.
    """

    name: str
    target_fn: Callable[[np.ndarray], np.ndarray]
    generator_fn: Callable[..., jax.Array]
    per_image: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    mask: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)


def _chain(fns: Sequence[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def chained(x: Any) -> Any:
        for fn in fns:
            x = fn(x)
        return x

    return chained


def identity() -> Degradation:
    """φ(x) = x (reconstruction, and the modes that reconstruct first)."""
    return Degradation("identity", lambda x: np.asarray(x), lambda x: x)


def compose(*degradations: Degradation) -> Degradation:
    """Apply ``degradations`` in the given order, on both the target and the generator side.

    ``compose(a, b)`` is b ∘ a: a first. ``compose()`` is the identity.
    """
    for d in degradations:
        if not isinstance(d, Degradation):
            raise TypeError(f"compose takes Degradation objects, got {type(d).__name__}: {d!r}")
    if not degradations:
        return identity()
    if len(degradations) == 1:
        return degradations[0]
    per_image = [d.name for d in degradations if d.per_image is not None]
    if per_image:
        raise ValueError(
            f"compose() takes degradations that are the same for every image; {per_image} "
            "holds one mask per image: compose with a single (H, W, 1) mask"
        )
    return Degradation(
        "+".join(d.name for d in degradations),
        _chain([d.target_fn for d in degradations]),
        _chain([d.generator_fn for d in degradations]),
    )


def _gray_target(x: Array) -> np.ndarray:
    x = np.asarray(x)
    _, _, c = _check_image(x)
    if c != 3:
        raise ValueError(f"grayscale needs 3 channels (RGB), got shape {x.shape}")
    return _gray(x, np)


def grayscale() -> Degradation:
    """Colorization's φ: :func:`to_gray` on both sides."""
    return Degradation("gray", _gray_target, to_gray)


def colorization() -> Degradation:
    """Alias of :func:`grayscale` named after the reference mode."""
    return grayscale()


def inpainting(
    mask: Array | None = None, height: int | None = None, width: int | None = None
) -> Degradation:
    """Inpainting's φ: multiply by a mask (1 = keep).

    Args:
      mask: (H, W), (H, W, 1) or (B, H, W, 1) mask. Default: the reference's centre hole
        (:func:`center_mask`), which needs ``height`` and ``width``. With B masks, image
        i of a batch of B gets mask i: the masks are per-image data of the solver
        (``Degradation.per_image``), and ``generator_fn(x, mask_i)`` takes one image's.
        A (1, H, W, 1) mask is per-image data too, so one-image batches with other masks
        reuse the compiled program; an (H, W) or (H, W, 1) mask is compiled in.
      height, width: image size. With a mask they are optional and, when given, checked
        against the mask's shape.
    """
    if mask is None:
        if height is None or width is None:
            raise ValueError(
                "inpainting() needs either a mask or the image height and width for the "
                f"default centre hole, got height={height!r}, width={width!r}"
            )
        mask_np = center_mask(height, width, np.float32)
    else:
        mask_np = _normalise_mask(np.asarray(mask))
        mask_values(mask_np)
        if (height is not None and mask_np.shape[-3] != height) or (
            width is not None and mask_np.shape[-2] != width
        ):
            raise ValueError(
                f"mask shape {tuple(np.shape(mask))} does not match the image size "
                f"{height}x{width} (H x W)"
            )

    def target_fn(x: Array) -> np.ndarray:
        x = np.asarray(x)
        _check_image(x)
        _check_mask_matches(mask_np, x.shape)
        return x * mask_np.astype(x.dtype)

    # A (B, H, W, 1) stack is per-image data even for B = 1, so solving a stack's masks one
    # by one reuses one compiled program instead of baking each mask in as a constant.
    if mask is not None and mask_np.ndim == 4:
        return Degradation("inpainting", target_fn, apply_mask, per_image=mask_np, mask=mask_np)

    def generator_fn(x: jax.Array) -> jax.Array:
        return apply_mask(x, mask_np)

    return Degradation("inpainting", target_fn, generator_fn,
                       mask=None if mask is None else mask_np)  # fmt: skip


def super_resolution(factor: int) -> Degradation:
    """Super-resolution's φ: downsample by ``factor`` and upsample back bilinearly.

    Target side: :func:`downsample_target` (8-bit quantisation, PIL Lanczos). Generator side:
    :func:`downsample_generator` (lanczos2 conv). Both then :func:`upsample_bilinear`, so φ
    keeps the image size and ``factor`` must divide it.
    """
    factor = _check_factor(factor)

    def target_fn(x: Array) -> np.ndarray:
        return _upsample_bilinear(downsample_target(x, factor), factor, np)

    def generator_fn(x: jax.Array) -> jax.Array:
        return upsample_bilinear(downsample_generator(x, factor), factor)

    return Degradation(f"SR{factor}", target_fn, generator_fn)


def custom(
    generator_fn: Callable[[jax.Array], jax.Array],
    target_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    name: str = "custom",
) -> Degradation:
    """A user-defined φ.

    Args:
      generator_fn: differentiable JAX function, (..., H, W, 3) in [-1, 1] -> (..., H, W, 3):
        ``restore`` refuses a φ that changes the image size, because its feature loss runs
        the discriminator on φ(G(z)) at the model's size (SR upsamples back to it).
      target_fn: numpy function for the target. Default: ``generator_fn`` run through JAX on
        the target and converted back to numpy in the target's dtype (without
        ``jax_enable_x64`` a float64 target is then computed in float32).
      name: label.
    """
    if not callable(generator_fn):
        raise TypeError(f"generator_fn must be callable, got {generator_fn!r}")
    if target_fn is None:

        def target_fn(x: Array) -> np.ndarray:
            x = np.asarray(x)
            return np.asarray(generator_fn(jnp.asarray(x))).astype(x.dtype)

    elif not callable(target_fn):
        raise TypeError(f"target_fn must be callable or None, got {target_fn!r}")
    return Degradation(name, target_fn, generator_fn)


def for_mode(
    mode: str,
    resolution: int,
    factor: int | None = None,
    mask: Array | None = None,
) -> Degradation:
    """The degradation the reference uses for its ``dgp_mode``.

    * 'reconstruct', 'defense' (also spelled 'defence'), 'jitter', 'morphing',
      'category_transfer': identity (the manipulation modes reconstruct first).
    * 'colorization': :func:`grayscale`.
    * 'inpainting': :func:`inpainting` with ``mask`` or the centre hole.
    * 'SR': :func:`super_resolution`, ``factor`` 4 by default.
    * 'hybrid': super-resolution (``factor`` 2 by default), then grayscale, then the mask —
      the reference's order.

    Args:
      mode: one of :data:`MODES`.
      resolution: the (square) image size H = W.
      factor: SR factor, only for 'SR' and 'hybrid'; must divide ``resolution``.
      mask: inpainting mask, only for 'inpainting' and 'hybrid'; (H, W), (H, W, 1) or
        (B, H, W, 1) with H = W = ``resolution``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown DGP mode {mode!r}; valid modes: {', '.join(MODES)}")
    if not is_int(resolution) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    resolution = int(resolution)
    if factor is not None and mode not in ("SR", "hybrid"):
        raise ValueError(f"factor={factor!r} applies only to modes 'SR' and 'hybrid', not {mode!r}")
    if mask is not None and mode not in MASK_MODES:
        raise ValueError(f"a mask applies only to modes 'inpainting' and 'hybrid', not {mode!r}")
    if mode in ("SR", "hybrid"):
        factor = _check_factor(factor if factor is not None else (4 if mode == "SR" else 2))
        if resolution % factor:
            raise ValueError(f"factor {factor} does not divide the resolution {resolution}")

    if mode == "colorization":
        deg = grayscale()
    elif mode == "inpainting":
        deg = inpainting(mask, resolution, resolution)
    elif mode == "SR":
        deg = super_resolution(factor)
    elif mode == "hybrid":
        deg = compose(
            super_resolution(factor), grayscale(), inpainting(mask, resolution, resolution)
        )
    else:
        deg = identity()
    return dataclasses.replace(deg, name=mode)
