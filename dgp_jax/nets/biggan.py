"""BigGAN generator and discriminator (BigGAN-PyTorch architecture, as DGP uses it).

Images are NHWC in [-1, 1]. Parameters flatten (with ``"."``) to the keys of the released
``G_ema_*.pth`` / ``D_*.pth`` state dicts; see ``dgp_jax.nets.layers`` for the layout rules.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dgp_jax.checks import fits_field_type
from dgp_jax.nets.layers import (
    INSTANCE_NORM,
    Attention,
    BatchNorm,
    ConditionalBatchNorm,
    Embedding,
    SNConv2d,
    SNEmbedding,
    SNLinear,
    affine_stats,
    avg_pool2x,
    instance_norm,
    upsample_nearest2x,
)

Array = jax.Array

G_RESOLUTIONS = (32, 64, 128, 256, 512)
D_RESOLUTIONS = (32, 64, 128, 256)


@dataclasses.dataclass(frozen=True)
class BigGANConfig:
    """Architecture of a BigGAN-PyTorch model, with the reference's flag names.

    ``dim_z`` is the flag value (120 for the public models); with hierarchical z the
    generator uses ``effective_dim_z`` of it (119 at 256 px).
    """

    resolution: int = 128
    G_ch: int = 96
    D_ch: int = 96
    dim_z: int = 120
    shared_dim: int = 128
    n_classes: int = 1000
    hier: bool = True
    G_attn: str = "64"
    D_attn: str = "64"
    bottom_width: int = 4
    BN_eps: float = 1e-5
    SN_eps: float = 1e-6
    D_wide: bool = True

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not fits_field_type(field.type, value):
                raise ValueError(f"BigGANConfig.{field.name} must be {field.type}, got {value!r}")
        if self.resolution not in G_RESOLUTIONS:
            raise ValueError(
                f"resolution {self.resolution} is not a BigGAN resolution {G_RESOLUTIONS}"
            )
        if self.G_ch < 1 or self.D_ch < 1 or self.dim_z < 1 or self.n_classes < 1:
            raise ValueError(f"channel multipliers, dim_z and n_classes must be >= 1: {self}")

    # -- generator architecture ------------------------------------------------------
    @property
    def g_in_channels(self) -> list[int]:
        return [self.G_ch * m for m in _G_MULTIPLIERS[self.resolution][0]]

    @property
    def g_out_channels(self) -> list[int]:
        return [self.G_ch * m for m in _G_MULTIPLIERS[self.resolution][1]]

    @property
    def num_g_blocks(self) -> int:
        return len(_G_MULTIPLIERS[self.resolution][0])

    @property
    def g_block_resolutions(self) -> list[int]:
        # BigGAN-PyTorch keys attention by these nominal sizes whatever the bottom width.
        return [8 * 2**i for i in range(self.num_g_blocks)]

    @property
    def g_attention(self) -> list[bool]:
        wanted = _parse_attn(self.G_attn)
        return [r in wanted for r in self.g_block_resolutions]

    @property
    def num_slots(self) -> int:
        return self.num_g_blocks + 1 if self.hier else 1

    @property
    def z_chunk_size(self) -> int:
        return self.dim_z // self.num_slots if self.hier else 0

    @property
    def effective_dim_z(self) -> int:
        return self.z_chunk_size * self.num_slots if self.hier else self.dim_z

    @property
    def cond_dim(self) -> int:
        """Size of the vector the conditional BNs see: embedding plus one z chunk."""
        return self.shared_dim + self.z_chunk_size

    # -- discriminator architecture --------------------------------------------------
    @property
    def d_channels(self) -> tuple[list[int], list[int]]:
        if self.resolution not in _D_MULTIPLIERS:
            raise ValueError(
                f"BigGAN has no discriminator at {self.resolution} px (have {D_RESOLUTIONS})"
            )
        ins, outs, _, _ = _D_MULTIPLIERS[self.resolution]
        return [3] + [self.D_ch * m for m in ins], [self.D_ch * m for m in outs]

    @property
    def d_downsample(self) -> list[bool]:
        return list(_D_MULTIPLIERS[self.resolution][2])

    @property
    def d_attention(self) -> list[bool]:
        wanted = _parse_attn(self.D_attn)
        return [r in wanted for r in _D_MULTIPLIERS[self.resolution][3]]

    @property
    def num_d_features(self) -> int:
        _ = self.d_channels  # raises the clear error where BigGAN has no discriminator
        return len(self.d_downsample) + sum(self.d_attention) + 1

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BigGANConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown BigGAN config fields {unknown}; known: {sorted(names)}")
        return cls(**d)


def _parse_attn(spec: str) -> set[int]:
    return {int(s) for s in str(spec).split("_") if s and s != "0"}


# (in multipliers, out multipliers) per resolution, from BigGAN-PyTorch's G_arch.
_G_MULTIPLIERS = {
    512: ([16, 16, 8, 8, 4, 2, 1], [16, 8, 8, 4, 2, 1, 1]),
    256: ([16, 16, 8, 8, 4, 2], [16, 8, 8, 4, 2, 1]),
    128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1]),
    64: ([16, 16, 8, 4], [16, 8, 4, 2]),
    32: ([4, 4, 4], [4, 4, 4]),
}
# (in multipliers after the RGB input, out multipliers, downsample, nominal resolution
# that attention is keyed by) from BigGAN-PyTorch's D_arch.
_D_MULTIPLIERS = {
    256: (
        [1, 2, 4, 8, 8, 16],
        [1, 2, 4, 8, 8, 16, 16],
        [True] * 6 + [False],
        [128, 64, 32, 16, 8, 4, 4],
    ),
    128: ([1, 2, 4, 8, 16], [1, 2, 4, 8, 16, 16], [True] * 5 + [False], [64, 32, 16, 8, 4, 4]),
    64: ([1, 2, 4, 8], [1, 2, 4, 8, 16], [True] * 4 + [False], [32, 16, 8, 4, 4]),
    32: ([4, 4, 4], [4, 4, 4, 4], [True, True, False, False], [16, 16, 16, 16]),
}


class GBlock(nn.Module):
    """Residual up-block: (cBN|IN)-ReLU-up-conv3, (cBN|IN)-ReLU-conv3, + conv1(up(x)).

    ``use_in`` may be a Python bool or a traced boolean (the solver passes the stage's
    setting as data). In instance-norm mode the IN affine (per-channel std and mean of
    what the conditional BN would give) is taken at the first ``use_in`` call and held
    in the ``instance_norm`` collection while ``captured`` is true.
    """

    out_channels: int
    bn_eps: float
    sn_eps: float

    @nn.compact
    def __call__(self, x: Array, y: Array, use_in=False, captured=None, train=False) -> Array:
        conv = lambda f, k, name: SNConv2d(eps=self.sn_eps, features=f, kernel_size=k, name=name)  # noqa: E731
        bn = lambda name: ConditionalBatchNorm(eps=self.bn_eps, sn_eps=self.sn_eps, name=name)  # noqa: E731

        h = self._norm(bn("bn1"), "in1", x, y, use_in, captured, train)
        h = upsample_nearest2x(jax.nn.relu(h))
        x = upsample_nearest2x(x)
        h = conv(self.out_channels, 3, "conv1")(h, train)
        h = self._norm(bn("bn2"), "in2", h, y, use_in, captured, train)
        h = conv(self.out_channels, 3, "conv2")(jax.nn.relu(h), train)
        # Every BigGAN G block upsamples, so the shortcut is always learnable.
        return h + conv(self.out_channels, 1, "conv_sc")(x, train)

    def _norm(self, cbn: nn.Module, in_name: str, x, y, use_in, captured, train=False):
        h_bn = cbn(x, y, train)
        if use_in is False:
            return h_bn
        b, c = x.shape[0], x.shape[-1]
        held = self.variable(
            INSTANCE_NORM,
            in_name,
            lambda: {"weight": jnp.zeros((b, c), x.dtype), "bias": jnp.zeros((b, c), x.dtype)},
        )
        fresh_std, fresh_mean = affine_stats(lax.stop_gradient(h_bn))
        weight = jnp.where(captured, held.value["weight"], fresh_std)
        bias = jnp.where(captured, held.value["bias"], fresh_mean)
        if not self.is_initializing():
            held.value = {"weight": weight, "bias": bias}
        h_in = instance_norm(x, self.bn_eps) * weight[:, None, None, :] + bias[:, None, None, :]
        return jnp.where(use_in, h_in, h_bn)


class Generator(nn.Module):
    """BigGAN generator G(z, y) -> images (B, R, R, 3) in [-1, 1], NHWC.

    z: (B, effective_dim_z) latents. y: integer classes (B,) or class embeddings
    (B, shared_dim) -- morphing interpolates embeddings, so both are accepted. Stored BN
    statistics are used (evaluation mode), as DGP does. ``train=True`` is BigGAN-PyTorch's
    training mode (batch statistics, power iterations advance) and needs
    ``mutable=["buffers"]``; see ``dgp_jax.train``.
    """

    config: BigGANConfig

    @nn.compact
    def __call__(self, z: Array, y: Array, use_in=False, train: bool = False) -> Array:
        cfg = self.config
        if z.ndim != 2 or z.shape[-1] != cfg.effective_dim_z:
            raise ValueError(
                f"z must be (batch, {cfg.effective_dim_z}) for this generator, got {z.shape}"
            )
        if jnp.issubdtype(y.dtype, jnp.integer):
            y = Embedding(cfg.n_classes, cfg.shared_dim, name="shared")(y, z.dtype)
        elif y.shape != (z.shape[0], cfg.shared_dim):
            raise ValueError(
                f"class embeddings must be ({z.shape[0]}, {cfg.shared_dim}), got {y.shape}"
            )
        y = y.astype(z.dtype)

        if cfg.hier:
            chunks = jnp.split(z, cfg.num_slots, axis=1)
            z0, conds = chunks[0], [jnp.concatenate([y, c], axis=1) for c in chunks[1:]]
        else:
            z0, conds = z, [y] * cfg.num_g_blocks

        captured = None
        if use_in is not False:
            flag = self.variable(INSTANCE_NORM, "captured", lambda: jnp.zeros((), bool))
            captured = flag.value
            if not self.is_initializing():
                # Set by an IN forward, cleared by a BN forward, as the reference's
                # in_initialized flag.
                flag.value = jnp.asarray(use_in, bool)

        c0, bw = cfg.g_in_channels[0], cfg.bottom_width
        h = SNLinear(eps=cfg.SN_eps, features=c0 * bw * bw, name="linear")(z0, train)
        # PyTorch views the linear output as NCHW.
        h = h.reshape(z.shape[0], c0, bw, bw).transpose(0, 2, 3, 1)
        for i, out_ch in enumerate(cfg.g_out_channels):
            h = GBlock(out_ch, cfg.BN_eps, cfg.SN_eps, name=f"blocks.{i}.0")(
                h, conds[i], use_in, captured, train
            )
            if cfg.g_attention[i]:
                h = Attention(out_ch, cfg.SN_eps, name=f"blocks.{i}.1")(h, train)
        h = jax.nn.relu(BatchNorm(cfg.BN_eps, name="output_layer.0")(h, train))
        h = SNConv2d(eps=cfg.SN_eps, features=3, kernel_size=3, name="output_layer.2")(h, train)
        return jnp.tanh(h)


class DBlock(nn.Module):
    """Residual down-block of the discriminator (wide: hidden = out channels)."""

    out_channels: int
    hidden_channels: int
    preactivation: bool
    downsample: bool
    sn_eps: float

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        conv = lambda f, k, name: SNConv2d(eps=self.sn_eps, features=f, kernel_size=k, name=name)  # noqa: E731
        h = jax.nn.relu(x) if self.preactivation else x
        h = conv(self.hidden_channels, 3, "conv1")(h, train)
        h = conv(self.out_channels, 3, "conv2")(jax.nn.relu(h), train)
        if self.downsample:
            h = avg_pool2x(h)
        sc = x
        if x.shape[-1] != self.out_channels or self.downsample:
            shortcut_conv = conv(self.out_channels, 1, "conv_sc")
            if self.preactivation:
                sc = shortcut_conv(sc, train)
                sc = avg_pool2x(sc) if self.downsample else sc
            else:
                sc = avg_pool2x(sc) if self.downsample else sc
                sc = shortcut_conv(sc, train)
        return h + sc


class Discriminator(nn.Module):
    """BigGAN projection discriminator D(x, y) -> (logits (B, 1), features).

    x: images (B, R, R, 3) in [-1, 1], NHWC. y: integer classes (B,) or None. The feature
    list is the output of every block and attention layer in order, then the ReLU'd
    features summed over space (8 entries at 128 px, 9 at 256 px) -- DGP's loss uses its
    tail. ``train=True`` advances the spectral-norm power iterations (``mutable=["buffers"]``).
    """

    config: BigGANConfig

    @nn.compact
    def __call__(
        self, x: Array, y: Array | None = None, train: bool = False
    ) -> tuple[Array, list[Array]]:
        cfg = self.config
        ins, outs = cfg.d_channels
        if x.ndim != 4 or x.shape[1:] != (cfg.resolution, cfg.resolution, 3):
            raise ValueError(
                f"images must be (batch, {cfg.resolution}, {cfg.resolution}, 3) NHWC, got {x.shape}"
            )
        h, features = x, []
        for i, out_ch in enumerate(outs):
            hidden = out_ch if cfg.D_wide else ins[i]
            h = DBlock(
                out_ch, hidden, i > 0, cfg.d_downsample[i], cfg.SN_eps, name=f"blocks.{i}.0"
            )(h, train)
            features.append(h)
            if cfg.d_attention[i]:
                h = Attention(out_ch, cfg.SN_eps, name=f"blocks.{i}.1")(h, train)
                features.append(h)
        pooled = jnp.sum(jax.nn.relu(h), axis=(1, 2))
        features.append(pooled)
        out = SNLinear(eps=cfg.SN_eps, features=1, name="linear")(pooled, train)
        if y is not None:
            embed = SNEmbedding(
                eps=cfg.SN_eps, num_embeddings=cfg.n_classes, features=outs[-1], name="embed"
            )(y, pooled.dtype, train)
            out = out + jnp.sum(embed * pooled, axis=1, keepdims=True)
        return out, features
