"""LPIPS (Zhang et al. 2018), as the ``lpips`` package (v0.1, ``lpips.LPIPS``) computes it.

    d(x, y) = sum_l mean_hw( w_l . (n(f_l(s(x))) - n(f_l(s(y))))^2 )

* ``s``: the package's ScalingLayer, (x - shift) / scale with shift (-.030, -.088, -.188)
  and scale (.458, .448, .450), on images in [-1, 1];
* ``f_l``: the five relus of the trunk (VGG16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3;
  AlexNet: relu1 ... relu5), torchvision's networks (``dgp_jax.nets.vgg`` /
  ``dgp_jax.nets.alexnet``);
* ``n``: division by the channel-wise L2 norm plus 1e-10 (``lpips.normalize_tensor``);
* ``w_l``: the 1x1 convolutions ``lin{l}.model.1.weight`` of the package's
  ``weights/v0.1/{vgg,alex}.pth`` (its dropout is off in eval mode).

Images are NHWC in [-1, 1] (the package's default, ``normalize=False``), any size the trunk
accepts. The distance is jit-compiled per batch shape and run in chunks of ``batch_size``
images sharded over the local devices.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dgp_jax import pth
from dgp_jax.metrics.weights import WeightFile, require
from dgp_jax.nets import alexnet, vgg

Array = jax.Array

SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
SCALE = np.array([0.458, 0.448, 0.450], np.float32)
EPS = 1e-10

NETS = {
    "vgg": (vgg, ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")),
    "alex": (alexnet, ("relu1", "relu2", "relu3", "relu4", "relu5")),
}
TRUNK_FILES = {
    "vgg": WeightFile(vgg.WEIGHT_FILE, vgg.WEIGHT_URL, "397923af"),
    "alex": WeightFile(alexnet.WEIGHT_FILE, alexnet.WEIGHT_URL, "7be5be79"),
}
_LIN_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/"
# The linear layers ship in the lpips package as weights/v0.1/<net>.pth; in a nets folder
# they are expected under these names.
LIN_FILES = {
    "vgg": WeightFile("lpips_v0.1_vgg.pth", _LIN_URL + "vgg.pth", "a78928a0"),
    "alex": WeightFile("lpips_v0.1_alex.pth", _LIN_URL + "alex.pth", "df73285e"),
}


def _check_net(net: str) -> None:
    if net not in NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; known: {sorted(NETS)}")


def lin_shapes(net: str) -> dict[str, tuple[int, ...]]:
    """The keys of the package's linear-layer file and their shapes."""
    _check_net(net)
    module, taps = NETS[net]
    channels = [int(module.state_shapes()[f"features.{module.TAPS[t] - 1}.weight"][0])
                for t in taps]  # fmt: skip
    return {f"lin{i}.model.1.weight": (1, c, 1, 1) for i, c in enumerate(channels)}


def lins_from_state_dict(state, net: str, source: str = "state dict") -> tuple[Array, ...]:
    """The five linear layers as (C_l,) vectors; missing or mis-shaped keys are named."""
    tree = vgg.tree_from_state(state, lin_shapes(net), source, jnp.float32)
    return tuple(tree[f"lin{i}"]["model"]["1"]["weight"].reshape(-1) for i in range(5))


def _normalize(f: Array) -> Array:
    return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + EPS)


def per_layer(net: str, trunk: dict, lins: tuple[Array, ...], x: Array, y: Array) -> Array:
    """(N, 5): each layer's term of the distance (the package's ``retPerLayer``)."""
    module, taps = NETS[net]
    shift, scale = jnp.asarray(SHIFT, x.dtype), jnp.asarray(SCALE, x.dtype)
    fx = module.features(trunk, (x - shift) / scale, taps)
    fy = module.features(trunk, (y - shift) / scale, taps)
    terms = []
    for a, b, w in zip(fx, fy, lins, strict=True):
        diff = jnp.square(_normalize(a) - _normalize(b))
        terms.append(jnp.mean(jnp.einsum("nhwc,c->nhw", diff, w.astype(diff.dtype)), axis=(1, 2)))
    return jnp.stack(terms, axis=-1)


@functools.lru_cache(maxsize=8)
def _compiled(net: str):
    return jax.jit(lambda trunk, lins, x, y: per_layer(net, trunk, lins, x, y))


class LPIPS:
    """A loaded LPIPS metric: ``distance(x, y)`` -> (N,) float32, NHWC images in [-1, 1]."""

    def __init__(self, net: str, trunk: dict, lins: tuple[Array, ...], batch_size: int = 32):
        _check_net(net)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.net, self.trunk, self.lins, self.batch_size = net, trunk, tuple(lins), batch_size
        self._on_devices: dict = {}

    def _replicated(self, mesh: Mesh):
        """The weights on every device of ``mesh``, copied there once per mesh."""
        key = tuple(d.id for d in mesh.devices.flat)
        if key not in self._on_devices:
            spec = NamedSharding(mesh, PartitionSpec())
            self._on_devices[key] = jax.device_put((self.trunk, self.lins), spec)
        return self._on_devices[key]

    def per_layer(self, x, y) -> np.ndarray:
        """(N, 5) per-layer terms; their sum is :meth:`distance`."""
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
        if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(
                f"LPIPS compares two (N, H, W, 3) batches of the same shape, got {x.shape} "
                f"and {y.shape}"
            )
        n = x.shape[0]
        if n == 0:
            return np.zeros((0, 5), np.float32)
        chunk = min(self.batch_size, n)
        # as many devices as divide the chunk, so that no device computes padding
        devices = jax.local_devices()
        usable = max(d for d in range(1, min(chunk, len(devices)) + 1) if chunk % d == 0)
        devices = devices[:usable]
        mesh = Mesh(np.array(devices), ("data",))
        shard = NamedSharding(mesh, PartitionSpec("data"))
        weights = self._replicated(mesh)
        fn = _compiled(self.net)
        out = []
        with jax.default_matmul_precision("float32"):
            for start in range(0, n, chunk):
                xs, ys = x[start : start + chunk], y[start : start + chunk]
                m = xs.shape[0]
                if m < chunk:  # one compiled shape: pad the last chunk, drop its rows
                    pad = ((0, chunk - m), (0, 0), (0, 0), (0, 0))
                    xs, ys = np.pad(xs, pad, mode="edge"), np.pad(ys, pad, mode="edge")
                terms = fn(*weights, jax.device_put(xs, shard),
                           jax.device_put(ys, shard))  # fmt: skip
                out.append(np.asarray(terms)[:m])
        return np.concatenate(out)

    def distance(self, x, y) -> np.ndarray:
        """(N,) LPIPS distances between corresponding images of ``x`` and ``y``."""
        return self.per_layer(x, y).sum(axis=-1)


def load_lpips(
    trunk_path: str | os.PathLike, lin_path: str | os.PathLike, net: str = "alex",
    batch_size: int = 32,
) -> LPIPS:  # fmt: skip
    """LPIPS from torchvision's trunk file and the lpips package's linear layers.

    Args:
      trunk_path: ``vgg16-397923af.pth`` (net "vgg") or ``alexnet-owt-7be5be79.pth``
        ("alex").
      lin_path: the package's ``weights/v0.1/vgg.pth`` or ``alex.pth``.
      net: "alex" (the package's default) or "vgg".
    """
    _check_net(net)
    metric = f"lpips ({net})"
    trunk_path = require(trunk_path, TRUNK_FILES[net], metric)
    lin_path = require(lin_path, LIN_FILES[net], metric)
    module, _ = NETS[net]
    trunk = module.load_params(trunk_path)
    lins = lins_from_state_dict(pth.read_state_dict(lin_path), net, source=str(lin_path))
    return LPIPS(net, trunk, lins, batch_size=batch_size)


def lpips_evaluator(
    net: str = "alex", nets: str | os.PathLike | None = None,
    trunk_path: str | os.PathLike | None = None, lin_path: str | os.PathLike | None = None,
    batch_size: int = 32,
):  # fmt: skip
    """Registry factory: ``{"lpips": (N,)}`` of restored against reference images.

    The weights come from explicit paths or, by their canonical names, from ``nets``
    (``vgg16-397923af.pth`` / ``alexnet-owt-7be5be79.pth`` and ``lpips_v0.1_<net>.pth``).
    """
    _check_net(net)
    if nets is not None:
        trunk_path = trunk_path or Path(nets) / TRUNK_FILES[net].filename
        lin_path = lin_path or Path(nets) / LIN_FILES[net].filename
    metric = load_lpips(trunk_path, lin_path, net=net, batch_size=batch_size)

    def evaluate(restored, reference) -> dict[str, np.ndarray]:
        return {"lpips": metric.distance(restored, reference).astype(np.float64)}

    return evaluate
