"""The DGP solver: many images at once, each with its own fine-tuned generator.

One jit-compiled step, ``vmap``-ped over images and sharded over a ('data',) device mesh,
runs every stage of the schedule: the stage's learning rates, loss weights, feature count
and instance-norm switch are rows of a table indexed by the step number, so changing stage
never recompiles. Per image the state is a plain dict::

    trainable   {"generator": G params (all but the class table), "embedding", "z"}
    opt_state   optax.partition of torch-exact Adams (see dgp_jax.optim)
    in_state    instance-norm affines captured at the first use_in step (if any stage has it)
    x_last      G's output at the image's last step
    stopped     early stop (stop_mse / stop_ftr) for the rest of the current stage

The reference semantics reproduced here are listed in REFERENCE.md (Solver); the
trajectory tests check every step against the PyTorch code in float64.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dgp_jax import degradations as degradations_lib
from dgp_jax import metrics as metrics_lib
from dgp_jax import perceptual
from dgp_jax.batching import pad_to
from dgp_jax.checks import prng_key, unit_range_images
from dgp_jax.config import SolverConfig
from dgp_jax.model import BigGAN
from dgp_jax.nets import vgg as vgg_lib
from dgp_jax.nets.biggan import Discriminator, Generator
from dgp_jax.nets.layers import BUFFERS, INSTANCE_NORM, PARAMS, freeze_spectral_norm
from dgp_jax.nets.per_image import check_lowering, per_image_lowering
from dgp_jax.optim import FROZEN, StageHparams, group_index, label_tree, make_optimizer

Array = jax.Array
SELECT_FEATURES = 3  # the reference scores start candidates on the last 3 D features
# SolverConfig.select_batch's default by backend: candidate images per scoring pass on each
# device. A CPU is fastest at about 8 at every model size measured (BENCHMARKS.md, "Start
# candidates"); 16 took 1.3-1.9x as long per candidate at 64 px ch 16 and 128 px ch 32.
# Elsewhere: 128, what 16 per image gave at the default 8 images per device (not measured
# on an accelerator yet; bench_accelerator.py reports the selection time).
SELECT_BATCH = {"cpu": 8}
SELECT_BATCH_ELSEWHERE = 128

# Counts how often the solver step is traced; a test asserts one trace per schedule.
TRACE_COUNTS = {"step": 0, "select": 0}


@flax.struct.dataclass
class SolveResult:
    """What ``restore`` returns. Leading axis = images, in input order.

    images: (B, R, R, 3) G's output at each image's last step, NHWC in [-1, 1].
    degraded: (B, R, R, 3) the observation φ(image) the loss compared against.
    z, classes, embeddings: the solved latents (B, effective_dim_z: the latent G takes,
        dim_z less the 256 px model's remainder), chosen classes (B,) and the
        class embeddings (B, shared_dim) (fine-tuned when ``update_embed``).
    params: the fine-tuned generators, G's params with a leading image axis (the shared
        class table is not copied per image; see ``embeddings``).
    history: per step and image (T, B): 'ftr', 'mse' (on the [-1, 1] scale, as in the
        loss), 'nll', 'loss', and 'active' (False where an image had stopped early).
    select_loss: (B, select_num) the start candidates' scores (empty if none scored).
    metrics: against the originals (unless ``observed=True``): 'mse', 'l1' ([0, 1]
        scale), 'psnr', 'ssim' as the reference reports them, each (B,).
    stage_images: (S, B, R, R, 3) G's output at the last step of each stage that ran (the
        reconstruction process the reference's image sheet shows); None without steps.
    final_use_in: whether the last stage that ran was in instance-norm mode (``use_in``):
        its images then depend on affines captured during the solve, which the batch-norm
        renders of ``dgp_jax.manipulate`` do not reproduce (they refuse such a result).
    """

    images: Array
    degraded: Array
    z: Array
    classes: Array
    embeddings: Array
    params: Any
    history: dict[str, np.ndarray]
    select_loss: np.ndarray
    metrics: dict[str, np.ndarray] | None = None
    stage_images: np.ndarray | None = None
    final_use_in: bool = flax.struct.field(pytree_node=False, default=False)

    def generator(self, model: BigGAN, index: int) -> BigGAN:
        """Image ``index``'s fine-tuned generator as a BigGAN (its class row updated)."""
        params = jax.tree.map(lambda a: a[index], self.params)
        table = model.generator[PARAMS]["shared"]["weight"]
        table = table.at[self.classes[index]].set(self.embeddings[index].astype(table.dtype))
        params = {**params, "shared": {"weight": table}}
        return model.replace(generator={PARAMS: params, BUFFERS: model.generator[BUFFERS]})


# --------------------------------------------------------------------------- schedule
def stage_table(config: SolverConfig, num_groups: int, num_features: int) -> dict[str, np.ndarray]:
    """Per-step settings as arrays (T rows): what the reference's LRScheduler and
    stage loop set before each step."""
    names = ("group_lr", "z_lr", "w_D", "w_mse", "ftr_mask", "use_in", "stage_start", "stage")
    rows: dict[str, list] = {k: [] for k in names}
    step = 0
    for s, n in enumerate(config.iterations):
        for i in range(n):
            step += 1
            warm = step / config.warm_up if step < config.warm_up else 1.0
            g_lr = config.G_lrs[s] * warm
            rows["group_lr"].append(
                [
                    g_lr * config.lr_ratio[s] ** g if g < config.ft_num[s] else 0.0
                    for g in range(num_groups)
                ]  # fmt: skip
            )
            rows["z_lr"].append(config.z_lrs[s] * warm)
            rows["w_D"].append(config.w_D_loss[s])
            rows["w_mse"].append(config.w_mse[s])
            rows["ftr_mask"].append(
                [f >= num_features - config.ftr_num[s] for f in range(num_features)]
            )
            rows["use_in"].append(config.use_in[s])
            rows["stage_start"].append(i == 0)
            rows["stage"].append(s)
    dtypes = {"ftr_mask": bool, "use_in": bool, "stage_start": bool, "stage": np.int32}
    widths = {"group_lr": (num_groups,), "ftr_mask": (num_features,)}
    return {
        k: np.asarray(v, dtype=dtypes.get(k, np.float64)).reshape((len(v),) + widths.get(k, ()))
        for k, v in rows.items()
    }


# --------------------------------------------------------------------------- pieces
def feature_l1(features: list[Array], targets: list[Array], mask: Array | None = None) -> Array:
    """sum_k mask_k * mean|f_k - t_k| over a D feature list, per leading batch row."""
    total = 0.0
    for k, (f, t) in enumerate(zip(features, targets, strict=True)):
        axes = tuple(range(1, f.ndim))
        term = jnp.mean(jnp.abs(f - t), axis=axes)
        total = total + (term if mask is None else jnp.where(mask[k], term, 0.0))
    return total


def _static_use_in(config: SolverConfig):
    """A Python bool when every stage agrees (cheaper program), else None (data)."""
    if all(config.use_in):
        return True
    if not any(config.use_in):
        return False
    return None


@dataclasses.dataclass(frozen=True)
class _Program:
    """The static part of a solve: what the compiled functions close over."""

    model_config: Any
    generator_fn: Callable
    static_use_in: Any
    b1: float
    b2: float
    eps: float
    update_embed: bool
    update_G: bool
    compute_dtype: Any = None  # None: the model's dtype; else G and D run in this dtype
    lowering: str = "auto"  # how G's per-image convolutions batch (dgp_jax.nets.per_image)
    # generator_fn(x, data_i) with per-image data (Degradation.per_image): one mask per image
    per_image_data: bool = False
    ftr_type: str = "Discriminator"  # or a VGG16 feature loss (dgp_jax.perceptual)
    style_weight: float = 0.0


def _vgg_loss(prog: _Program):
    """The VGG16 feature loss of ``prog`` (None for the discriminator's)."""
    if prog.ftr_type == "Discriminator":
        return None
    return perceptual.vgg_feature_loss(prog.ftr_type, prog.style_weight)


def _split_generator(params: dict) -> tuple[dict, dict]:
    """(everything but the class table, the class table)."""
    rest = {k: v for k, v in params.items() if k != "shared"}
    return rest, params["shared"]


def _labels(trainable, prog: _Program):
    return label_tree(trainable, update_embed=prog.update_embed, update_G=prog.update_G)


def _check_generator_side(degradation, image_shape: tuple, dtype) -> None:
    """Refuse a φ whose JAX side (applied to G(z) at every step) changes the image's shape.

    The target check above runs ``target_fn``; with ``observed=True`` it never runs, so
    this traces ``generator_fn`` alone, without computing, on one image as the step calls
    it (with that image's row of the per-image data)."""
    one = jax.ShapeDtypeStruct((1, *image_shape), dtype)
    aux = degradation.per_image
    try:
        if aux is None:
            out = jax.eval_shape(degradation.generator_fn, one)
        else:
            row = jax.ShapeDtypeStruct(np.shape(aux)[1:], np.asarray(aux).dtype)
            out = jax.eval_shape(degradation.generator_fn, one, row)
    except Exception as error:  # a φ that cannot even trace: name it before the solve does
        raise ValueError(
            f"degradation {degradation.name!r}: its generator_fn fails on a "
            f"{one.shape} {np.dtype(dtype).name} image: {error}"
        ) from error
    if getattr(out, "shape", None) != one.shape:
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"degradation {degradation.name!r}: its generator_fn turns {one.shape} images "
            f"into {shape}; φ(G(z)) must keep the model's image size {one.shape}, because "
            "the feature loss compares it with the observation at that size"
        )


def _generate_one(prog: _Program, g_params, g_buffers, z, emb, in_state, use_in):
    """G for one image (batch of 1 inside), returning the image and the new IN state."""
    variables = {PARAMS: g_params, BUFFERS: g_buffers}
    gen = Generator(prog.model_config)
    with per_image_lowering(prog.lowering):
        if prog.static_use_in is False:
            return gen.apply(variables, z[None], emb[None]), in_state
        variables[INSTANCE_NORM] = in_state
        x, new = gen.apply(variables, z[None], emb[None], use_in=use_in, mutable=[INSTANCE_NORM])
    return x, new[INSTANCE_NORM]


def _merge(per_image: dict, shared: dict) -> dict:
    """G's params from the per-image (trained) part and the part every image shares."""
    flat = traverse_util.flatten_dict(per_image, sep="/")
    flat.update(traverse_util.flatten_dict(shared, sep="/"))
    return traverse_util.unflatten_dict(flat, sep="/")


def _split_shared(g_params: dict, group_lr: np.ndarray, prog: _Program):
    """(per-image part, shared part) of G's params (the class table excluded).

    What no stage updates -- the output layer, groups whose learning rate is 0 in every
    stage, all of G when ``update_G`` is off -- is the same for every image, so it is
    kept once and its convolutions run as one dense batched convolution rather than as
    per-image ones. (Their Adam state is never observable: a zero rate moves nothing.)
    ``group_lr`` is the schedule's (steps, groups) rate table (``stage_table``).
    """
    labels = traverse_util.flatten_dict(
        _labels({"generator": g_params, "embedding": 0, "z": 0}, prog), sep="/"
    )
    trained_groups = set(np.flatnonzero(np.any(group_lr != 0, axis=0)).tolist())
    per_image, shared = {}, {}
    for path, leaf in traverse_util.flatten_dict(g_params, sep="/").items():
        label = labels["generator/" + path]
        frozen = label == FROZEN or group_index(label) not in trained_groups
        (shared if frozen else per_image)[path] = leaf
    unflat = lambda d: traverse_util.unflatten_dict(d, sep="/")  # noqa: E731
    return unflat(per_image), unflat(shared)


def _make_step(prog: _Program, tx, mesh: Mesh):
    disc = Discriminator(prog.model_config)
    vgg_loss = _vgg_loss(prog)

    def per_image(state, target, target_feats, aux, d_vars, g_shared, hp):
        use_in = prog.static_use_in if prog.static_use_in is not None else hp["use_in"]
        stopped = jnp.where(hp["stage_start"], False, state["stopped"])

        def loss_fn(trainable):
            g_params = _merge(trainable.get("generator", {}), g_shared[PARAMS])
            g_in = (g_params, g_shared[BUFFERS], trainable["z"], trainable["embedding"],
                    state["in_state"])  # fmt: skip
            if prog.compute_dtype is not None:
                # bfloat16 compute: G's own weights are cast here (their gradients flow back
                # to the float32 copies); D and G's shared part come cast once per solve.
                g_in = _cast_floats(g_in, prog.compute_dtype)
            x, in_state = _generate_one(prog, *g_in, use_in)
            if prog.compute_dtype is not None:
                x, in_state = _cast_floats((x, in_state), target.dtype)
            x_map = prog.generator_fn(x, aux) if prog.per_image_data else prog.generator_fn(x)
            # d_vars: the discriminator's variables, or VGG16's params for a VGG loss
            if vgg_loss is None:
                # Inside the context, D's self-attention runs image by image like G's
                # (per_image.attention; batched, its softmax gradient was the largest op
                # of a 4-image step); its kernels are shared, so its convolutions stay
                # dense batched convolutions.
                x_in = x_map.astype(prog.compute_dtype or x_map.dtype)
                with per_image_lowering(prog.lowering):
                    _, feats = disc.apply(d_vars, x_in)
                feats = _cast_floats(feats, target.dtype)
                ftr = feature_l1(feats, target_feats, hp["ftr_mask"])[0]
            else:
                feats = vgg_loss.features(d_vars, x_map.astype(prog.compute_dtype or x_map.dtype))
                feats = _cast_floats(feats, target.dtype)
                ftr = vgg_loss.distance(feats, target_feats)[0]
            mse = jnp.mean(jnp.square(x_map - target))
            nll = jnp.mean(jnp.square(trainable["z"]) / 2)
            loss = ftr * hp["w_D"] + mse * hp["w_mse"] + nll * hp["w_nll"]
            return loss, (x[0], in_state, ftr, mse, nll)

        (loss, (x, in_state, ftr, mse, nll)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["trainable"]
        )
        hparams = StageHparams(group_lr=hp["group_lr"], z_lr=hp["z_lr"], use_in=jnp.asarray(use_in))
        updates, opt_state = tx.update(
            grads, state["opt_state"], state["trainable"], hparams=hparams
        )
        trainable = optax.apply_updates(state["trainable"], updates)
        active = jnp.logical_not(stopped)
        new = {"trainable": trainable, "opt_state": opt_state, "in_state": in_state, "x_last": x}
        new = jax.tree.map(lambda n, o: jnp.where(active, n, o), new, _without(state, "stopped"))
        hit = (mse < hp["stop_mse"]) | (ftr < hp["stop_ftr"])
        new["stopped"] = stopped | (active & hit)
        record = {"ftr": ftr, "mse": mse, "nll": nll, "loss": loss, "active": active}
        return new, record

    def local_step(state, target, target_feats, aux, d_vars, g_shared, table, t):
        hp = {k: v[t] for k, v in table.items()}
        return jax.vmap(per_image, in_axes=(0, 0, 0, 0, None, None, None))(
            state, target, target_feats, aux, d_vars, g_shared, hp
        )

    # Images are independent, so each device runs the vmapped step on its own shard
    # (shard_map) rather than leaving the split to the SPMD partitioner, which mis-splits
    # convolutions whose kernels are batched per image (seen on XLA:CPU).
    data, rep = PartitionSpec("data"), PartitionSpec()
    sharded = jax.shard_map(
        local_step,
        mesh=mesh,
        in_specs=(data, data, data, data, rep, rep, rep, rep),
        out_specs=(data, data),
        check_vma=False,
    )

    def step(state, target, target_feats, aux, d_vars, g_shared, table, t):
        TRACE_COUNTS["step"] += 1
        return sharded(state, target, target_feats, aux, d_vars, g_shared, table, t)

    return jax.jit(step, donate_argnums=(0,))


PRECISIONS = {"float32": ("float32", None), "tf32": ("tensorfloat32", None),
              "bfloat16": ("bfloat16", jnp.bfloat16)}  # fmt: skip


def _precision(precision: str):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def _cast_floats(tree, dtype):
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
    )


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


def _make_selector(prog: _Program, host_degradation: Callable | None):
    """Scores start candidates. The reference degrades them with its *target-side* φ
    (``pre_process(x)`` defaults to target=True): for super-resolution that is the 8-bit
    PIL path, which runs on the host between the two compiled halves."""
    disc = Discriminator(prog.model_config)
    gen = Generator(prog.model_config)
    vgg_loss = _vgg_loss(prog)

    def features_l1(x, target_feats, d_vars):
        if vgg_loss is not None:  # the reference scores candidates with its criterion
            return vgg_loss.distance(vgg_loss.features(d_vars, x), list(target_feats))
        _, feats = disc.apply(d_vars, x)
        last = slice(len(feats) - SELECT_FEATURES, None)
        return feature_l1(feats[last], list(target_feats[last]))

    if host_degradation is None:

        def per_image(z_cands, emb_cands, target_feats, aux, g_vars, d_vars):
            x = gen.apply(g_vars, z_cands, emb_cands)
            x = prog.generator_fn(x, aux) if prog.per_image_data else prog.generator_fn(x)
            return features_l1(x, target_feats, d_vars)

        def score(z_cands, emb_cands, target_feats, aux, g_vars, d_vars):
            TRACE_COUNTS["select"] += 1
            return jax.vmap(per_image, in_axes=(0, 0, 0, 0, None, None))(
                z_cands, emb_cands, target_feats, aux, g_vars, d_vars
            )

        return jax.jit(score)

    render = jax.jit(jax.vmap(lambda z, e, g: gen.apply(g, z, e), in_axes=(0, 0, None)))
    compare = jax.jit(jax.vmap(features_l1, in_axes=(0, 0, None)))

    def score_on_host(z_cands, emb_cands, target_feats, aux, g_vars, d_vars):
        x = np.asarray(render(z_cands, emb_cands, g_vars))
        x = np.asarray(host_degradation(x.reshape((-1,) + x.shape[2:])), x.dtype).reshape(x.shape)
        x = jax.device_put(x, z_cands.sharding)
        return compare(x, target_feats, d_vars)

    return score_on_host


def _host_target_in_selection(degradation: degradations_lib.Degradation) -> bool:
    return degradation.name.startswith(("SR", "hybrid"))


# --------------------------------------------------------------------------- caches
# Compiled programs are kept per static setting, so a second batch of the same shape (the
# CLI's next batch, a benchmark's second run) neither retraces nor recompiles.
@functools.lru_cache(maxsize=32)
def _cached_step(prog: _Program, labels_items: tuple, mesh: Mesh):
    """(the step, its optimiser, the function that builds the state the step starts from)."""
    labels = traverse_util.unflatten_dict(dict(labels_items), sep="/")
    tx = make_optimizer(labels, prog.b1, prog.b2, prog.eps)
    return _make_step(prog, tx, mesh), tx, _make_state_init(tx, mesh)


def _make_state_init(tx, mesh: Mesh):
    """(embeddings (B, E), z (B, Z), G's trained part) -> (the trainable tree with G tiled
    once per image, its optimiser state), in one program whose outputs are laid out over
    the mesh's images from the start. Op by op this was a hundred small compilations per
    model shape (3 s at 128 px), and every image's copy of G was built on one device."""

    def init(embeddings, z, g_trained):
        trainable = {"embedding": embeddings, "z": z}
        if g_trained:
            tile = lambda a: jnp.broadcast_to(a, (z.shape[0],) + a.shape)  # noqa: E731
            trainable["generator"] = jax.tree.map(tile, g_trained)
        return trainable, jax.vmap(tx.init)(trainable)

    return jax.jit(init, out_shardings=NamedSharding(mesh, PartitionSpec("data")))


@functools.lru_cache(maxsize=32)
def _cached_selector(prog: _Program, host_degradation):
    return _make_selector(prog, host_degradation)


@functools.lru_cache(maxsize=8)
def _cached_features(model_config, ftr_type="Discriminator", style_weight=0.0):
    if ftr_type == "Discriminator":
        return jax.jit(lambda x, d: Discriminator(model_config).apply(d, x)[1])
    loss = perceptual.vgg_feature_loss(ftr_type, style_weight)
    return jax.jit(lambda x, params: loss.features(params, x))


@functools.lru_cache(maxsize=8)
def _cached_freeze(model_config):
    """D's variables with its spectrally normalised weights computed once, jitted."""

    def freeze(d_vars):
        dtype = jax.tree.leaves(d_vars)[0].dtype
        x = jnp.zeros((1, model_config.resolution, model_config.resolution, 3), dtype)
        return freeze_spectral_norm(Discriminator(model_config), d_vars, x)

    return jax.jit(freeze)


@functools.lru_cache(maxsize=32)
def default_degradation(mode: str, resolution: int, factor: int | None):
    """The mode's φ, one object per setting so that compiled programs can be reused."""
    return degradations_lib.for_mode(mode, resolution, factor=factor)


# --------------------------------------------------------------------------- restore
def _check_start(z_init, z_candidates, class_candidates, batch: int, cfg, select_num: int):
    """The explicit start latents and candidates: shapes named, values finite, classes in
    range (an out-of-range class indexes past the embedding table: NaN, no error)."""
    dim_z = cfg.effective_dim_z
    if z_init is not None:
        z = np.asarray(z_init)
        if z.shape != (batch, dim_z):
            raise ValueError(
                f"z_init must be ({batch}, {dim_z}) (batch, the model's "
                f"effective_dim_z), got {z.shape}"
            )
        if not np.all(np.isfinite(z)):
            raise ValueError("z_init holds NaN or infinite values")
    num = select_num
    if z_candidates is not None:
        zc = np.asarray(z_candidates)
        if zc.ndim != 3 or zc.shape[0] != batch or zc.shape[2] != dim_z:
            raise ValueError(f"z_candidates must be ({batch}, candidates, {dim_z}), got {zc.shape}")
        if not np.all(np.isfinite(zc)):
            raise ValueError("z_candidates holds NaN or infinite values")
        num = zc.shape[1]
    if class_candidates is not None:
        cc = np.asarray(class_candidates)
        if cc.shape != (batch, num):
            raise ValueError(f"class_candidates must be ({batch}, {num}), got {cc.shape}")
        if not np.issubdtype(cc.dtype, np.integer):
            raise ValueError(f"class_candidates must be integers, got dtype {cc.dtype}")
        if np.any((cc < 0) | (cc >= cfg.n_classes)):
            bad = np.unique(cc[(cc < 0) | (cc >= cfg.n_classes)])
            raise ValueError(f"class_candidates {bad.tolist()} out of range [0, {cfg.n_classes})")


def _as_keys(key, batch: int) -> Array:
    key = jnp.asarray(key)
    if key.ndim >= 1 and key.shape[0] == batch and (key.ndim == 2 or jax.dtypes.issubdtype(
            key.dtype, jax.dtypes.prng_key) and key.ndim == 1):  # fmt: skip
        return key
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch))


def default_mesh(batch: int | None = None) -> Mesh:
    """A ('data',) mesh over this process's devices; with ``batch``, over as many of them as
    divide it, so that no device solves padding copies (restore pads the batch to a
    multiple of the mesh size)."""
    devices = jax.local_devices()
    if batch is not None:
        devices = devices[
            : max(d for d in range(1, min(batch, len(devices)) + 1) if batch % d == 0)
        ]
    return Mesh(np.array(devices), ("data",))


def restore(
    model: BigGAN,
    images,
    classes=None,
    config: SolverConfig | str = "reconstruct",
    key=None,
    *,
    z_init=None,
    z_candidates=None,
    class_candidates=None,
    degradation: degradations_lib.Degradation | None = None,
    observed: bool = False,
    mesh: Mesh | None = None,
    callback: Callable[[int, int, dict], None] | None = None,
    precision: str = "float32",
    lowering: str = "auto",
    vgg=None,
) -> SolveResult:
    """Restore a batch of images with DGP.

    Args:
      model: a BigGAN with its discriminator (``load_biggan``; the discriminator is not
        needed when ``config.ftr_type`` is a VGG loss).
      images: (B, R, R, 3) NHWC in [-1, 1]: the originals, degraded here by the mode's φ
        (as in the paper's protocol; metrics are then reported), or, with
        ``observed=True``, observations that are already degraded.
      classes: (B,) ImageNet classes; -1 (or None for all) = unknown, chosen with the
        latent among the start candidates (without a search, ``select_num=0`` or
        ``z_init``: class 0, as the reference starts at z = 0).
      config: a SolverConfig or a preset name.
      key: a PRNG key or an integer seed (image i uses ``fold_in(key, i)``), or one key
        per image.
      z_init: (B, model.config.effective_dim_z) start latents; skips the candidate search.
      z_candidates / class_candidates: (B, select_num, effective_dim_z) / (B, select_num) explicit
        start candidates, instead of sampling them from ``key``.
      degradation: a custom φ (``dgp_jax.degradations``); default: the mode's.
      mesh: a ('data',) device mesh for the image axis; default: as many local devices as
        divide the batch.
      callback: called as ``callback(step, total_steps, info)`` after each step.
      precision: "float32" (default: float32 everywhere, matmuls and convolutions at full
        float32 precision on every device), "tf32" (the device's default matmul precision:
        TensorFloat-32 on NVIDIA Ampere and later; on a CPU the same as float32) or
        "bfloat16" (the fine-tuning steps run G and D in bfloat16; weights, latents,
        optimiser state and losses stay float32). The mode's matmul precision holds for the
        whole call (candidate scoring and target features too), in place of any global
        ``jax_default_matmul_precision``. The last two are opt-in speed modes that change
        results; BENCHMARKS.md gives their measured effect.
      lowering: how the convolutions of the per-image generators are batched:
        "auto" (per layer, by backend and shape), "vmap" (XLA's grouped convolutions),
        "im2col", "shifted" or "unrolled"; see ``dgp_jax.nets.per_image``. Every
        lowering computes the same values up to float rounding; only speed differs.
      vgg: VGG16's parameter tree (``dgp_jax.nets.vgg.load_params`` of torchvision's
        ``vgg16-397923af.pth``), needed when ``config.ftr_type`` is "VGG" or "johnson"
        (``dgp_jax.perceptual``).
    """
    check_lowering(lowering)
    matmul_precision, compute_dtype = _precision(precision)
    with jax.default_matmul_precision(matmul_precision):
        if isinstance(config, str):
            config = SolverConfig.preset(config)
        cfg = model.config
        if config.ftr_type == "Discriminator":
            if model.discriminator is None:
                raise ValueError("DGP needs the discriminator: load the model with its D_*.pth")
        elif vgg is None:
            raise ValueError(
                f"ftr_type {config.ftr_type!r} needs VGG16's weights: pass "
                f"vgg=dgp_jax.nets.vgg.load_params('{vgg_lib.WEIGHT_FILE}') "
                f"(from {vgg_lib.WEIGHT_URL})"
            )
        if config.resolution is not None and config.resolution != cfg.resolution:
            raise ValueError(
                f"the preset is for {config.resolution} px models but the model is "
                f"{cfg.resolution} px{_preset_hint(config.dgp_mode, cfg.resolution)}; "
                "pass resolution=None to override"
            )
        dtype = model.dtype
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (cfg.resolution, cfg.resolution, 3):
            raise ValueError(
                f"images must be (batch, {cfg.resolution}, {cfg.resolution}, 3) NHWC in [-1, 1], "
                f"got {images.shape}"
            )
        unit_range_images(images, "images", slack=0.001, nan_ok=False)
        if config.dgp_mode == "colorization" and not observed:
            _warn_gray(images)
        batch = images.shape[0]
        if batch == 0:
            raise ValueError("images holds no image (batch 0)")
        classes = np.full((batch,), -1) if classes is None else np.asarray(classes).reshape(-1)
        if classes.shape != (batch,):
            raise ValueError(f"classes must be ({batch},), got {classes.shape}")
        if np.any(classes >= cfg.n_classes) or np.any(classes < -1):
            bad = classes[(classes >= cfg.n_classes) | (classes < -1)]
            raise ValueError(f"classes {bad.tolist()} out of range [-1, {cfg.n_classes})")
        if key is None:
            key = 0
        key = prng_key(key, per_image=batch)
        keys = _as_keys(key, batch)
        _check_start(z_init, z_candidates, class_candidates, batch, cfg, config.select_num)

        degradation = degradation or default_degradation(
            config.dgp_mode,
            cfg.resolution,
            config.sr_factor if config.dgp_mode in ("SR", "hybrid") else None,
        )
        aux = degradation.per_image
        if aux is not None and _host_target_in_selection(degradation):
            raise ValueError(
                f"{degradation.name}: per-image data cannot go through the host-side "
                "selection of SR and hybrid; solve them one mask at a time"
            )
        if aux is not None and np.shape(aux)[0] != batch:
            raise ValueError(
                f"the degradation holds {np.shape(aux)[0]} per-image masks for {batch} images"
            )

        images = images.astype(dtype)
        targets = images if observed else np.asarray(degradation.target_fn(images), dtype)
        if targets.shape[1:] != images.shape[1:]:
            # The feature loss runs the discriminator (or VGG16) on φ(G(z)), at the model's
            # size; SR's φ upsamples its low-resolution image back for this reason.
            raise ValueError(
                f"degradation {degradation.name!r} turns {images.shape[1:]} images into "
                f"{targets.shape[1:]} observations; φ must keep the model's image size "
                f"{images.shape[1:]}, because the feature loss compares φ(G(z)) with the "
                "observation at that size (SR upsamples its low-resolution image back)"
            )
        _check_generator_side(degradation, images.shape[1:], dtype)

        mesh = mesh or default_mesh(batch)
        n_dev = mesh.devices.size
        padded = math.ceil(batch / n_dev) * n_dev

        def pad(a):
            return pad_to(a, padded)

        shard = NamedSharding(mesh, PartitionSpec("data"))
        replicated = NamedSharding(mesh, PartitionSpec())
        put_b = lambda t: jax.device_put(t, shard)  # noqa: E731
        put_r = lambda t: jax.device_put(t, replicated)  # noqa: E731

        prog = _Program(
            model_config=cfg, generator_fn=degradation.generator_fn,
            static_use_in=_static_use_in(config), b1=config.G_B1, b2=config.G_B2,
            eps=config.adam_eps,
            update_embed=config.update_embed, update_G=config.update_G,
            compute_dtype=compute_dtype, lowering=lowering, ftr_type=config.ftr_type,
            style_weight=float(config.style_weight), per_image_data=aux is not None,
        )  # fmt: skip
        # the feature network's variables: D's (its spectrally normalised weights computed
        # once: D is frozen), or VGG16's params for a VGG loss
        if config.ftr_type == "Discriminator":
            d_vars = put_r(_cached_freeze(cfg)(model.discriminator))
        else:
            d_vars = put_r(vgg)
        g_params, table = _split_generator(model.generator[PARAMS])
        rows = stage_table(config, cfg.num_g_blocks + 1, cfg.num_d_features)
        g_trained, g_fixed = _split_shared(g_params, rows["group_lr"], prog)
        g_shared = put_r({PARAMS: g_fixed, BUFFERS: model.generator[BUFFERS]})

        target_dev = put_b(pad(targets))
        # Per-image data of φ (masks), or a placeholder the program ignores.
        aux_dev = put_b(pad(np.zeros((batch,), dtype) if aux is None else np.asarray(aux, dtype)))
        features_fn = _cached_features(cfg, prog.ftr_type, prog.style_weight)
        target_feats = features_fn(target_dev, d_vars)
        # Per image, batch of one inside the vmapped step: (B, 1, ...).
        target_feats_1 = [f[:, None] for f in target_feats]

        # -- start: candidates scored on the last 3 features --------------------------------
        select_loss = np.zeros((batch, 0))
        known = classes >= 0
        start_classes = np.where(known, classes, 0)
        if z_init is not None:
            z0 = np.asarray(z_init, dtype).reshape(batch, cfg.effective_dim_z)
        else:
            z0, start_classes, select_loss = _select(
                model, prog, config, keys, classes, target_feats, z_candidates, class_candidates,
                dtype, pad, put_b, put_r, degradation, _host_target_in_selection(degradation),
                d_vars, aux_dev, padded // n_dev,
            )  # fmt: skip
        embeddings = np.asarray(model.embed(jnp.asarray(start_classes)), dtype)

        # -- the fine-tuning state, one copy per image -----------------------------------------
        # (an empty generator subtree would vanish from the optimiser's label tree)
        one_image = {"embedding": 0, "z": 0, **({"generator": g_trained} if g_trained else {})}
        labels = _labels(one_image, prog)
        step_fn, _, init_fn = _cached_step(
            prog, tuple(sorted(traverse_util.flatten_dict(labels, sep="/").items())), mesh
        )
        trainable, opt_state = init_fn(pad(embeddings), pad(z0), g_trained)
        in_state = _initial_in_state(model, prog, padded, dtype)
        state = {
            "trainable": trainable,
            "opt_state": opt_state,
            "in_state": in_state,
            "x_last": jnp.zeros((padded, cfg.resolution, cfg.resolution, 3), dtype),
            "stopped": jnp.zeros((padded,), bool),
        }
        state = put_b(state)

        # Run-wide settings as rows too: data, so another value reuses the compiled step.
        for name, value in (("w_nll", config.w_nll), ("stop_mse", config.stop_mse),
                            ("stop_ftr", config.stop_ftr)):  # fmt: skip
            rows[name] = np.full(len(rows["z_lr"]), value, np.float64)
        table_dev = put_r({k: jnp.asarray(v, dtype if v.dtype == np.float64 else v.dtype)
                           for k, v in rows.items() if k != "stage"})  # fmt: skip
        d_step, g_shared_step = d_vars, g_shared
        if compute_dtype is not None:  # constants of the solve: cast once, not per step
            d_step, g_shared_step = _cast_floats((d_vars, g_shared), compute_dtype)
        records = []
        stage_images = []
        stage = rows["stage"]
        rows["stage_end"] = np.append(stage[1:] != stage[:-1], True)[: len(stage)]
        total = config.total_steps
        for t in range(total):
            state, record = step_fn(
                state,
                target_dev,
                target_feats_1,
                aux_dev,
                d_step,
                g_shared_step,
                table_dev,
                jnp.int32(t),
            )
            records.append(record)
            if rows["stage_end"][t]:
                stage_images.append(np.asarray(state["x_last"])[:batch])
            if callback is not None:
                callback(t + 1, total, {"stage": int(rows["stage"][t]), "record": record})

        history = {
            k: np.stack([np.asarray(r[k])[:batch] for r in records])
            if records
            else np.zeros((0, batch))
            for k in ("ftr", "mse", "nll", "loss", "active")
        }
        trained = jax.tree.map(lambda a: a[:batch], state["trainable"])
        fixed = jax.tree.map(lambda a: jnp.broadcast_to(a, (batch,) + a.shape), g_fixed)
        x_final = np.asarray(state["x_last"])[:batch]
        if total == 0:
            x_final = np.asarray(model.generate(jnp.asarray(z0), jnp.asarray(embeddings)))
        metrics = None
        if not observed:
            mode = _metric_mode(config.dgp_mode)
            mask = degradation.mask if mode == "inpainting" else None
            metrics = metrics_lib.restoration_metrics(x_final, images, mode, mask=mask)
        return SolveResult(
            images=x_final,
            degraded=targets,
            z=np.asarray(trained["z"]),
            classes=np.asarray(start_classes),
            embeddings=np.asarray(trained["embedding"]),
            params=_merge(trained.get("generator", {}), fixed),
            history=history,
            select_loss=np.asarray(select_loss),
            stage_images=np.stack(stage_images) if stage_images else None,
            metrics=metrics,
            final_use_in=_final_use_in(config),
        )


class GrayInputWarning(UserWarning):
    """Gray images given to colorization as originals (``observed=False``)."""


def _warn_gray(images: np.ndarray) -> None:
    gray = [i for i, x in enumerate(images) if np.array_equal(x[..., 0], x[..., 1])
            and np.array_equal(x[..., 1], x[..., 2])]  # fmt: skip
    if gray:
        warnings.warn(
            f"images {gray} are gray: colorization takes the images as originals, so the "
            "result is scored against gray; pass observed=True for gray inputs (no metrics)",
            GrayInputWarning,
            stacklevel=3,
        )


def _preset_hint(mode: str, resolution: int) -> str:
    """ ": use the preset <name> for <size> px models" where this size has one for the mode."""
    from dgp_jax.config import preset_for_size

    name = preset_for_size(mode, resolution)
    return f": use the preset {name} for {resolution} px models" if name else ""


def _final_use_in(config: SolverConfig) -> bool:
    """use_in of the last stage with steps (False without any)."""
    ran = [u for u, n in zip(config.use_in, config.iterations, strict=True) if n > 0]
    return bool(ran and ran[-1])


def _metric_mode(mode: str) -> str:
    return mode if mode in degradations_lib.MODES else "reconstruct"


def _initial_in_state(model: BigGAN, prog: _Program, batch: int, dtype):
    if prog.static_use_in is False:
        return {}
    cfg = model.config
    z = jnp.zeros((1, cfg.effective_dim_z), dtype)
    emb = jnp.zeros((1, cfg.shared_dim), dtype)
    shapes = jax.eval_shape(
        lambda: Generator(cfg).apply(
            {PARAMS: model.generator[PARAMS], BUFFERS: model.generator[BUFFERS]},
            z, emb, use_in=True, mutable=[INSTANCE_NORM],
        )[1][INSTANCE_NORM]
    )  # fmt: skip
    return jax.tree.map(lambda s: jnp.zeros((batch,) + s.shape, s.dtype), shapes)


def select_chunk(
    select_batch: int | None, images_per_device: int, num: int, backend: str | None = None
) -> int:
    """Start candidates per image in one scoring pass: ``select_batch`` candidate images per
    device (None: ``SELECT_BATCH`` for the backend) shared among the device's images, at
    least one each and at most ``num``. No statistic crosses candidates (G runs on its
    stored batch-norm statistics), so the pass size changes scores only by float rounding;
    it sets the passes' speed and memory."""
    if select_batch is None:
        select_batch = SELECT_BATCH.get(backend or jax.default_backend(), SELECT_BATCH_ELSEWHERE)
    return max(1, min(num, select_batch // max(1, images_per_device)))


def _select(model, prog, config, keys, classes, target_feats, z_candidates, class_candidates,
            dtype, pad, put_b, put_r, degradation, host_select, d_vars, aux_dev,
            images_per_device):  # fmt: skip
    """The reference's select_z: the candidate with the lowest 3-feature distance."""
    cfg = model.config
    batch = classes.shape[0]
    known = classes >= 0
    num = config.select_num if z_candidates is None else np.shape(z_candidates)[1]
    if num == 0:  # the reference: z = 0
        return np.zeros((batch, cfg.effective_dim_z), dtype), np.where(known, classes, 0), \
            np.zeros((batch, 0))  # fmt: skip
    if z_candidates is None:
        std = config.sample_std if num > 1 else 1.0  # select_num == 1: plain N(0, 1)
        kz = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
        z_candidates = std * jax.vmap(
            lambda k: jax.random.normal(k, (num, cfg.effective_dim_z), dtype)
        )(kz)
    z_candidates = np.asarray(z_candidates, dtype)
    if class_candidates is None:
        ky = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        random_classes = np.asarray(
            jax.vmap(lambda k: jax.random.randint(k, (num,), 0, cfg.n_classes))(ky)
        )
        class_candidates = np.where(known[:, None], classes[:, None], random_classes)
    class_candidates = np.asarray(class_candidates).reshape(batch, num)
    if num == 1:
        return z_candidates[:, 0], class_candidates[:, 0], np.zeros((batch, 0))

    # Every candidate's class embedding at once: one gather, not one per pass.
    table = np.asarray(model.generator[PARAMS]["shared"]["weight"], dtype)
    emb_candidates = table[class_candidates]
    g_vars = put_r({PARAMS: model.generator[PARAMS], BUFFERS: model.generator[BUFFERS]})
    score = _cached_selector(prog, degradation.target_fn if host_select else None)
    chunk = select_chunk(config.select_batch, images_per_device, num)
    feats = [f[:, None] for f in target_feats]
    scores = []  # left on the device until every pass is dispatched
    for start in range(0, num, chunk):
        zc = z_candidates[:, start : start + chunk]
        emb = emb_candidates[:, start : start + chunk]
        n = zc.shape[1]
        if n < chunk:  # keep one compiled shape: pad the last chunk, drop its scores
            zc, emb = pad_to(zc, chunk, axis=1), pad_to(emb, chunk, axis=1)
        scores.append((score(put_b(pad(zc)), put_b(pad(emb)), feats, aux_dev, g_vars, d_vars), n))
    select_loss = np.concatenate([np.asarray(out)[:batch, :n] for out, n in scores], axis=1)
    best = np.argmin(select_loss, axis=1)  # first minimum, as torch.argmin
    rows = np.arange(batch)
    return z_candidates[rows, best], class_candidates[rows, best], select_loss
