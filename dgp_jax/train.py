"""Class-conditional BigGAN training with the BigGAN-PyTorch recipe, in one compiled step.

    trainer = Trainer(BigGANConfig(resolution=64, G_ch=32, D_ch=32, n_classes=n, ...),
                      TrainConfig(batch_size=64, steps=20000), "runs/x")
    trainer.fit(dataset)                       # dgp_jax.data.open_dataset("photos/")
    trainer = Trainer.resume("runs/x")         # after an interruption: the same run goes on
    model = dgp_jax.load_biggan("runs/x/model")  # EMA generator + discriminator, for DGP

What is reproduced from BigGAN-PyTorch (``train_fns.GAN_training_function``, ``losses.py``,
``utils.ema`` and the ``launch_BigGAN_*.sh`` settings):

* Hinge loss: D minimises mean(relu(1 - D(x, y))) + mean(relu(1 + D(G(z, y'), y'))), G
  minimises -mean(D(G(z, y'), y')); z ~ N(0, z_std^2), y' uniform over the classes.
* ``num_D_steps`` D steps per G step, each on its own real batch (the loader hands out
  ``batch_size * num_D_steps`` images per iteration) and fresh z, y'. D sees fake and real
  concatenated in one forward pass (``split_D`` off), so its power iterations advance once
  per D step and once in the G step.
* G and D run in training mode throughout (``.train()``): spectral norm writes its power
  iteration back (``u0``, ``sv0``), G's BN layers normalise with batch statistics and keep
  running averages (momentum 0.1) in ``stored_mean``/``stored_var``. G's forward in the D
  steps (without gradient) advances them too, as in the reference.
* Adam with betas (0, 0.999) for both nets, separate learning rates (defaults G 1e-4, D 4e-4)
  and one ``adam_eps`` for both: the reference's flag defaults to 1e-8, its BigGAN launch
  scripts pass 1e-6, which is our default.
* Orthogonal init (``random_biggan``). An EMA copy of G (params *and* buffers, as the
  reference averages the whole state dict) with ``decay`` after ``ema_start`` iterations
  and a copy of G before it: ``ema = ema * d + G * (1 - d)`` after every G step, ``d = 0``
  while ``itr < ema_start`` (itr counts from 1).

Not reproduced: gradient accumulation, ortho regularisation (off in the BigGAN scripts),
fp16, standing statistics.

The state is a dict of plain pytrees (``step, key, G, D, G_ema, opt_G, opt_D``); the step is
one ``jax.jit`` over a ('data',) mesh of the local devices: state replicated, the batch
axis sharded. Batch statistics are over the whole (global) batch, i.e. cross-replica BN,
so the numbers do not depend on the device count.

A run folder holds::

    train_config.json      the model and training configuration
    log.csv                step, G_loss, D_loss_real, D_loss_fake, seconds, images_per_s
    samples/step_*.png     G_ema sample sheets (one row per class shown, fixed z)
    checkpoints/step_*/    orbax training state + meta.json (written, then renamed)
    model/                 G_ema + D in dgp_jax's checkpoint format (load_biggan, export_pth)
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import inspect
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from PIL import Image

from dgp_jax import checkpoint as checkpoint_lib
from dgp_jax.checks import fits_field_type, is_nonnegative_number
from dgp_jax.images import sample_grid
from dgp_jax.model import random_biggan
from dgp_jax.nets.biggan import BigGANConfig, Discriminator, Generator
from dgp_jax.nets.layers import BUFFERS, PARAMS

Array = jax.Array
State = dict[str, Any]

CHECKPOINTS = "checkpoints"
SAMPLES = "samples"
MODEL = "model"
LOG = "log.csv"
CONFIG = "train_config.json"
LOG_FIELDS = ("step", "G_loss", "D_loss_real", "D_loss_fake", "seconds", "images_per_s")
_STEP_DIR = re.compile(r"^step_(\d{8})$")
# Fields that fix the data stream and the compiled program: a resumed run must keep them.
_FIXED_ON_RESUME = ("batch_size", "G_batch_size", "num_D_steps", "seed", "augment", "z_std")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training settings, under BigGAN-PyTorch's flag names where it has one.

    ``batch_size`` is D's batch per D step (so ``batch_size * num_D_steps`` real images per
    iteration); ``G_batch_size`` (0 = batch_size) is G's batch in its step. ``steps``
    counts G iterations (the reference's ``itr``). ``*_every`` are in iterations (0 = never
    during the run; the run always ends with a checkpoint, a sample sheet and the model).

    Defaults: learning rates 1e-4 / 4e-4 and ``adam_eps`` 1e-6 from launch_BigGAN_bs256x8.sh;
    ``num_D_steps`` 2 and ``ema_decay`` 0.9999 are the reference's flag defaults;
    ``ema_start`` 1000 is its CIFAR script's (the ImageNet scripts use 20000 at batch 2048):
    for a run of a few thousand iterations, lower ``ema_decay`` (e.g. 0.999).
    """

    batch_size: int = 64
    G_batch_size: int = 0
    num_D_steps: int = 2
    G_lr: float = 1e-4
    D_lr: float = 4e-4
    G_B1: float = 0.0
    G_B2: float = 0.999
    D_B1: float = 0.0
    D_B2: float = 0.999
    adam_eps: float = 1e-6
    ema_decay: float = 0.9999
    ema_start: int = 1000
    z_std: float = 1.0
    seed: int = 0
    steps: int = 10000
    augment: bool = True
    log_every: int = 10
    sample_every: int = 500
    save_every: int = 1000
    keep_checkpoints: int = 2

    def __post_init__(self):
        # Each named before a step: a negative rate trains away from the data, a beta of 1
        # or an eps of 0 divides by zero, and a float batch fails deep inside the data code.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not fits_field_type(field.type, value):
                raise ValueError(f"TrainConfig.{field.name} must be {field.type}, got {value!r}")
        least = {"batch_size": 1, "G_batch_size": 0, "num_D_steps": 1, "ema_start": 0,
                 "steps": 0, "log_every": 0, "sample_every": 0, "save_every": 0,
                 "keep_checkpoints": 1}  # fmt: skip
        for name, bound in least.items():
            if getattr(self, name) < bound:
                raise ValueError(
                    f"TrainConfig.{name} must be >= {bound}, got {getattr(self, name)!r}"
                )
        for name, says in (
            ("G_lr", ">= 0"),
            ("D_lr", ">= 0"),
            ("adam_eps", "> 0"),
            ("z_std", "> 0"),
        ):
            value = getattr(self, name)
            if not is_nonnegative_number(value, positive=says == "> 0"):
                raise ValueError(
                    f"TrainConfig.{name} must be a finite number {says}, got {value!r}"
                )
        for name in ("G_B1", "G_B2", "D_B1", "D_B2"):
            if not 0 <= getattr(self, name) < 1:  # NaN fails too
                raise ValueError(
                    f"TrainConfig.{name} must be in [0, 1), got {getattr(self, name)!r}"
                )
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1], got {self.ema_decay}")

    @property
    def g_batch(self) -> int:
        return self.G_batch_size or self.batch_size

    @property
    def images_per_step(self) -> int:
        """Real images D consumes per iteration."""
        return self.batch_size * self.num_D_steps

    def replace(self, **overrides) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known: {sorted(names)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls().replace(**d)


# --------------------------------------------------------------------------- the recipe
def hinge_d_loss(real_logits: Array, fake_logits: Array) -> tuple[Array, Array]:
    """BigGAN's loss_hinge_dis: (mean(relu(1 - D(x))), mean(relu(1 + D(G(z)))))."""
    return jnp.mean(jax.nn.relu(1.0 - real_logits)), jnp.mean(jax.nn.relu(1.0 + fake_logits))


def hinge_g_loss(fake_logits: Array) -> Array:
    """BigGAN's loss_hinge_gen: -mean(D(G(z)))."""
    return -jnp.mean(fake_logits)


def ema_update(ema: Any, source: Any, itr, decay: float, start: int) -> Any:
    """BigGAN's ``ema.update(itr)``: ``ema * d + source * (1 - d)`` over every leaf, with
    ``d = decay``, or ``d = 0`` (a copy of source) while ``itr < start``."""
    early = jnp.asarray(itr) < start
    keep = jnp.where(early, 0.0, decay)
    take = jnp.where(early, 1.0, 1.0 - decay)  # 1 - decay in Python precision, as torch
    return jax.tree.map(
        lambda e, s: e * keep.astype(e.dtype) + s * take.astype(e.dtype), ema, source
    )


def optimizers(tc: TrainConfig) -> tuple[optax.GradientTransformation, ...]:
    """(G's Adam, D's Adam), as ``optim.Adam(lr, betas, eps=adam_eps, weight_decay=0)``."""
    tx_g = optax.adam(tc.G_lr, b1=tc.G_B1, b2=tc.G_B2, eps=tc.adam_eps)
    tx_d = optax.adam(tc.D_lr, b1=tc.D_B1, b2=tc.D_B2, eps=tc.adam_eps)
    return tx_g, tx_d


def init_state(config: BigGANConfig, tc: TrainConfig) -> State:
    """Step 0: orthogonally initialised G and D (seeded by ``tc.seed``), G_ema = G."""
    k_init, k_train = jax.random.split(jax.random.PRNGKey(tc.seed))
    model = random_biggan(config, k_init, dtype=jnp.float32)
    g = {PARAMS: model.generator[PARAMS], BUFFERS: model.generator[BUFFERS]}
    d = {PARAMS: model.discriminator[PARAMS], BUFFERS: model.discriminator[BUFFERS]}
    tx_g, tx_d = optimizers(tc)
    return {
        "step": jnp.zeros((), jnp.int32),
        "key": k_train,
        "G": g,
        "D": d,
        "G_ema": jax.tree.map(jnp.copy, g),
        "opt_G": tx_g.init(g[PARAMS]),
        "opt_D": tx_d.init(d[PARAMS]),
    }


def _require_training_mode():
    if "train" not in inspect.signature(Generator.__call__).parameters:
        raise RuntimeError(
            "dgp_jax.nets has no training mode (Generator/Discriminator(..., train=True)): "
            "the trainer needs the nets patch that adds it"
        )


def default_mesh() -> Mesh:
    """A ('data',) mesh over this process's devices."""
    return Mesh(np.array(jax.local_devices()), ("data",))


# The TrainConfig fields the compiled step depends on.
_STEP_FIELDS = ("batch_size", "G_batch_size", "num_D_steps", "G_lr", "D_lr", "G_B1", "G_B2",
                "D_B1", "D_B2", "adam_eps", "ema_decay", "ema_start", "z_std")  # fmt: skip
_STEP_CACHE: dict[tuple, Callable] = {}


def make_train_step(config: BigGANConfig, tc: TrainConfig, mesh: Mesh) -> Callable:
    """``step(state, images, labels) -> (state, metrics)``, jit-compiled over ``mesh``.

    images: (num_D_steps, batch_size, R, R, 3) float32 in [-1, 1]; labels: (num_D_steps,
    batch_size) int. metrics: G_loss, and D_loss_real / D_loss_fake of the last D step.
    Runs with the same architecture, step settings and mesh share one compiled program.
    """
    _require_training_mode()
    cache_key = (config, tuple(getattr(tc, f) for f in _STEP_FIELDS), mesh)
    if cache_key not in _STEP_CACHE:
        _STEP_CACHE[cache_key] = _build_train_step(config, tc, mesh)
    return _STEP_CACHE[cache_key]


def _build_train_step(config: BigGANConfig, tc: TrainConfig, mesh: Mesh) -> Callable:
    gen, disc = Generator(config), Discriminator(config)
    tx_g, tx_d = optimizers(tc)
    b = tc.batch_size
    replicated = NamedSharding(mesh, PartitionSpec())
    batch = NamedSharding(mesh, PartitionSpec("data"))
    stacked = NamedSharding(mesh, PartitionSpec(None, "data"))

    def sample(key, n):
        """z ~ N(0, z_std^2) and uniform fake classes for n images, split over devices."""
        kz, ky = jax.random.split(key)
        z = tc.z_std * jax.random.normal(kz, (n, config.effective_dim_z), jnp.float32)
        y = jax.random.randint(ky, (n,), 0, config.n_classes, jnp.int32)
        return lax.with_sharding_constraint((z, y), batch)

    def g_forward(params, buffers, z, y):
        x, new = gen.apply({PARAMS: params, BUFFERS: buffers}, z, y, train=True,
                           mutable=[BUFFERS])  # fmt: skip
        return x, new[BUFFERS]

    def d_forward(params, buffers, x, y):
        (logits, _), new = disc.apply({PARAMS: params, BUFFERS: buffers}, x, y, train=True,
                                      mutable=[BUFFERS])  # fmt: skip
        return logits[:, 0], new[BUFFERS]

    def d_step(g_params, g_buffers, d_vars, opt_d, real, y_real, key):
        z, y_fake = sample(key, b)
        fake, g_buffers = g_forward(g_params, g_buffers, z, y_fake)
        fake = lax.stop_gradient(fake)
        x_in = jnp.concatenate([fake, real.astype(fake.dtype)])
        y_in = jnp.concatenate([y_fake, y_real.astype(jnp.int32)])

        def loss_fn(d_params):
            logits, d_buffers = d_forward(d_params, d_vars[BUFFERS], x_in, y_in)
            loss_real, loss_fake = hinge_d_loss(logits[b:], logits[:b])
            return loss_real + loss_fake, (loss_real, loss_fake, d_buffers)

        grads, (loss_real, loss_fake, d_buffers) = jax.grad(loss_fn, has_aux=True)(d_vars[PARAMS])
        updates, opt_d = tx_d.update(grads, opt_d, d_vars[PARAMS])
        d_vars = {PARAMS: optax.apply_updates(d_vars[PARAMS], updates), BUFFERS: d_buffers}
        return g_buffers, d_vars, opt_d, loss_real, loss_fake

    def step(state, images, labels):
        key, k_d, k_g = jax.random.split(state["key"], 3)
        g_params, g_buffers = state["G"][PARAMS], state["G"][BUFFERS]
        d_vars, opt_d = state["D"], state["opt_D"]
        # Unrolled: inside a lax.scan body XLA:CPU ran this iteration ~20x slower.
        for i, k in enumerate(jax.random.split(k_d, tc.num_D_steps)):
            g_buffers, d_vars, opt_d, loss_real, loss_fake = d_step(
                g_params, g_buffers, d_vars, opt_d, images[i], labels[i], k
            )

        z, y = sample(k_g, tc.g_batch)

        def g_loss_fn(params):
            fake, new_g_buffers = g_forward(params, g_buffers, z, y)
            logits, new_d_buffers = d_forward(d_vars[PARAMS], d_vars[BUFFERS], fake, y)
            return hinge_g_loss(logits), (new_g_buffers, new_d_buffers)

        (g_loss, (g_buffers, d_buffers)), grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
            g_params
        )
        updates, opt_g = tx_g.update(grads, state["opt_G"], g_params)
        g_vars = {PARAMS: optax.apply_updates(g_params, updates), BUFFERS: g_buffers}
        itr = state["step"] + 1
        new_state = {
            "step": itr,
            "key": key,
            "G": g_vars,
            "D": {PARAMS: d_vars[PARAMS], BUFFERS: d_buffers},
            "G_ema": ema_update(state["G_ema"], g_vars, itr, tc.ema_decay, tc.ema_start),
            "opt_G": opt_g,
            "opt_D": opt_d,
        }
        metrics = {"G_loss": g_loss, "D_loss_real": loss_real, "D_loss_fake": loss_fake}
        return new_state, metrics

    # The state is replicated and the batch axis split over the mesh; XLA's partitioner
    # inserts the reductions (gradients, losses, batch statistics), so BN statistics are
    # over the whole batch and the numbers do not depend on the device count.
    donate = (0,) if mesh.devices.flat[0].platform != "cpu" else ()
    return jax.jit(
        step,
        in_shardings=(replicated, stacked, stacked),
        out_shardings=(replicated, replicated),
        donate_argnums=donate,
    )


# --------------------------------------------------------------------------- checkpoints
def checkpoint_dirs(root: str | os.PathLike) -> list[Path]:
    """Complete training checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def save_train_checkpoint(
    root: str | os.PathLike, state: State, meta: dict[str, Any], keep: int = 2
) -> Path:
    """Write ``root/step_<step>`` (orbax state + meta.json) into a temporary folder and
    rename it into place, so an interrupted save leaves no half checkpoint; then keep
    only the newest ``keep``."""
    import orbax.checkpoint as ocp

    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    host = jax.device_get(state)
    step = int(host["step"])
    final = root / f"step_{step:08d}"
    with checkpoint_lib.atomic_directory(final) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "state", host)
            ckptr.wait_until_finished()
        (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=1))
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def restore_train_checkpoint(path: str | os.PathLike, template: State) -> State:
    """A training state saved by ``save_train_checkpoint``, into ``template``'s structure
    (numpy arrays)."""
    import orbax.checkpoint as ocp

    target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), template)
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(Path(path).absolute() / "state", target)


def state_template(config: BigGANConfig, tc: TrainConfig) -> State:
    """Shapes and dtypes of the training state, without computing it."""
    return jax.eval_shape(lambda: init_state(config, tc))


# --------------------------------------------------------------------------- samples
def fixed_samples(config: BigGANConfig, seed: int, rows: int = 8, cols: int = 8):
    """Fixed (z, y) for the sample sheets: row r shows class ``r * n_classes // rows``."""
    rows = min(rows, config.n_classes)
    z = jax.random.normal(
        jax.random.fold_in(jax.random.PRNGKey(seed), 1), (rows * cols, config.effective_dim_z),
        jnp.float32,
    )  # fmt: skip
    y = np.repeat(np.arange(rows) * config.n_classes // rows, cols).astype(np.int32)
    return z, jnp.asarray(y), cols


@functools.cache
def _sampler(config: BigGANConfig) -> Callable:
    return jax.jit(lambda g, z, y: Generator(config).apply(g, z, y))


# --------------------------------------------------------------------------- the loop
class Trainer:
    """A training run in ``out_dir``: state, compiled step, logs, checkpoints, samples."""

    def __init__(
        self,
        config: BigGANConfig,
        train_config: TrainConfig,
        out_dir: str | os.PathLike,
        *,
        mesh: Mesh | None = None,
        state: State | None = None,
        meta: dict[str, Any] | None = None,
    ):
        self.config, self.tc = config, train_config
        self.out = Path(out_dir)
        self.mesh = mesh or default_mesh()
        n_dev = self.mesh.devices.size
        for name, size in (("batch_size", self.tc.batch_size), ("G batch", self.tc.g_batch)):
            if size % n_dev:
                raise ValueError(
                    f"{name} {size} is not a multiple of the {n_dev} devices it is sharded over"
                )
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        self._data = NamedSharding(self.mesh, PartitionSpec(None, "data"))
        self._step_fn = make_train_step(config, self.tc, self.mesh)
        if state is None:
            state = init_state(config, self.tc)
        self.state = jax.device_put(state, self._replicated)
        self.step = int(jax.device_get(self.state["step"]))
        self.meta = dict(meta or {})
        self._sampler = _sampler(config)

    # -- construction ------------------------------------------------------------------
    @classmethod
    def resume(
        cls,
        out_dir: str | os.PathLike,
        *,
        mesh: Mesh | None = None,
        checkpoint: str | os.PathLike | None = None,
        **overrides,
    ) -> Trainer:
        """The run in ``out_dir`` from its newest checkpoint (or ``checkpoint``).

        ``overrides`` change TrainConfig fields (e.g. ``steps`` to train further,
        learning rates); those that fix the data stream and program cannot change.
        """
        out = Path(out_dir)
        path = Path(checkpoint) if checkpoint is not None else latest_checkpoint(out / CHECKPOINTS)
        if path is None:
            raise FileNotFoundError(f"no training checkpoint under {out / CHECKPOINTS}")
        meta = json.loads((path / "meta.json").read_text())
        config = BigGANConfig.from_dict(meta["model_config"])
        saved = TrainConfig.from_dict(meta["train_config"])
        fixed = {k: (getattr(saved, k), v) for k, v in overrides.items()
                 if k in _FIXED_ON_RESUME and getattr(saved, k) != v}  # fmt: skip
        if fixed:
            raise ValueError(f"a resumed run cannot change {fixed} (saved, asked)")
        tc = saved.replace(**overrides)
        state = restore_train_checkpoint(path, state_template(config, tc))
        extra = {k: v for k, v in meta.items() if k not in ("model_config", "train_config")}
        return cls(config, tc, out, mesh=mesh, state=state, meta=extra)

    # -- one iteration -----------------------------------------------------------------
    def train_step(self, images: np.ndarray, labels: np.ndarray) -> dict[str, Array]:
        """One iteration on ``batch_size * num_D_steps`` real images and their classes."""
        nd, b, r = self.tc.num_D_steps, self.tc.batch_size, self.config.resolution
        images = np.asarray(images, np.float32).reshape(nd, b, r, r, 3)
        labels = np.asarray(labels, np.int32).reshape(nd, b)
        if labels.size and (labels.min() < 0 or labels.max() >= self.config.n_classes):
            raise ValueError(f"labels must lie in [0, {self.config.n_classes})")
        images = jax.device_put(images, self._data)
        labels = jax.device_put(labels, self._data)
        self.state, metrics = self._step_fn(self.state, images, labels)
        self.step += 1
        return metrics

    @property
    def data_position(self) -> int:
        """Real images consumed so far: where the data stream continues."""
        return self.step * self.tc.images_per_step

    # -- outputs -----------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {
            **self.meta,
            "model_config": json.loads(self.config.to_json()),
            "train_config": self.tc.to_dict(),
            "data_position": self.data_position,
        }

    def save_checkpoint(self) -> Path:
        return save_train_checkpoint(
            self.out / CHECKPOINTS, self.state, self._meta(), self.tc.keep_checkpoints
        )

    def samples(self, rows: int = 8, cols: int = 8) -> np.ndarray:
        """G_ema (evaluation mode) on the run's fixed z and classes: (N, R, R, 3)."""
        z, y, _ = fixed_samples(self.config, self.tc.seed, rows, cols)
        g = jax.device_get(self.state["G_ema"])
        return np.asarray(self._sampler(g, z, y))

    def save_samples(self, path: str | os.PathLike | None = None) -> Path:
        path = Path(path) if path is not None else self.out / SAMPLES / f"step_{self.step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sample_grid(self.samples(), cols=8)).save(path)
        return path

    def export(self, path: str | os.PathLike | None = None) -> Path:
        """G_ema + D in dgp_jax's checkpoint format (``load_biggan``, ``export_pth``)."""
        host = jax.device_get(self.state)
        meta = {k: v for k, v in self._meta().items() if k != "model_config"}
        return checkpoint_lib.save(
            path if path is not None else self.out / MODEL, self.config, host["G_ema"],
            host["D"], metadata={**meta, "trained_steps": self.step}, overwrite=True,
        )  # fmt: skip

    # -- the loop ----------------------------------------------------------------------
    def fit(
        self,
        dataset,
        *,
        steps: int | None = None,
        callback: Callable[[int, dict[str, float]], None] | None = None,
        log: Callable[[str], None] | None = print,
        workers: int = 2,
        cache: bool = False,
    ) -> dict[str, Any]:
        """Train until ``steps`` iterations (default ``tc.steps``) on a ``dgp_jax.data``
        Dataset, logging, sampling and checkpointing as configured; the run ends with a
        checkpoint, a sample sheet and the exported model.

        Returns {'steps', 'rows' (the logged metrics of this call), 'images_per_s' (real
        images per second after the first, compiling, iteration), 'compile_s'}.
        """
        from dgp_jax.data import BatchIterator

        steps = self.tc.steps if steps is None else steps
        if dataset.n_classes > self.config.n_classes:
            raise ValueError(
                f"the data has {dataset.n_classes} classes, the model {self.config.n_classes}"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / CONFIG).write_text(json.dumps(self._meta(), indent=1))
        writer = _LogWriter(self.out / LOG, self.step)
        batches = BatchIterator(
            dataset, self.tc.images_per_step, self.config.resolution, seed=self.tc.seed,
            start=self.data_position, augment=self.tc.augment, workers=workers, cache=cache,
        )  # fmt: skip
        rows: list[dict[str, float]] = []
        pending: list[tuple[int, dict[str, Array]]] = []
        t_start = time.perf_counter()
        t_first = None
        window = (t_start, self.step)
        first = self.step
        try:
            while self.step < steps:
                images, labels = next(batches)
                metrics = self.train_step(images, labels)
                pending.append((self.step, metrics))
                if t_first is None:
                    jax.block_until_ready(metrics)
                    t_first = time.perf_counter()
                    window = (t_first, self.step)
                    compile_s = t_first - t_start
                last = self.step == steps
                if last or (self.tc.log_every and self.step % self.tc.log_every == 0):
                    fetched = jax.device_get([m for _, m in pending])
                    now = time.perf_counter()
                    done = self.step - window[1]
                    speed = done * self.tc.images_per_step / (now - window[0]) if done else 0.0
                    for (s, _), m in zip(pending, fetched, strict=True):
                        row = {"step": s, **{k: float(v) for k, v in m.items()},
                               "seconds": now - t_start, "images_per_s": speed}  # fmt: skip
                        rows.append(row)
                        writer.write(row)
                        if callback is not None:
                            callback(s, row)
                    pending = []
                    window = (now, self.step)
                    if log is not None:
                        r = rows[-1]
                        log(f"step {self.step}/{steps}  G_loss {r['G_loss']:.4f}  "
                            f"D_loss_real {r['D_loss_real']:.4f}  "
                            f"D_loss_fake {r['D_loss_fake']:.4f}  {speed:.1f} img/s")  # fmt: skip
                if self.tc.sample_every and self.step % self.tc.sample_every == 0 and not last:
                    self.save_samples()
                if self.tc.save_every and self.step % self.tc.save_every == 0 and not last:
                    self.save_checkpoint()
                    self.export()
        except KeyboardInterrupt:
            if log is not None:
                log(f"interrupted at step {self.step}: saving a checkpoint")
            if not any(getattr(a, "is_deleted", lambda: False)()
                       for a in jax.tree.leaves(self.state)):  # fmt: skip
                self.save_checkpoint()
            raise
        finally:
            batches.close()
            writer.close()
        t_end = time.perf_counter()
        n_timed = self.step - first - 1
        speed = (
            n_timed * self.tc.images_per_step / (t_end - t_first) if n_timed > 0 else float("nan")
        )
        if self.step > first or latest_checkpoint(self.out / CHECKPOINTS) is None:
            ckpt = self.save_checkpoint()
            sheet = self.save_samples()
            model = self.export()
            if log is not None:
                log(f"checkpoint {ckpt}\nsamples {sheet}\nmodel {model}")
        return {"steps": self.step, "rows": rows, "images_per_s": speed,
                "compile_s": compile_s if t_first is not None else 0.0}  # fmt: skip


class _LogWriter:
    """log.csv, appended; rows past ``step`` (from a run that went on after its last
    checkpoint) are dropped first so a resumed run's log has each step once."""

    def __init__(self, path: Path, step: int):
        kept = []
        if path.is_file():
            with open(path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        self._file = open(path, "w", newline="")
        self._writer = csv.DictWriter(self._file, LOG_FIELDS)
        self._writer.writeheader()
        self._writer.writerows(kept)
        self._file.flush()

    def write(self, row: dict[str, float]):
        self._writer.writerow({k: row[k] for k in LOG_FIELDS})
        self._file.flush()

    def close(self):
        self._file.close()


def train(
    config: BigGANConfig,
    train_config: TrainConfig,
    dataset,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    mesh: Mesh | None = None,
    log: Callable[[str], None] | None = print,
    meta: dict[str, Any] | None = None,
    **fit_kwargs,
) -> tuple[Trainer, dict[str, Any]]:
    """Start (or, with ``resume``, continue) the run in ``out_dir`` and train it.

    ``meta`` is recorded in the run's configuration and checkpoints (e.g. the data spec).
    """
    out = Path(out_dir)
    if resume:
        trainer = Trainer.resume(out, mesh=mesh, steps=train_config.steps)
    else:
        if latest_checkpoint(out / CHECKPOINTS) is not None:
            raise FileExistsError(f"{out} already holds a run: resume it or choose another folder")
        info = {
            "dataset": getattr(dataset, "description", ""),
            "class_names": list(dataset.class_names),
            **(meta or {}),
        }
        trainer = Trainer(config, train_config, out, mesh=mesh, meta=info)
    return trainer, trainer.fit(dataset, log=log, **fit_kwargs)
