"""Deep Image Prior (Ulyanov et al.), as its official notebooks run it, for ``dgp-jax compare``.

Per image a fresh skip network (:mod:`dgp_jax.nets.dip_skip`) maps a fixed noise input to the
image; its weights are fitted with Adam (lr 0.01) so that φ(output) matches the observation,
and the output after the notebook's number of steps is the result. As in the notebooks:

* the input is uniform noise times 1/10 (the vase setting: the meshgrid), and at every step
  it is perturbed by fresh normal noise times ``reg_noise_std``;
* batch norm stays in training mode throughout, the final forward pass included;
* super-resolution fits ``MSE(Downsampler(lanczos2, phase 1/2)(out), LR)`` in low resolution;
  inpainting fits ``MSE(out * mask, image * mask)``; other tasks fit ``MSE(φ(out), observed)``
  (the denoising notebook's loss with φ put in, and its network and schedule);
* the result is the network on the clean input, except for super-resolution and denoising,
  whose notebooks rebind the global ``net_input`` inside the closure, so their last cell
  renders the last step's noisy input; we do the same (``final_input``).

Not reproduced: the denoising notebook's exponential average (only plotted) and its
backtracking (a fall-back when the PSNR to the noisy image drops by 5 dB: a guard for
sigma 25 noise, which none of DGP's tasks has), and the library setting's ``param_noise``,
which is a no-op in the notebook (``n = n + ...`` rebinds a local name).

Losses are MSEs in DIP's [0, 1] units: with x in [-1, 1], (φ(2o - 1) - y) / 2 is DIP's
residual for every linear φ that commutes with the affine map, which the masks and the
downsampler do. Each image gets its own network, noise and Adam state; the step is
``vmap``-ped over images and sharded over a ('data',) mesh, as the DGP solver's.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dgp_jax import degradations as deg_lib
from dgp_jax.baselines.common import check_settings, image_keys, low_resolution, sr_factor
from dgp_jax.batching import pad_to
from dgp_jax.checks import integer_at_least, is_nonnegative_number
from dgp_jax.nets import dip_skip
from dgp_jax.optim import torch_adam

LR = 0.01


@dataclasses.dataclass(frozen=True)
class Schedule:
    """One notebook's settings: its network, input, steps and input noise."""

    network: str
    iterations: int
    reg_noise_std: float
    input: str = "noise"
    final_input: str = "clean"  # 'clean' | 'noisy' (the last step's input)


SCHEDULES: dict[str, Schedule] = {
    "super-resolution": Schedule("super-resolution", 2000, 0.03, final_input="noisy"),
    "super-resolution-x8": Schedule("super-resolution", 4000, 0.05, final_input="noisy"),
    "inpainting": Schedule("inpainting", 6001, 0.03),
    "inpainting-vase": Schedule("inpainting-vase", 5001, 0.03, input="meshgrid"),
    "inpainting-library": Schedule("inpainting-library", 3001, 0.0),
    "denoising": Schedule("denoising", 3000, 1.0 / 30, final_input="noisy"),
}

SETTINGS = ("preset", "iterations", "reg_noise_std", "lr", "factor", "lowering", "progress")
"""Settings: the notebook (a key of SCHEDULES, default by task), its step count, input noise
and learning rate, the SR factor, how the per-image convolutions are lowered (``auto``,
``xla`` or ``im2col``: :func:`conv_lowering`), and a progress callable (step, total)."""

LOWERINGS = ("auto",) + dip_skip.CONV_LOWERINGS


def conv_lowering(name: str, images_per_device: int, backend: str | None = None) -> str:
    """``auto``: im2col matrix products, which batch over the images where XLA would make
    grouped convolutions (10x slower per image on a CPU) and which XLA:CPU also runs faster
    than its convolutions for one image (BENCHMARKS.md, "Deep Image Prior"); XLA's
    convolutions for one image per device on other backends (not measured there)."""
    if name not in LOWERINGS:
        raise ValueError(f"dip: lowering must be one of {list(LOWERINGS)}, got {name!r}")
    if name != "auto":
        return name
    backend = backend or jax.default_backend()
    return "xla" if images_per_device == 1 and backend != "cpu" else "im2col"


def default_preset(degradation, factor: int | None) -> str:
    """The notebook for a task: super-resolution (x8: its own schedule), inpainting (the
    text/kate setting, 'the same params and net as in super-resolution and denoising'),
    denoising for everything else."""
    if factor is not None:
        return "super-resolution-x8" if factor >= 8 else "super-resolution"
    if degradation is not None and degradation.name == "inpainting":
        return "inpainting"
    return "denoising"


# --------------------------------------------------------------------------- one image
def measure_fn(degradation, factor: int | None) -> Callable[[jax.Array], jax.Array]:
    """What the loss compares with the target, from the network's [0, 1] output (N, H, W, 3)."""
    if factor is not None:
        return lambda out: deg_lib.downsample_generator(out * 2 - 1, factor)
    if degradation is None:
        return lambda out: out * 2 - 1
    return lambda out: degradation.generator_fn(out * 2 - 1)


def loss_fn(params, spec, net_input, target, measure, lowering: str = "xla") -> jax.Array:
    """DIP's MSE in [0, 1] units: mean(((measure(net(input)) - target) / 2)^2)."""
    out = dip_skip.apply(params, spec, net_input, lowering)
    return jnp.mean(jnp.square((measure(out) - target) / 2))


def _adam():
    return torch_adam(lambda hp: hp, lambda hp: True, b1=0.9, b2=0.999, eps=1e-8)


def init_state(key, spec: dip_skip.SkipSpec, schedule: Schedule, height: int, width: int, dtype):
    """One image's network, input, Adam state and noise key."""
    k_net, k_input, k_noise = jax.random.split(key, 3)
    params = dip_skip.init(k_net, spec, dtype)
    net_input = dip_skip.network_input(k_input, spec, height, width, schedule.input, dtype)
    return {"params": params, "opt": _adam().init(params), "input": net_input, "noise_key": k_noise}


def noisy_input(state, t, reg_noise_std):
    noise = jax.random.normal(jax.random.fold_in(state["noise_key"], t), state["input"].shape,
                              state["input"].dtype)  # fmt: skip
    return state["input"] + noise * reg_noise_std


def adam_step(params, opt_state, grads, lr):
    updates, opt_state = _adam().update(grads, opt_state, params, hparams=jnp.asarray(lr))
    return jax.tree.map(jnp.add, params, updates), opt_state


def step(state, target, t, hp, *, spec, measure, lowering="xla"):
    """One notebook closure plus ``optimizer.step()``: returns (state, loss)."""
    inp = noisy_input(state, t, hp["reg_noise_std"])
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], spec, inp, target, measure,
                                              lowering)  # fmt: skip
    params, opt = adam_step(state["params"], state["opt"], grads, hp["lr"])
    return {**state, "params": params, "opt": opt}, loss


def render(state, t_last, hp, *, spec, noisy: bool, lowering="xla"):
    inp = noisy_input(state, t_last, hp["reg_noise_std"]) if noisy else state["input"]
    return dip_skip.apply(state["params"], spec, inp, lowering)


# --------------------------------------------------------------------------- batched
def _mesh(batch: int) -> Mesh:
    from dgp_jax.solve import default_mesh

    return default_mesh(batch)


@functools.lru_cache(maxsize=16)
def _programs(spec, schedule, degradation, factor, mesh, shape, dtype_name, lowering):
    """The jitted init, step and render over a sharded batch (cached: one compile per
    network, φ, mesh and image size)."""
    data, rep = PartitionSpec("data"), PartitionSpec()
    h, w = shape
    dtype = jnp.dtype(dtype_name)

    def shard(fn, in_specs, out_specs):
        return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                             check_vma=False)  # fmt: skip

    init = shard(jax.vmap(lambda k: init_state(k, spec, schedule, h, w, dtype)), (data,), data)
    one = functools.partial(step, spec=spec, measure=measure_fn(degradation, factor),
                            lowering=lowering)  # fmt: skip
    many = shard(jax.vmap(one, in_axes=(0, 0, None, None)), (data, data, rep, rep), (data, data))
    final = functools.partial(render, spec=spec, noisy=schedule.final_input == "noisy",
                              lowering=lowering)  # fmt: skip
    renderer = shard(jax.vmap(final, in_axes=(0, None, None)), (data, rep, rep), data)
    return jax.jit(init), jax.jit(many, donate_argnums=(0,)), jax.jit(renderer)


def _settings(config: Mapping[str, Any], degradation, factor: int | None):
    """(schedule, iterations, hyperparameters) from the settings, each checked."""
    name = config.get("preset") or default_preset(degradation, factor)
    if name not in SCHEDULES:
        raise ValueError(f"dip: unknown preset {name!r}; presets: {', '.join(SCHEDULES)}")
    schedule = SCHEDULES[name]
    iterations = integer_at_least(config.get("iterations", schedule.iterations),
                                  "dip: iterations", 1)  # fmt: skip
    hp = {"lr": config.get("lr", LR),
          "reg_noise_std": config.get("reg_noise_std", schedule.reg_noise_std)}  # fmt: skip
    for key, value in hp.items():
        if not is_nonnegative_number(value, positive=key == "lr"):
            least = "> 0" if key == "lr" else ">= 0"
            raise ValueError(f"dip: {key} must be a finite number {least}, got {value!r}")
        hp[key] = float(value)
    conv_lowering(config.get("lowering", "auto"), 1)  # names a bad lowering
    return schedule, iterations, hp


def check(config: Mapping[str, Any], *, degradation=None, resolution: int | None = None) -> None:
    """Before any work (``dgp-jax compare``): the settings, for ``degradation``'s task."""
    check_settings("dip", config, SETTINGS)
    if degradation is not None:
        _settings(config, degradation, sr_factor(degradation, config))


def restore(observed, degradation, *, seed, config):
    """The baselines' signature (see :mod:`dgp_jax.baselines`); ``seed`` an int or one per
    image."""
    observed = np.asarray(observed)
    return restore_with_keys(observed, degradation, image_keys(seed, len(observed)), config)


def restore_with_keys(observed, degradation, keys, config: Mapping[str, Any]):
    """DIP on a batch, image i from ``keys[i]``; returns (B, H, W, 3) in [-1, 1]."""
    check_settings("dip", config, SETTINGS)
    observed = np.asarray(observed)
    if observed.ndim != 4 or observed.shape[-1] != 3:
        raise ValueError(f"dip: observed must be (B, H, W, 3), got {observed.shape}")
    factor = sr_factor(degradation, config)
    schedule, iterations, hp = _settings(config, degradation, factor)
    spec = dip_skip.PRESETS[schedule.network]
    b, h, w, _ = observed.shape
    dip_skip.check_size(spec, h, w)
    target = low_resolution(observed, factor) if factor is not None else observed
    dtype = observed.dtype if observed.dtype in (np.float32, np.float64) else np.float32

    mesh = _mesh(b)
    n_dev = mesh.devices.size
    padded = b + (-b) % n_dev  # a multiple of the devices
    keys, target = pad_to(keys, padded), pad_to(target, padded)
    shard = NamedSharding(mesh, PartitionSpec("data"))
    lowering = conv_lowering(config.get("lowering", "auto"), len(keys) // n_dev)
    init, stepper, renderer = _programs(spec, schedule, degradation, factor, mesh, (h, w),
                                        np.dtype(dtype).name, lowering)  # fmt: skip
    hp_arr = {k: jnp.asarray(v, dtype) for k, v in hp.items()}
    state = init(jax.device_put(keys, shard))
    # Targets carry the network's leading batch axis of one.
    target_dev = jax.device_put(target.astype(dtype)[:, None], shard)
    progress = config.get("progress")
    for t in range(iterations):
        state, _ = stepper(state, target_dev, jnp.asarray(t, jnp.int32), hp_arr)
        if progress is not None:
            progress(t + 1, iterations)
    out = renderer(state, jnp.asarray(iterations - 1, jnp.int32), hp_arr)
    out = np.asarray(out)[:b, 0]
    return (out * 2 - 1).astype(observed.dtype)
