"""Image manipulation with solved DGP results: jitter, morphing and category transfer.

Every function takes a ``SolveResult`` from ``dgp_jax.restore`` and re-renders its solved
latents with each image's own fine-tuned generator::

    result = dgp_jax.restore(model, images, classes, "wallpapers_64/jitter", key)
    jitters = jitter(model, result, key)              # (B, 3, 30, R, R, 3)
    frames = morph(model, result, 0, result, 1)       # (11, R, R, 3)
    transfer = category_transfer(model, result, [0, 1, 2])   # (B, 3, R, R, 3)

(``model = dgp_jax.load_default_biggan()``, the shipped 64 px model of three classes, for
the ``wallpapers_64`` presets; an ImageNet model takes classes such as 151, 207, 281.)

All images are NHWC in [-1, 1], returned as NumPy arrays. Rendering is one jit-compiled
function per kind, ``jax.vmap``-ped over the per-image (or per-frame) generator params
(``in_axes=0``). ``batch_size`` bounds how many generator renders one call makes, and so
memory: each image (or morph frame) in a call holds its own copy of the generator params.
The last chunk is padded so that all chunks share one compiled shape.

As in the reference (``models/dgp.py: jitter``, ``example.py``), the generator runs in its
batch-norm (evaluation) mode, never the instance-norm mode some solver stages use, and its
buffers (spectral-norm vectors, BN statistics) are the model's: fine-tuning leaves them as
they are, so they are the same for every image. A result whose last solver stage ran in
instance-norm mode (``result.final_use_in``: ``reconstruct``, ``inpainting`` and the other
``use_in`` presets) looks different when rendered in batch-norm mode, so every function
here refuses it; solve with a manipulation preset instead (``wallpapers_64/jitter``,
``wallpapers_64/morphing``, ``wallpapers_64/category_transfer`` for the shipped model,
``examples_256/*`` at 256 px: the reference's scripts, ``use_in`` off throughout).
``render(model, result)`` gives the image every manipulation starts from (jitter with std 0,
morph at alpha 0 / 1, the transfer to the image's own class).

The class embedding of image i is ``result.embeddings[i]``: the fine-tuned row of the
class table (when the solve had ``update_embed``), else the table row itself. Every other
class uses the model's table, which fine-tuning does not touch (those rows get no gradient),
so this is what ``result.generator(model, i)`` renders with.

Morphing interpolates the class embeddings of the two images as the reference's
``example.py`` does (its ``trainer.py`` keeps the later image's class instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from dgp_jax.batching import pad_to
from dgp_jax.checks import is_int, prng_key
from dgp_jax.model import BigGAN
from dgp_jax.nets.biggan import BigGANConfig, Generator
from dgp_jax.nets.layers import BUFFERS, PARAMS
from dgp_jax.solve import SolveResult

Array = jax.Array

DEFAULT_STDS = (0.3, 0.5, 0.7)
DEFAULT_SAMPLES = 30
# The reference's 11 frames, alpha = i / 10.
DEFAULT_ALPHAS = tuple(i / 10 for i in range(11))

# How often each compiled function is traced: a test asserts chunking compiles once.
TRACE_COUNTS = {"render": 0, "morph": 0}

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_SAMPLES",
    "DEFAULT_STDS",
    "category_transfer",
    "jitter",
    "morph",
    "morph_batch",
    "render",
]


# --------------------------------------------------------------------------- compiled
def _generate(config: BigGANConfig, params, buffers, z: Array, embedding: Array) -> Array:
    """G with one set of params: z (N, dim_z), embedding (N, shared_dim) -> (N, R, R, 3)."""
    return Generator(config).apply({PARAMS: params, BUFFERS: buffers}, z, embedding)


@partial(jax.jit, static_argnames=("config",))
def _render(config: BigGANConfig, buffers, params, index: Array, z: Array, embedding: Array):
    """Render with per-image params.

    params: the stacked fine-tuned generators (B, ...). index: (G,) which image's params
    each row uses. z: (G, M, dim_z), embedding: (G, M, shared_dim) -> (G, M, R, R, 3).
    """
    TRACE_COUNTS["render"] += 1
    # Gathering inside the jit bounds the copies to this chunk's G images.
    chosen = jax.tree.map(lambda a: jnp.take(a, index, axis=0), params)
    per_image = lambda p, zi, ei: _generate(config, p, buffers, zi, ei)  # noqa: E731
    return jax.vmap(per_image, in_axes=(0, 0, 0))(chosen, z, embedding)


def _lerp(a: Array, b: Array, alpha: Array) -> Array:
    """(1 - alpha) a + alpha b, per leading row; exactly a at alpha 0 and b at alpha 1."""
    alpha = alpha.reshape(alpha.shape + (1,) * (a.ndim - 1)).astype(a.dtype)
    return (1 - alpha) * a + alpha * b


@partial(jax.jit, static_argnames=("config",))
def _render_morph(
    config: BigGANConfig, buffers, params_a, z_a, emb_a, index_a, params_b, z_b, emb_b,
    index_b, alphas,
):  # fmt: skip
    """Render K interpolated frames -> (K, R, R, 3).

    Frame k mixes image index_a[k] of the ``a`` stacks (params (B_a, ...), z (B_a, dim_z),
    embeddings (B_a, shared_dim)) with image index_b[k] of the ``b`` stacks by alphas[k].
    """
    TRACE_COUNTS["morph"] += 1
    take = lambda t, i: jax.tree.map(lambda a: jnp.take(a, i, axis=0), t)  # noqa: E731
    # Every generator weight, the latent and the class embedding are interpolated.
    params = jax.tree.map(
        lambda a, b: _lerp(a, b, alphas), take(params_a, index_a), take(params_b, index_b)
    )
    z = _lerp(take(z_a, index_a), take(z_b, index_b), alphas)
    emb = _lerp(take(emb_a, index_a), take(emb_b, index_b), alphas)
    per_frame = lambda p, zi, ei: _generate(config, p, buffers, zi[None], ei[None])[0]  # noqa: E731
    return jax.vmap(per_frame, in_axes=(0, 0, 0))(params, z, emb)


# --------------------------------------------------------------------------- chunking
def _chunk_sizes(outer: int, inner: int, batch_size: int | None) -> tuple[int, int]:
    """(outer rows, inner rows) per call so that one call renders <= batch_size images."""
    if batch_size is None:
        return outer, inner
    inner_chunk = min(inner, batch_size)
    return max(1, min(outer, batch_size // inner_chunk)), inner_chunk


def _render_grid(
    model: BigGAN, params, z: np.ndarray, embedding: np.ndarray, batch_size: int | None
) -> np.ndarray:
    """Image i's params render z[i, m] with embedding[i, m]: (B, M, ...) -> (B, M, R, R, 3).

    Chunks over images and, when one image's M renders exceed ``batch_size``, over M too.
    """
    batch, inner = z.shape[:2]
    res = model.config.resolution
    out = np.empty((batch, inner, res, res, 3), dtype=np.dtype(z.dtype))
    if batch == 0 or inner == 0:
        return out
    g, m = _chunk_sizes(batch, inner, batch_size)
    buffers = model.generator[BUFFERS]
    for start in range(0, batch, g):
        stop = min(start + g, batch)
        index = pad_to(np.arange(start, stop), g)
        for m0 in range(0, inner, m):
            m1 = min(m0 + m, inner)
            zc = pad_to(pad_to(z[start:stop, m0:m1], g, 0), m, 1)
            ec = pad_to(pad_to(embedding[start:stop, m0:m1], g, 0), m, 1)
            index_dev = jnp.asarray(index, jnp.int32)
            images = _render(model.config, buffers, params, index_dev, zc, ec)
            out[start:stop, m0:m1] = np.asarray(images)[: stop - start, : m1 - m0]
    return out


# --------------------------------------------------------------------------- checks
def _check_batch_size(batch_size: int | None) -> None:
    if batch_size is None:
        return
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")


def _check_result(model: BigGAN, result: SolveResult, name: str = "result") -> int:
    """Check ``result`` was solved with ``model``'s architecture and ended in batch-norm
    mode; return its image count."""
    cfg = model.config
    if getattr(result, "final_use_in", False):
        raise ValueError(
            f"{name}'s last solver stage ran in instance-norm mode (use_in), whose affines are "
            "captured during the solve; manipulations render in batch-norm mode, as the "
            "reference's, and would not reproduce the solved image. Solve with a "
            "manipulation preset (wallpapers_64/jitter, wallpapers_64/morphing, "
            "wallpapers_64/category_transfer, examples_256/*) or use_in=False in the last stage"
        )
    z = np.shape(result.z)
    batch = z[0] if len(z) else 0
    if len(z) != 2 or z[1] != cfg.effective_dim_z:
        raise ValueError(
            f"{name}.z has shape {z} but this model's latents are (batch, "
            f"{cfg.effective_dim_z}): was {name} solved with a different model?"
        )
    emb = np.shape(result.embeddings)
    if emb != (batch, cfg.shared_dim):
        raise ValueError(
            f"{name}.embeddings has shape {emb}, expected ({batch}, {cfg.shared_dim}): "
            f"was {name} solved with a different model?"
        )
    if np.shape(result.classes) != (batch,):
        raise ValueError(
            f"{name}.classes has shape {np.shape(result.classes)}, expected ({batch},)"
        )
    expected = {k: v for k, v in model.generator[PARAMS].items() if k != "shared"}
    want, want_def = jax.tree.flatten_with_path(expected)[0], jax.tree.structure(expected)
    got_def = jax.tree.structure(result.params)
    if got_def != want_def:
        raise ValueError(
            f"{name}.params do not have this model's generator layout (without 'shared'): "
            f"was {name} solved with a different model?"
        )
    for (path, w), g in zip(want, jax.tree.leaves(result.params), strict=True):
        if tuple(np.shape(g)) != (batch,) + tuple(np.shape(w)):
            raise ValueError(
                f"{name}.params{jax.tree_util.keystr(path)} has shape {np.shape(g)}, expected "
                f"({batch}, *{tuple(np.shape(w))}): was {name} solved with a different model?"
            )
    return batch


def _check_index(index, batch: int, name: str, result_name: str) -> int:
    if not is_int(index):
        raise TypeError(f"{name} must be an integer, got {index!r}")
    if not 0 <= index < batch:
        raise IndexError(f"{name}={index} is out of range: {result_name} has {batch} images")
    return int(index)


def _as_vector(values, name: str, dtype) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr.astype(dtype)


def _dtype(result: SolveResult):
    return np.dtype(jax.tree.leaves(result.params)[0].dtype)


# --------------------------------------------------------------------------- public
def render(model: BigGAN, result: SolveResult, batch_size: int | None = None) -> np.ndarray:
    """Each image's final state rendered: G_i(z_i, embedding_i) -> (B, R, R, 3).

    What every manipulation starts from (jitter at std 0, morph at alpha 0 and 1). It can
    differ slightly from ``result.images``, G's output at the last step, before that step's
    update.
    """
    _check_result(model, result)
    _check_batch_size(batch_size)
    dtype = _dtype(result)
    z = np.asarray(result.z, dtype)[:, None, :]
    emb = np.asarray(result.embeddings, dtype)[:, None, :]
    return _render_grid(model, result.params, z, emb, batch_size)[:, 0]


def jitter(
    model: BigGAN,
    result: SolveResult,
    key: Array,
    stds: Sequence[float] = DEFAULT_STDS,
    samples: int = DEFAULT_SAMPLES,
    batch_size: int | None = None,
) -> np.ndarray:
    """Random jittering: G_i(z_i + std * eps, embedding_i), eps ~ N(0, I).

    Args:
      model: the BigGAN ``result`` was solved with.
      result: a ``SolveResult`` with B images.
      key: a PRNG key (or an integer seed). Image i draws its noise, shape
        (len(stds), samples, effective_dim_z), from ``normal(fold_in(key, i))``, so its jitters do
        not depend on ``batch_size`` or on the other images; every (std, sample) gets its
        own eps, as the reference redraws eps per sample.
      stds: noise scales (>= 0); the reference's 0.3, 0.5, 0.7 by default.
      samples: jitters per std (the reference's 30).
      batch_size: most generator renders per compiled call (None: all at once).

    Returns:
      (B, len(stds), samples, R, R, 3) images, NHWC in [-1, 1], each rendered with image
      i's own fine-tuned generator.
    """
    batch = _check_result(model, result)
    _check_batch_size(batch_size)
    if not is_int(samples) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    dtype = _dtype(result)
    stds = _as_vector(stds, "stds", dtype)
    if np.any(stds < 0):
        raise ValueError(f"stds are standard deviations and must be >= 0, got {stds.tolist()}")
    dim = model.config.effective_dim_z
    key = prng_key(key)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch))
    eps = jax.vmap(lambda k: jax.random.normal(k, (len(stds), samples, dim), dtype))(keys)
    z = np.asarray(result.z, dtype)[:, None, None, :] + stds[None, :, None, None] * np.asarray(eps)
    z = z.reshape(batch, len(stds) * samples, dim)
    emb = np.broadcast_to(
        np.asarray(result.embeddings, dtype)[:, None, :], z.shape[:2] + (model.config.shared_dim,)
    )
    images = _render_grid(model, result.params, z, emb, batch_size)
    return images.reshape((batch, len(stds), samples) + images.shape[2:])


def category_transfer(
    model: BigGAN,
    result: SolveResult,
    classes: Sequence[int],
    batch_size: int | None = None,
) -> np.ndarray:
    """Category transfer: re-render each solved z_i and fine-tuned G_i with other classes.

    Args:
      model: the BigGAN ``result`` was solved with.
      result: a ``SolveResult`` with B images.
      classes: (C,) class indices in [0, n_classes). Class c's embedding is the model's
        table row ``model.embed(c)``, except for image i's own class, which uses
        ``result.embeddings[i]`` (the fine-tuned row when the solve had ``update_embed``,
        as ``result.generator(model, i)`` holds it).
      batch_size: most generator renders per compiled call (None: all at once).

    Returns:
      (B, C, R, R, 3) images, NHWC in [-1, 1].
    """
    batch = _check_result(model, result)
    _check_batch_size(batch_size)
    n_classes = model.config.n_classes
    classes = np.asarray(classes)
    if classes.ndim != 1 or classes.size == 0:
        raise ValueError(f"classes must be a non-empty 1-D sequence, got shape {classes.shape}")
    if not np.issubdtype(classes.dtype, np.integer):
        raise TypeError(f"classes must be integers, got dtype {classes.dtype}")
    bad = classes[(classes < 0) | (classes >= n_classes)]
    if bad.size:
        raise ValueError(f"classes {bad.tolist()} out of range [0, {n_classes})")
    dtype = _dtype(result)
    table = np.asarray(model.embed(jnp.asarray(classes)), dtype)  # (C, shared_dim)
    own = np.asarray(result.classes)[:, None] == classes[None, :]  # (B, C)
    emb = np.where(own[..., None], np.asarray(result.embeddings, dtype)[:, None, :], table[None])
    z = np.asarray(result.z, dtype)
    z = np.broadcast_to(z[:, None, :], (batch, classes.size, z.shape[-1]))
    return _render_grid(model, result.params, z, emb, batch_size)


def _morph_frames(
    model: BigGAN,
    result_a: SolveResult,
    index_a: np.ndarray,
    result_b: SolveResult,
    index_b: np.ndarray,
    alphas: np.ndarray,
    batch_size: int | None,
) -> np.ndarray:
    """K frames (index_a[k] -> index_b[k] at alphas[k]) in chunks -> (K, R, R, 3)."""
    count = alphas.shape[0]
    res = model.config.resolution
    out = np.empty((count, res, res, 3), dtype=alphas.dtype)
    chunk = count if batch_size is None else min(count, batch_size)
    buffers = model.generator[BUFFERS]
    dtype = alphas.dtype
    stacks_a, stacks_b = (
        (r.params, jnp.asarray(r.z, dtype), jnp.asarray(r.embeddings, dtype))
        for r in (result_a, result_b)
    )
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        ia, ib = (jnp.asarray(pad_to(v[start:stop], chunk), jnp.int32) for v in (index_a, index_b))
        al = jnp.asarray(pad_to(alphas[start:stop], chunk))
        frames = _render_morph(model.config, buffers, *stacks_a, ia, *stacks_b, ib, al)
        out[start:stop] = np.asarray(frames)[: stop - start]
    return out


def _check_same_dtype(result_a: SolveResult, result_b: SolveResult) -> np.dtype:
    da, db = _dtype(result_a), _dtype(result_b)
    if da != db:
        raise ValueError(f"the results' generators have different dtypes: {da} and {db}")
    return da


def morph(
    model: BigGAN,
    result_a: SolveResult,
    index_a: int,
    result_b: SolveResult,
    index_b: int,
    alphas: Sequence[float] | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """Morph image ``index_a`` of ``result_a`` into image ``index_b`` of ``result_b``.

    Frame alpha renders G with params (1 - alpha) W_a + alpha W_b (EVERY fine-tuned
    generator weight), latent (1 - alpha) z_a + alpha z_b and class embedding
    (1 - alpha) e_a + alpha e_b, so alpha = 0 is exactly image a and alpha = 1 image b.
    (The reference writes alpha * model + (1 - alpha) * model2 with ``model`` the later
    image, i.e. its alpha runs from b to a; ours runs from a to b.) Alphas outside [0, 1]
    are allowed and extrapolate.

    Args:
      model: the BigGAN both results were solved with.
      result_a, result_b: ``SolveResult``s (may be the same object).
      index_a, index_b: image indices in [0, B_a) and [0, B_b).
      alphas: (F,) mixing weights; default the reference's 11 frames i / 10.
      batch_size: most frames per compiled call (None: all at once). Each frame holds
        its own interpolated copy of the generator, so this bounds memory.

    Returns:
      (F, R, R, 3) frames, NHWC in [-1, 1].
    """
    batch_a = _check_result(model, result_a, "result_a")
    batch_b = _check_result(model, result_b, "result_b")
    _check_batch_size(batch_size)
    index_a = _check_index(index_a, batch_a, "index_a", "result_a")
    index_b = _check_index(index_b, batch_b, "index_b", "result_b")
    dtype = _check_same_dtype(result_a, result_b)
    alphas = _as_vector(DEFAULT_ALPHAS if alphas is None else alphas, "alphas", dtype)
    count = alphas.shape[0]
    return _morph_frames(
        model, result_a, np.full((count,), index_a), result_b, np.full((count,), index_b),
        alphas, batch_size,
    )  # fmt: skip


def morph_batch(
    model: BigGAN,
    result: SolveResult,
    pairs: Sequence[tuple[int, int]] | np.ndarray,
    alphas: Sequence[float] | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """``morph`` for many pairs of images of one result, vmapped over all their frames.

    Args:
      model: the BigGAN ``result`` was solved with.
      result: a ``SolveResult`` with B images.
      pairs: (P, 2) image indices (a, b) in [0, B); frame alpha of pair p is as in
        ``morph(model, result, a, result, b, alphas)``.
      alphas: (F,) mixing weights; default i / 10 for i in 0..10. Extrapolation allowed.
      batch_size: most frames per compiled call (None: all P * F at once).

    Returns:
      (P, F, R, R, 3) frames, NHWC in [-1, 1].
    """
    batch = _check_result(model, result)
    _check_batch_size(batch_size)
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.shape[0] == 0:
        raise ValueError(
            f"pairs must be (num_pairs >= 1, 2) image indices, got shape {pairs.shape}"
        )
    if not np.issubdtype(pairs.dtype, np.integer):
        raise TypeError(f"pairs must be integers, got dtype {pairs.dtype}")
    bad = pairs[(pairs < 0) | (pairs >= batch)]
    if bad.size:
        raise IndexError(f"pairs index {bad.tolist()} out of range: result has {batch} images")
    dtype = _dtype(result)
    alphas = _as_vector(DEFAULT_ALPHAS if alphas is None else alphas, "alphas", dtype)
    num_pairs, frames = pairs.shape[0], alphas.shape[0]
    # Flatten (pair, frame) so that batch_size chunks any mix of the two.
    index_a = np.repeat(pairs[:, 0], frames)
    index_b = np.repeat(pairs[:, 1], frames)
    flat = _morph_frames(
        model, result, index_a, result, index_b, np.tile(alphas, num_pairs), batch_size
    )
    return flat.reshape((num_pairs, frames) + flat.shape[1:])
