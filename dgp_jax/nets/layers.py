"""BigGAN-PyTorch layers in Flax, with weights stored in PyTorch's layout.

Conventions, chosen so a converted checkpoint is a renaming and nothing else:

* Activations are NHWC; conv kernels stay OIHW and linear weights (out, in), as in the
  ``.pth`` files. ``lax.conv_general_dilated`` takes the layouts as arguments, so nothing is
  transposed at load or export time.
* Trainable weights live in the ``params`` collection; non-trained state (spectral-norm
  vectors ``u0``/``sv0``, BN ``stored_mean``/``stored_var``) in ``buffers``. The solver
  differentiates, vmaps and shards ``params`` alone.
* Module names are the PyTorch module paths (``blocks.0.0``, ``output_layer.2``), so
  flattening either collection with ``"."`` gives the checkpoint keys.
* Every layer takes ``train=False`` (evaluation mode, what DGP uses). ``train=True`` is
  BigGAN-PyTorch's ``.train()`` mode and needs ``mutable=["buffers"]``: spectral norm
  writes its power-iteration ``u`` and ``sigma`` back to ``u0``/``sv0``, and BN normalises
  with the batch statistics and updates ``stored_mean``/``stored_var`` as running
  averages (momentum 0.1, unbiased variance, as ``F.batch_norm``).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dgp_jax.nets.per_image import attention, conv2d

PARAMS = "params"
BUFFERS = "buffers"
# A frozen network's spectrally normalised weights, computed once (``freeze_spectral_norm``)
# instead of at every call: the solver's discriminator never changes, and redoing its power
# iterations and kernel copies in every call cost 26 % of a 128 px selection forward
# (BENCHMARKS.md).
SPECTRAL_NORMALIZED = "spectral_normalized"
INSTANCE_NORM = "instance_norm"

Array = jax.Array


def _normalize(x: Array, eps: float) -> Array:
    """torch.nn.functional.normalize on a (1, n) row: x / max(||x||, eps)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def _times_transpose(row: Array, w_mat: Array) -> Array:
    """row (1, K) times w_mat (O, K) transposed: (1, O)."""
    return lax.dot_general(row, w_mat, (((1,), (1,)), ((), ())))


def power_iteration(weight: Array, u: Array, eps: float) -> tuple[Array, Array]:
    """One step of BigGAN-PyTorch's power iteration from the stored ``u``: (u', sigma).

    u, v and u' carry no gradient; sigma = v W^T u'^T does (through W).
    """
    w_mat = weight.reshape(weight.shape[0], -1)
    w_const = lax.stop_gradient(w_mat)
    u = lax.stop_gradient(u)
    v = _normalize(u @ w_const, eps)
    # v W^T without W^T: XLA:CPU materialised the transposed weight (its largest copies
    # in the solver's step, where G's weights change every step).
    u_next = _normalize(_times_transpose(v, w_const), eps)
    sigma = (_times_transpose(v, w_mat) @ u_next[0])[0]
    return u_next, sigma


def spectral_normalize(weight: Array, u: Array, eps: float) -> Array:
    """Divide ``weight`` by its top singular value, estimated from the stored ``u``.

    One power iteration at evaluation time, as BigGAN-PyTorch does in ``eval()``: the
    stored u is not updated.
    """
    _, sigma = power_iteration(weight, u, eps)
    return weight / sigma


def freeze_spectral_norm(module: nn.Module, variables: dict, *args, **kwargs) -> dict:
    """``variables`` plus, under ``SPECTRAL_NORMALIZED``, every spectrally normalised weight that
    ``module.apply(variables, *args, **kwargs)`` (evaluation mode) uses, computed once:
    applied with the result, the module skips the power iterations and reads convolution
    kernels in XLA's HWIO layout. Same values as recomputing them (the same function)."""
    _, state = module.apply(variables, *args, mutable=[SPECTRAL_NORMALIZED], **kwargs)
    return {**variables, SPECTRAL_NORMALIZED: state[SPECTRAL_NORMALIZED]}


def _hwio_conv(x: Array, kernel: Array) -> Array:
    pad = (kernel.shape[0] - 1) // 2
    return lax.conv_general_dilated(x, kernel, (1, 1), ((pad, pad), (pad, pad)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip


def _input_grad_kernel(kernel: Array) -> Array:
    """The HWIO kernel whose 'same' convolution is the input gradient of ``kernel``'s:
    flipped in space, in and out swapped."""
    return jnp.flip(jnp.swapaxes(kernel, 2, 3), axis=(0, 1))


@jax.custom_vjp
def frozen_conv(x: Array, kernel: Array, kernel_t: Array) -> Array:
    """Stride-1 'same' convolution by a frozen HWIO ``kernel``, whose input gradient uses
    the precomputed ``kernel_t`` (``_input_grad_kernel(kernel)``) instead of flipping and
    transposing the kernel in every backward pass (XLA:CPU copies it each time: 0.2 s per
    1536-channel layer of the 128 px discriminator). Frozen means constant: the kernels
    get no gradient."""
    return _hwio_conv(x, kernel)


def _frozen_conv_fwd(x, kernel, kernel_t):
    return _hwio_conv(x, kernel), (kernel, kernel_t)


def _frozen_conv_bwd(res, dy):
    kernel, kernel_t = res
    return _hwio_conv(dy, kernel_t), jnp.zeros_like(kernel), jnp.zeros_like(kernel_t)


frozen_conv.defvjp(_frozen_conv_fwd, _frozen_conv_bwd)


def orthogonal_init(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
    """torch.nn.init.orthogonal_ on the (out, rest) view of a PyTorch-layout weight.

    QR has no bfloat16 kernel, and jax 0.11 refuses the dtype even abstractly, where flax
    checks a stored parameter's shape against its initialiser (every ``apply`` of a layer
    run at ``--precision bfloat16``: seen on an H200). A weight of a narrower dtype is
    drawn in float32 and cast.
    """
    flat = (shape[0], math.prod(shape[1:]))
    wide = jnp.dtype(dtype) if jnp.dtype(dtype) in (jnp.float32, jnp.float64) else jnp.float32
    return nn.initializers.orthogonal()(key, flat, wide).astype(dtype).reshape(shape)


def _unit_row(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
    u = jax.random.normal(key, shape, dtype)
    return u / jnp.linalg.norm(u)


class _SNWeight(nn.Module):
    """Base for spectrally normalised layers: a weight plus its u0/sv0 buffers.

    The SN buffers sit beside the weight (``conv1.u0`` next to ``conv1.weight``), so this
    module creates them itself rather than through a child module.
    """

    eps: float

    def _freezing(self) -> bool:
        """Inside ``freeze_spectral_norm`` (not ``init``, where every collection is mutable)."""
        return self.is_mutable_collection(SPECTRAL_NORMALIZED) and not self.is_initializing()

    def normalized_weight(self, shape: tuple[int, ...], dtype, train: bool = False,
                          store: bool = True) -> Array:  # fmt: skip
        if not train and self.has_variable(SPECTRAL_NORMALIZED, "weight"):
            return self.get_variable(SPECTRAL_NORMALIZED, "weight")
        weight = self.param("weight", orthogonal_init, shape, dtype)
        u = self.variable(
            BUFFERS, "u0", lambda: _unit_row(self.make_rng(PARAMS), (1, shape[0]), dtype)
        )
        sv = self.variable(BUFFERS, "sv0", lambda: jnp.ones((1,), dtype))
        if not train:
            normalized = spectral_normalize(weight, u.value, self.eps)
            if store and self._freezing():
                self.put_variable(SPECTRAL_NORMALIZED, "weight", normalized)
            return normalized
        # Training mode: the power iteration advances, as SN.W_() under .train().
        u_next, sigma = power_iteration(weight, u.value, self.eps)
        if not self.is_initializing():
            u.value = u_next
            sv.value = lax.stop_gradient(sigma).reshape(1)
        return weight / sigma


class SNConv2d(_SNWeight):
    """Spectrally normalised conv, stride 1, 'same' padding; NHWC in, OIHW kernel."""

    features: int = 0
    kernel_size: int = 3
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        k = self.kernel_size
        if not train and self.has_variable(SPECTRAL_NORMALIZED, "weight_hwio"):
            # Frozen: stored in the kernel layout XLA's convolutions use, and with the
            # kernel of the input gradient beside it, so that a step (the solver's D: its
            # input gradient) copies no kernel.
            kernel = self.get_variable(SPECTRAL_NORMALIZED, "weight_hwio").astype(x.dtype)
            kernel_t = self.get_variable(SPECTRAL_NORMALIZED, "weight_hwio_t").astype(x.dtype)
            y = frozen_conv(x, kernel, kernel_t)
        else:
            w = self.normalized_weight((self.features, x.shape[-1], k, k), x.dtype, train,
                                       store=False)  # fmt: skip
            if not train and self._freezing():
                hwio = jnp.transpose(w, (2, 3, 1, 0))
                self.put_variable(SPECTRAL_NORMALIZED, "weight_hwio", hwio)
                self.put_variable(SPECTRAL_NORMALIZED, "weight_hwio_t", _input_grad_kernel(hwio))
            # Under the solver's vmap with a per-image kernel, dgp_jax.nets.per_image picks
            # how this is lowered; elsewhere it is lax.conv_general_dilated.
            y = conv2d(x, w.astype(x.dtype))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), x.dtype)
        return y


class SNLinear(_SNWeight):
    """Spectrally normalised linear layer with a (out, in) weight."""

    features: int = 0
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        w = self.normalized_weight((self.features, x.shape[-1]), x.dtype, train)
        y = x @ w.T
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), x.dtype)
        return y


class SNEmbedding(_SNWeight):
    """Spectrally normalised embedding (the discriminator's projection table)."""

    num_embeddings: int = 0
    features: int = 0

    @nn.compact
    def __call__(self, classes: Array, dtype=jnp.float32, train: bool = False) -> Array:
        w = self.normalized_weight((self.num_embeddings, self.features), dtype, train)
        return jnp.take(w, classes, axis=0)


class Embedding(nn.Module):
    """Plain embedding table (G's shared class embedding)."""

    num_embeddings: int
    features: int

    @nn.compact
    def __call__(self, classes: Array, dtype=jnp.float32) -> Array:
        w = self.param("weight", orthogonal_init, (self.num_embeddings, self.features), dtype)
        return jnp.take(w, classes, axis=0)


def _stored_stats(module: nn.Module, channels: int, dtype) -> tuple[Array, Array]:
    mean = module.variable(BUFFERS, "stored_mean", lambda: jnp.zeros((channels,), dtype))
    var = module.variable(BUFFERS, "stored_var", lambda: jnp.ones((channels,), dtype))
    return mean.value, var.value


def _norm_stats(module: nn.Module, x: Array, train: bool, momentum: float) -> tuple[Array, Array]:
    """(mean, var) to normalise x with: the stored ones in evaluation; in training the
    batch's (biased variance) while the stored ones move towards them (unbiased variance),
    as ``F.batch_norm(x, stored_mean, stored_var, training=True, momentum=momentum)``."""
    c = x.shape[-1]
    if not train:
        return _stored_stats(module, c, x.dtype)
    stored_mean = module.variable(BUFFERS, "stored_mean", lambda: jnp.zeros((c,), x.dtype))
    stored_var = module.variable(BUFFERS, "stored_var", lambda: jnp.ones((c,), x.dtype))
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    if not module.is_initializing():
        n = x.size // c
        unbiased = lax.stop_gradient(var) * (n / max(n - 1, 1))
        stored_mean.value = (1 - momentum) * stored_mean.value + momentum * lax.stop_gradient(mean)
        stored_var.value = (1 - momentum) * stored_var.value + momentum * unbiased
    return mean, var


class BatchNorm(nn.Module):
    """BN with stored statistics and a learned per-channel gain/bias (G's output layer)."""

    eps: float = 1e-5
    momentum: float = 0.1

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        c = x.shape[-1]
        mean, var = _norm_stats(self, x, train, self.momentum)
        gain = self.param("gain", nn.initializers.ones, (c,), x.dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), x.dtype)
        return (x - mean) * lax.rsqrt(var + self.eps) * gain + bias


class ConditionalBatchNorm(nn.Module):
    """BN with stored statistics, then ``* (1 + gain(y)) + bias(y)``.

    gain and bias are spectrally normalised linear maps without bias of the conditioning
    vector y = concat(class embedding, z chunk).
    """

    eps: float = 1e-5
    sn_eps: float = 1e-6
    momentum: float = 0.1

    @nn.compact
    def __call__(self, x: Array, y: Array, train: bool = False) -> Array:
        c = x.shape[-1]
        mean, var = _norm_stats(self, x, train, self.momentum)
        gain = 1 + SNLinear(eps=self.sn_eps, features=c, use_bias=False, name="gain")(y, train)
        bias = SNLinear(eps=self.sn_eps, features=c, use_bias=False, name="bias")(y, train)
        # BigGAN-PyTorch's F.batch_norm: (x - mean) / sqrt(var + eps), with the stored
        # statistics in eval mode and the batch's in training.
        out = (x - mean) * lax.rsqrt(var + self.eps)
        return out * gain[:, None, None, :] + bias[:, None, None, :]


def instance_norm(x: Array, eps: float = 1e-5) -> Array:
    """Per-sample, per-channel normalisation over space with the biased variance."""
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
    return (x - mean) * lax.rsqrt(var + eps)


def affine_stats(h: Array) -> tuple[Array, Array]:
    """Per-channel (unbiased std, mean) of each sample of h: the IN affine of the reference."""
    n = h.shape[1] * h.shape[2]
    mean = jnp.mean(h, axis=(1, 2))
    var = jnp.sum(jnp.square(h - mean[:, None, None, :]), axis=(1, 2)) / (n - 1)
    return jnp.sqrt(var), mean


def upsample_nearest2x(x: Array) -> Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool2x(x: Array) -> Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def max_pool2x(x: Array) -> Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Attention(nn.Module):
    """SA-GAN non-local block as BigGAN-PyTorch implements it (no biases, gain gamma)."""

    channels: int
    sn_eps: float = 1e-6

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        b, h, w, c = x.shape
        conv = lambda f, name: SNConv2d(  # noqa: E731
            eps=self.sn_eps, features=f, kernel_size=1, use_bias=False, name=name
        )
        theta = conv(c // 8, "theta")(x, train).reshape(b, h * w, c // 8)
        phi = max_pool2x(conv(c // 8, "phi")(x, train)).reshape(b, h * w // 4, c // 8)
        g = max_pool2x(conv(c // 2, "g")(x, train)).reshape(b, h * w // 4, c // 2)
        o = conv(c, "o")(attention(theta, phi, g).reshape(b, h, w, c // 2), train)
        gamma = self.param("gamma", nn.initializers.zeros, (), x.dtype)
        return gamma * o + x
