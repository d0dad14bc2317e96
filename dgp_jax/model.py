"""The public BigGAN handle: weights plus architecture, with generate / discriminate.

    model = dgp_jax.load_biggan("G_ema_128.pth")          # or a converted folder
    images = model.generate(z, classes)                    # (B, R, R, 3) NHWC in [-1, 1]
    logits, features = model.discriminate(images)

``BigGAN`` is a pytree (the architecture is static), so it passes through ``jax.jit``.
"""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dgp_jax import checkpoint
from dgp_jax.checks import prng_key
from dgp_jax.default_model import DEFAULT_DISCRIMINATOR, DEFAULT_MODEL, verify_default_model
from dgp_jax.nets.biggan import BigGANConfig, Discriminator, Generator
from dgp_jax.nets.layers import BUFFERS, INSTANCE_NORM, PARAMS

Array = jax.Array
Variables = dict[str, Any]


def _check_class_range(classes: Array, n_classes: int) -> None:
    """Out-of-range classes index past the embedding table, which gives NaN (or wraps round
    for negative ones) instead of an error; checked where the values are known (not under
    a trace)."""
    if isinstance(classes, jax.core.Tracer):
        return
    values = np.asarray(classes)
    bad = np.unique(values[(values < 0) | (values >= n_classes)])
    if bad.size:
        raise ValueError(f"classes {bad.tolist()} out of range [0, {n_classes})")


@flax.struct.dataclass
class BigGAN:
    """A BigGAN generator (and, for DGP, its discriminator) with weights.

    ``generator`` / ``discriminator`` are ``{"params": ..., "buffers": ...}``: trainable
    weights apart from non-trained state (spectral-norm vectors, BN statistics).
    """

    config: BigGANConfig = flax.struct.field(pytree_node=False)
    generator: Variables
    discriminator: Variables | None = None

    # -- generator -----------------------------------------------------------------
    def embed(self, classes: Array, params: Variables | None = None) -> Array:
        """Shared class embedding (B,) int -> (B, shared_dim)."""
        params = self.generator[PARAMS] if params is None else params
        given, classes = classes, jnp.asarray(classes)
        if not jnp.issubdtype(classes.dtype, jnp.integer):
            raise TypeError(f"classes must be integers, got dtype {classes.dtype}")
        # The values as given: host input is checked without a round trip to the device.
        _check_class_range(given, params["shared"]["weight"].shape[0])
        return jnp.take(params["shared"]["weight"], classes, axis=0)

    def generate(
        self,
        z: Array,
        y: Array,
        *,
        params: Variables | None = None,
        use_in=False,
        instance_norm: Variables | None = None,
    ):
        """G(z, y) -> images (B, R, R, 3), NHWC in [-1, 1].

        z: (B, effective_dim_z). y: integer classes (B,) or embeddings (B, shared_dim).
        ``params`` replaces the generator's weights (a fine-tuned copy). With ``use_in``
        the instance-norm mode runs and ``(images, instance_norm_state)`` is returned;
        pass that state back to hold the captured statistics.
        """
        params = self.generator[PARAMS] if params is None else params
        given_y, z, y = y, jnp.asarray(z), jnp.asarray(y)
        if z.ndim >= 1 and y.ndim >= 1 and z.shape[0] != y.shape[0]:
            raise ValueError(
                f"z holds {z.shape[0]} latents {z.shape} but y {y.shape[0]} classes or "
                f"embeddings {y.shape}: one each per image"
            )
        if jnp.issubdtype(y.dtype, jnp.integer):
            # Looked up here, so that classes and embeddings (morphing) share one compiled
            # generator per shape: the same values (tests/test_biggan.py).
            y = self.embed(given_y, params)
        return _generate(self.config, params, self.generator[BUFFERS], z, y, use_in,
                         instance_norm)  # fmt: skip

    # -- discriminator -------------------------------------------------------------
    def discriminate(self, x: Array, y: Array | None = None) -> tuple[Array, list[Array]]:
        """D(x, y) -> (logits (B, 1), feature list). x: (B, R, R, 3) NHWC in [-1, 1]."""
        if self.discriminator is None:
            raise ValueError("this model has no discriminator; DGP needs one: load the D_*.pth too")
        return _discriminate(self.config, self.discriminator, jnp.asarray(x), y)

    @property
    def dtype(self):
        return self.generator[PARAMS]["linear"]["weight"].dtype

    def astype(self, dtype) -> BigGAN:
        cast = lambda t: jax.tree.map(lambda a: jnp.asarray(a, dtype), t)  # noqa: E731
        d = None if self.discriminator is None else cast(self.discriminator)
        return self.replace(generator=cast(self.generator), discriminator=d)

    def save(self, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write a dgp_jax checkpoint folder (orbax + config.json)."""
        return checkpoint.save(
            directory, self.config, self.generator, self.discriminator, overwrite=overwrite
        )


@functools.partial(jax.jit, static_argnums=(0, 5))
def _generate(config, params, buffers, z, y, use_in, instance_norm):
    variables = {PARAMS: params, BUFFERS: buffers}
    if use_in is False:
        return Generator(config).apply(variables, z, y)
    if instance_norm is not None:
        variables[INSTANCE_NORM] = instance_norm
    images, state = Generator(config).apply(variables, z, y, use_in=use_in, mutable=[INSTANCE_NORM])
    return images, state[INSTANCE_NORM]


@functools.partial(jax.jit, static_argnums=(0,))
def _discriminate(config, variables, x, y):
    return Discriminator(config).apply(variables, x, y)


def random_biggan(
    config: BigGANConfig,
    key: Array | int,
    *,
    dtype=jnp.float32,
    discriminator: bool = True,
    init: str = "ortho",
) -> BigGAN:
    """A BigGAN with random weights, for tests, timing and training's step 0.

    ``init`` is BigGAN-PyTorch's ``G_init``/``D_init`` for every layer weight:
    "ortho" (``torch.nn.init.orthogonal_``, its default) or "N02" (normal, std 0.02). The
    rest is as the modules initialise it. The values are drawn with numpy from a seed
    taken from ``key``: the modules' own initialisers run the network op by op and
    compile a QR per weight shape (16 s for a 32 px model on 2 CPU cores, minutes at
    full size); this took 1.5-2.6 s, first call included, for the tests' 32 px and the
    shipped 64 px model (BENCHMARKS.md, "Random BigGAN weights").
    """
    if init not in ("ortho", "N02"):
        raise ValueError(f"init must be 'ortho' or 'N02', got {init!r}")
    if not isinstance(config, BigGANConfig):
        raise TypeError(f"config must be a BigGANConfig, got {type(config).__name__}")
    key = prng_key(key)
    kg, kd = jax.random.split(key)
    z = jnp.zeros((1, config.effective_dim_z), dtype)
    x = jnp.zeros((1, config.resolution, config.resolution, 3), dtype)
    y = jnp.zeros((1,), int)
    g = jax.eval_shape(Generator(config).init, kg, z, y)
    d = jax.eval_shape(Discriminator(config).init, kd, x, y) if discriminator else None
    if isinstance(key, jax.core.Tracer):  # traced (the trainer's jax.eval_shape): shapes only
        zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t)  # noqa: E731
        return BigGAN(config=config, generator=zeros(g), discriminator=d and zeros(d))
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    weight = _orthogonal if init == "ortho" else _normal_02
    g = _numpy_init(g, seed, weight)
    d = d and _numpy_init(d, seed + 1, weight)
    return BigGAN(config=config, generator=g, discriminator=d)


def _normal_02(rng, shape: tuple[int, ...], dtype):
    return (0.02 * rng.standard_normal(shape, np.float32)).astype(dtype)


def _orthogonal(rng, shape: tuple[int, ...], dtype):
    """``torch.nn.init.orthogonal_`` on the (out, rest) view of a PyTorch-layout weight:
    the Q of a normal matrix's QR (of its transpose when wide), signed by diag(R)."""
    rows, cols = shape[0], math.prod(shape[1:])
    flat = rng.standard_normal((rows, cols))
    wide = rows < cols
    q, r = np.linalg.qr(flat.T if wide else flat)
    q = q * np.sign(np.diag(r))
    return (q.T if wide else q).reshape(shape).astype(dtype)


def _numpy_init(template: Variables, seed: int, weight) -> Variables:
    """``weight(rng, shape, dtype)`` for every layer weight; the rest as the modules
    initialise it (zero bias and gamma, unit BN gain and variance, zero mean, random
    unit u)."""
    from flax import traverse_util

    rng = np.random.default_rng(seed)
    out = {}
    for collection, tree in template.items():
        flat = traverse_util.flatten_dict(tree)
        filled = {}
        for path, leaf in flat.items():
            name, dtype = path[-1], leaf.dtype
            if name == "weight":
                value = weight(rng, leaf.shape, dtype)
            elif name == "u0":
                u = rng.standard_normal(leaf.shape)
                value = (u / np.linalg.norm(u)).astype(dtype)
            elif name in ("sv0", "stored_var") or (name == "gain" and len(path) > 1):
                value = np.ones(leaf.shape, dtype)
            else:
                value = np.zeros(leaf.shape, dtype)
            filled[path] = jnp.asarray(value)
        out[collection] = traverse_util.unflatten_dict(filled)
    return out


def _sibling_discriminator(g_path: Path) -> Path | None:
    """G_ema_128.pth / G_128.pth -> D_128.pth beside it, when present."""
    m = re.match(r"^G(?:_ema)?(.*)\.pth$", g_path.name)
    if m:
        candidate = g_path.with_name(f"D{m.group(1)}.pth")
        if candidate.is_file():
            return candidate
    return None


def load_biggan(
    path: str | os.PathLike,
    discriminator: str | os.PathLike | None = None,
    *,
    dtype=jnp.float32,
    **overrides,
) -> BigGAN:
    """Load a BigGAN from a dgp_jax checkpoint folder or a released ``.pth`` file.

    For a ``.pth`` generator, the discriminator is ``discriminator`` when given, else
    ``D<tag>.pth`` beside ``G_ema<tag>.pth`` when it exists. The architecture is read off
    the tensor shapes; keyword ``overrides`` (BigGANConfig fields, e.g. ``SN_eps``) win.
    Weights are cast to ``dtype`` (float32 by default; float64 needs jax x64 enabled).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no BigGAN weights at {path}")
    if path.is_dir():
        if discriminator is not None or overrides:
            raise ValueError(
                f"{path} is a converted checkpoint: its architecture and discriminator are "
                "fixed; convert again to change them"
            )
        config, g, d, _ = checkpoint.load(path, dtype=dtype)
        return BigGAN(config=config, generator=g, discriminator=d)
    d_path = Path(discriminator) if discriminator is not None else _sibling_discriminator(path)
    config, g, d, _ = checkpoint.read_pth_pair(path, d_path, overrides=overrides, dtype=dtype)
    return BigGAN(config=config, generator=g, discriminator=d)


def load_default_biggan(*, dtype=jnp.float32) -> BigGAN:
    """The 64 px BigGAN shipped with dgp_jax (with its discriminator), weights as ``dtype``.

    Classes: 0 flora, 1 landscape, 2 objects (``default_model_info()["classes"]``). The
    files are checked against their recorded sha256 first.
    """
    verify_default_model()
    return load_biggan(DEFAULT_MODEL, DEFAULT_DISCRIMINATOR, dtype=dtype)
