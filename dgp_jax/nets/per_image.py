"""How a convolution whose kernel differs per image is lowered under ``vmap``.

The solver ``vmap``s one image's step over the batch, and every image fine-tunes its own
generator. Left to XLA, a convolution with a per-image kernel becomes a grouped
convolution (``feature_group_count = B``) and its kernel gradient a convolution with
``batch_group_count = B``, which XLA:CPU rewrites into a dilated convolution doing about
B times the work. This module gives the generator's convolutions a batching rule that
picks the lowering instead:

``vmap``      XLA's default: grouped convolutions (what plain ``jax.vmap`` does).
``im2col``    the k*k shifted views of each image side by side, then one matrix product
              per image, written as one ``dot_general`` with the image axis as a batch
              dimension (forward and both gradients).
``shifted``   k*k batched matrix products, one per kernel tap, summed: im2col without
              materialising the k*k-times larger patch matrix.
``unrolled``  one ordinary convolution per image of the shard (batch 1 each).
``auto``      per layer, by backend and shape, from measurements (``auto_lowering``).

Outside ``per_image_lowering(...)`` (generation, training, the discriminator, anything
not vmapped with a per-image kernel) ``conv2d`` is ``lax.conv_general_dilated`` itself.
Inside it, the value is the same convolution; only the order of the floating-point sums
differs between lowerings, so float64 results agree to rounding (tested against the
reference trajectories for every lowering).

The rule applies only where both the input and the kernel are batched. A kernel shared
by all images (a frozen layer, the discriminator) is one dense convolution over the
whole batch, whatever the lowering.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_batching import custom_vmap

Array = jax.Array

LOWERINGS = ("vmap", "im2col", "shifted", "unrolled")
CHOICES = ("auto",) + LOWERINGS
_DIMS = ("NHWC", "OIHW", "NHWC")

_ACTIVE: contextvars.ContextVar[str | None] = contextvars.ContextVar("per_image", default=None)


def check_lowering(name: str) -> str:
    if name not in CHOICES:
        raise ValueError(f"lowering must be one of {list(CHOICES)}, got {name!r}")
    return name


@contextlib.contextmanager
def per_image_lowering(name: str | None):
    """While tracing inside this context, ``conv2d`` batches per-image kernels with
    ``name``'s lowering (None: plain ``lax`` convolution, XLA's own batching)."""
    token = _ACTIVE.set(None if name is None else check_lowering(name))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def attention(theta: Array, phi: Array, g: Array) -> Array:
    """softmax(theta phi^T) g over the last two axes: the core of G's self-attention.

    Under the solver's vmap it runs image by image (``lax.map``, forward and gradient),
    whatever the lowering: the attention matrix (positions x positions/4, 16 MB per image
    at 64x64) then stays in cache, where the batched form spills, making a batch slower
    per image than one image (measured: BENCHMARKS.md). The gradient recomputes the
    matrix rather than keeping it.
    """
    if _ACTIVE.get() is None:
        return _plain_attention(theta, phi, g)
    return _mapped_attention(theta, phi, g)


def conv2d(x: Array, w: Array) -> Array:
    """Stride-1 'same' convolution, NHWC input, OIHW kernel (odd, square)."""
    name = _ACTIVE.get()
    if name is None:
        return _plain_conv(x, w)
    return _lowered_conv(name)(x, w)


def im2col_conv(x: Array, w: Array, stride: int = 1, padding=((0, 0), (0, 0))) -> Array:
    """Any 2-D convolution (NHWC input, OIHW kernel, zero ``padding`` per spatial axis) as one
    matrix product of its k*k (strided) shifted views side by side with the kernel.

    Plain jnp ops, no custom rule: under ``vmap`` with a kernel per image the product, its
    gradients and their gradients (SinGAN's gradient penalty) are ``dot_general``s with the
    image axis as a batch dimension, where XLA's own batching makes grouped convolutions.
    The networks of the baselines (DIP, SinGAN) use it; on XLA:CPU it is also faster than
    XLA's convolutions for one image at their shapes (BENCHMARKS.md).
    """
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    out_ch, in_ch, k, _ = w.shape
    h = (x.shape[1] - k) // stride + 1
    w_ = (x.shape[2] - k) // stride + 1
    if k == 1 and stride == 1:
        patches = x
    else:
        patches = jnp.concatenate([
            x[:, i : i + stride * (h - 1) + 1 : stride, j : j + stride * (w_ - 1) + 1 : stride]
            for i in range(k) for j in range(k)], axis=-1)  # fmt: skip
    kernel = jnp.transpose(w, (2, 3, 1, 0)).reshape(k * k * in_ch, out_ch)
    return lax.dot_general(patches, kernel.astype(x.dtype), (((3,), (0,)), ((), ())),
                           precision=lax.Precision.HIGHEST)  # fmt: skip


# --------------------------------------------------------------------------- choice
def auto_lowering(backend: str, height: int, width: int, in_ch: int, out_ch: int, k: int) -> str:
    """The lowering ``auto`` uses for one layer (per backend and shape).

    On XLA:CPU (experiments/bench_lowering.py, table in BENCHMARKS.md): a 1x1 convolution
    is a batched matrix product; a 3x3 one is fastest as one batched matrix product
    (im2col) while the feature map has fewer pixels than half its input channels (8x8 and
    16x16 maps of the wide first blocks), and as per-image convolutions (XLA:CPU's own
    kernels) beyond. XLA's grouped convolutions (``vmap``) were never the fastest.
    """
    if k == 1:
        return "im2col"
    if backend == "cpu":
        return "im2col" if 2 * height * width <= in_ch else "unrolled"
    # GPUs/TPUs: batched matrix products. On an H200 (BENCHMARKS.md "GPU", float32, batch 32)
    # im2col was the fastest on both layers measured, 2.8x to 6.7x ahead at 8x8 3x3; the
    # larger maps and TPUs are not measured yet (experiments/bench_accelerator.py does).
    return "im2col"


def _resolve(name: str, x_shape, w_shape) -> str:
    if name != "auto":
        return name
    _, _, h, w_, _ = x_shape  # (B, N, H, W, C) under the rule
    o, i, k, _ = w_shape[1:]
    return auto_lowering(jax.default_backend(), h, w_, i, o, k)


# --------------------------------------------------------------------------- pieces
def _plain_attention(theta: Array, phi: Array, g: Array) -> Array:
    beta = jax.nn.softmax(theta @ jnp.swapaxes(phi, -1, -2), axis=-1)
    return beta @ g


def _map_over_images(fn, size, in_batched, *args):
    args = [_broadcast(b, a, size) for b, a in zip(in_batched, args, strict=True)]
    return lax.map(lambda a: fn(*a), tuple(args)), True


@custom_vmap
def _attention_forward(theta, phi, g):
    return _plain_attention(theta, phi, g)


@custom_vmap
def _attention_backward(theta, phi, g, d_out):
    return jax.vjp(_plain_attention, theta, phi, g)[1](d_out)


_attention_forward.def_vmap(functools.partial(_map_over_images, _plain_attention))
_attention_backward.def_vmap(
    lambda size, in_batched, *args: (
        _map_over_images(lambda *a: jax.vjp(_plain_attention, *a[:3])[1](a[3]),
                         size, in_batched, *args)[0], (True, True, True))
)  # fmt: skip


@jax.custom_vjp
def _mapped_attention(theta, phi, g):
    return _attention_forward(theta, phi, g)


_mapped_attention.defvjp(
    lambda theta, phi, g: (_attention_forward(theta, phi, g), (theta, phi, g)),
    lambda res, d_out: tuple(_attention_backward(*res, d_out)),
)


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    p = (k - 1) // 2
    return ((p, p), (p, p))


def _plain_conv(x: Array, w: Array) -> Array:
    return lax.conv_general_dilated(x, w, (1, 1), _pad(w.shape[-1]), dimension_numbers=_DIMS)


def _plain_kernel_grad(x: Array, dy: Array, k: int) -> Array:
    """d<conv(x, w), dy>/dw as XLA computes it for one kernel."""
    c, o = x.shape[-1], dy.shape[-1]
    w0 = jnp.zeros((o, c, k, k), x.dtype)
    return jax.vjp(lambda w: _plain_conv(x, w), w0)[1](dy)[0]


def _transposed_kernel(w: Array) -> Array:
    """The kernel whose 'same' convolution is the input gradient of ``w``'s (..., O, I, k, k)."""
    return jnp.flip(jnp.swapaxes(w, -4, -3), axis=(-2, -1))


def _taps(x: Array, k: int) -> list[Array]:
    """The k*k shifted views of x (..., H, W, C) that a 'same' k x k convolution reads,
    in (kh, kw) order."""
    if k == 1:
        return [x]
    p = (k - 1) // 2
    h, w = x.shape[-3], x.shape[-2]
    pad = [(0, 0)] * (x.ndim - 3) + [(p, p), (p, p), (0, 0)]
    xp = jnp.pad(x, pad)
    return [xp[..., i : i + h, j : j + w, :] for i in range(k) for j in range(k)]


def _flat(x: Array) -> Array:
    """(B, N, H, W, C) -> (B, N*H*W, C)."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _batched_matmul(a: Array, b: Array) -> Array:
    """(B, P, K) x (B, O, K) -> (B, P, O)."""
    return lax.dot_general(a, b, (((2,), (2,)), ((0,), (0,))))


# Forward: y[b] = conv(x[b], w[b]); x (B, N, H, W, C), w (B, O, C, k, k).
def _forward_vmap(x, w):
    return jax.vmap(_plain_conv)(x, w)


def _forward_unrolled(x, w):
    return jnp.stack([_plain_conv(x[b], w[b]) for b in range(x.shape[0])])


def _patches(x: Array, k: int) -> Array:
    """(B, N, H, W, C) -> (B, N*H*W, C*k*k): the k*k taps of each pixel in (C, kh, kw)
    order, the order of an OIHW kernel's (I, kh, kw) axes, so that the kernel enters every
    product as the free reshape (O, I*k*k) and is never transposed (a copy of the whole
    kernel per step, the largest cost of the 128 px step before)."""
    if k == 1:
        return _flat(x)
    return _flat(jnp.stack(_taps(x, k), axis=-1).reshape(x.shape[:-1] + (-1,)))


def _forward_im2col(x, w):
    b, o = w.shape[:2]
    # y^T = W patches^T: the kernel is read in its own layout; XLA lays out the patches
    # (written by a fusion anyway) as the product wants. The barrier keeps XLA from
    # folding the output's transpose into the product by swapping its operands, which
    # brings back the kernel's transpose.
    y_t = lax.dot_general(w.reshape(b, o, -1), _patches(x, w.shape[-1]),
                          (((2,), (2,)), ((0,), (0,))))  # fmt: skip
    y_t = lax.optimization_barrier(y_t)
    return jnp.swapaxes(y_t, 1, 2).reshape(x.shape[:-1] + (o,))


def _forward_shifted(x, w):
    k = w.shape[-1]
    y = None
    for t, view in enumerate(_taps(x, k)):
        term = _batched_matmul(_flat(view), w[:, :, :, t // k, t % k])
        y = term if y is None else y + term
    return y.reshape(x.shape[:-1] + (w.shape[1],))


_FORWARD = {"vmap": _forward_vmap, "unrolled": _forward_unrolled,
            "im2col": _forward_im2col, "shifted": _forward_shifted}  # fmt: skip


# Kernel gradient: dw[b] = d<conv(x[b], w), dy[b]>/dw; x (B, N, H, W, C), dy (B, N, H, W, O).
def _kernel_grad_vmap(x, dy, k):
    return jax.vmap(functools.partial(_plain_kernel_grad, k=k))(x, dy)


def _kernel_grad_unrolled(x, dy, k):
    return jnp.stack([_plain_kernel_grad(x[b], dy[b], k) for b in range(x.shape[0])])


def _kernel_grad_im2col(x, dy, k):
    # (B, P, O) x (B, P, C*k*k) -> (B, O, C*k*k): already OIHW.
    g = lax.dot_general(_flat(dy), _patches(x, k), (((1,), (1,)), ((0,), (0,))))
    return g.reshape(x.shape[0], dy.shape[-1], x.shape[-1], k, k)


def _kernel_grad_shifted(x, dy, k):
    dy_flat = _flat(dy)
    taps = [lax.dot_general(dy_flat, _flat(v), (((1,), (1,)), ((0,), (0,)))) for v in _taps(x, k)]
    b, o, c = x.shape[0], dy.shape[-1], x.shape[-1]
    return jnp.stack(taps, axis=-1).reshape(b, o, c, k, k)


# Input gradient: dx[b] = d<conv(x, w[b]), dy[b]>/dx; dy (B, N, H, W, O), w (B, O, C, k, k).
def _input_grad_im2col(dy, w):
    """col2im: the product dy W (the kernel in its own layout) gives each pixel's gradient
    for each of its k*k taps, which are then added back at their shifted positions."""
    b, o, c, k, _ = w.shape
    cols = lax.dot_general(_flat(dy), w.reshape(b, o, -1), (((2,), (1,)), ((0,), (0,))))
    if k == 1:
        return cols.reshape(dy.shape[:-1] + (c,))
    cols = cols.reshape(dy.shape[:-1] + (c, k, k))
    p = (k - 1) // 2
    h, w_ = dy.shape[2], dy.shape[3]
    lead = [(0, 0)] * (dy.ndim - 3)
    padded = sum(
        jnp.pad(cols[..., i, j], lead + [(i, k - 1 - i), (j, k - 1 - j), (0, 0)])
        for i in range(k) for j in range(k)
    )  # fmt: skip
    return padded[..., p : p + h, p : p + w_, :]


def _input_grad_by_forward(name):
    return lambda dy, w: _FORWARD[name](dy, _transposed_kernel(w))


_INPUT_GRAD = {"vmap": _input_grad_by_forward("vmap"),
               "unrolled": _input_grad_by_forward("unrolled"),
               "shifted": _input_grad_by_forward("shifted"),
               "im2col": _input_grad_im2col}  # fmt: skip


_KERNEL_GRAD = {"vmap": _kernel_grad_vmap, "unrolled": _kernel_grad_unrolled,
                "im2col": _kernel_grad_im2col, "shifted": _kernel_grad_shifted}  # fmt: skip


def _broadcast(batched: bool, a: Array, size: int) -> Array:
    return a if batched else jnp.broadcast_to(a, (size,) + a.shape)


@functools.cache
def _lowered_conv(name: str):
    """conv2d with a custom vmap rule for the forward and both gradients."""

    @custom_vmap
    def forward(x, w):
        return _plain_conv(x, w)

    @forward.def_vmap
    def _forward_rule(size, in_batched, x, w):
        x_b, w_b = in_batched
        if not w_b:  # one kernel for every image: a single dense convolution
            flat = _plain_conv(x.reshape((-1,) + x.shape[2:]), w)
            return flat.reshape(x.shape[:2] + flat.shape[1:]), True
        x = _broadcast(x_b, x, size)
        return _FORWARD[_resolve(name, x.shape, w.shape)](x, w), True

    @custom_vmap
    def input_grad(dy, w):
        return _plain_conv(dy, _transposed_kernel(w))

    @input_grad.def_vmap
    def _input_grad_rule(size, in_batched, dy, w):
        dy_b, w_b = in_batched
        if not w_b:  # one kernel for every image: a single dense convolution
            flat = _plain_conv(dy.reshape((-1,) + dy.shape[2:]), _transposed_kernel(w))
            return flat.reshape(dy.shape[:2] + flat.shape[1:]), True
        dy = _broadcast(dy_b, dy, size)
        # The lowering the forward pass of this layer uses (its shapes, not the gradient's).
        x_shape = dy.shape[:-1] + (w.shape[2],)
        return _INPUT_GRAD[_resolve(name, x_shape, w.shape)](dy, w), True

    @custom_vmap
    def kernel_grad(x, dy, w):
        return _plain_kernel_grad(x, dy, w.shape[-1])

    @kernel_grad.def_vmap
    def _kernel_grad_rule(size, in_batched, x, dy, w):
        x_b, dy_b, w_b = in_batched
        x, dy = _broadcast(x_b, x, size), _broadcast(dy_b, dy, size)
        k = w.shape[-1]
        w_shape = w.shape if w_b else (size,) + w.shape
        return _KERNEL_GRAD[_resolve(name, x.shape, w_shape)](x, dy, k), True

    @jax.custom_vjp
    def conv(x, w):
        return forward(x, w)

    def conv_fwd(x, w):
        return forward(x, w), (x, w)

    def conv_bwd(res, dy):
        x, w = res
        # Stride 1, symmetric 'same' padding: the input gradient is the 'same'
        # convolution of dy with the transposed, flipped kernel (or im2col's col2im).
        return input_grad(dy, w), kernel_grad(x, dy, w)

    conv.defvjp(conv_fwd, conv_bwd)
    return conv
