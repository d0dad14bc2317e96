"""DGP and the two ablations of the paper's comparison, as ``dgp-jax compare`` methods:

* ``dgp``: the task's preset (z and G fine-tuned stage by stage on the discriminator-feature
  loss, plus MSE where the preset has it, and the latent prior);
* ``latent-only``: the same with the generator frozen (``update_G=False``): GAN inversion;
* ``mse-only``: G fine-tuned on MSE alone (``w_D_loss = 0`` in every stage, ``w_mse`` the
  preset's, or 1 where the preset has 0).

All three start from the same candidates for the same seed. They solve the observations
as given (``observed=True``) through the comparison's φ.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from dgp_jax.baselines.common import check_settings, image_keys, sr_factor
from dgp_jax.checks import integer_at_least
from dgp_jax.config import SolverConfig

SETTINGS = ("weights", "preset", "iterations", "select_num", "factor", "classes")
"""Settings: ``weights`` (a dgp_jax folder or G_*.pth; default the shipped 64 px model),
``preset`` (default: the task's for the model's size), ``iterations`` (every stage's steps,
for a quick look), ``select_num`` (start candidates), ``factor`` (SR), ``classes`` (one
class per image, -1 unknown)."""

ABLATIONS = ("dgp", "latent-only", "mse-only")


def ablation_config(base: SolverConfig, method: str) -> SolverConfig:
    """The preset ``base`` as DGP, latent-only or MSE-only runs it."""
    if method == "dgp":
        return base
    if method == "latent-only":
        return base.replace(update_G=False)
    if method == "mse-only":
        return base.replace(
            w_D_loss=(0.0,) * base.num_stages,
            w_mse=tuple(float(w) if w > 0 else 1.0 for w in base.w_mse),
        )
    raise ValueError(f"unknown DGP ablation {method!r}; known: {', '.join(ABLATIONS)}")


@functools.lru_cache(maxsize=2)
def _model(weights: str | None):
    from dgp_jax.runner import load_model

    return load_model(weights)


def check(config: Mapping[str, Any], *, degradation=None, resolution: int | None = None) -> None:
    """Before any work: the weights load (a missing or broken file is named), the model is
    ``resolution`` px, and the solver schedule builds from the settings (preset, iterations,
    select_num) for ``degradation``'s task."""
    weights = config.get("weights")
    if weights and not os.path.exists(weights):
        raise FileNotFoundError(f"DGP weights not found: {weights}")
    if not weights:
        from dgp_jax.default_model import DEFAULT_DISCRIMINATOR, DEFAULT_MODEL

        for path in (DEFAULT_MODEL, DEFAULT_DISCRIMINATOR):
            if not os.path.exists(path):
                raise FileNotFoundError(f"the shipped DGP model file is missing: {path}")
    if degradation is None:
        return
    model = _loaded(weights or None)  # cached: the solve reuses it
    check_size(model, resolution)
    _schedule(config, degradation, model.config.resolution)


def check_size(model, resolution: int | None) -> None:
    """Refuse a model of another size than compare's images (``resolution``; None: any)."""
    res = model.config.resolution
    if resolution is not None and resolution != res:
        raise ValueError(
            f"the model is {res} px but the images are compared at {resolution} px: "
            f"compare at --resolution {res}"
        )


def _loaded(weights: str | None):
    from dgp_jax.run.settings import RunError

    try:
        return _model(weights)
    except RunError as err:  # a broken file: named by the loader
        raise ValueError(str(err)) from None


def _count(config: Mapping[str, Any], name: str, least: int) -> int | None:
    value = config.get(name)
    return None if value is None else integer_at_least(value, name, least)


def _schedule(config: Mapping[str, Any], degradation, res: int) -> SolverConfig:
    """The task's preset for a ``res`` px model (or ``preset``), shortened by the settings."""
    from dgp_jax.run.settings import RunError, build_config

    factor = sr_factor(degradation, config)
    task = "SR" if factor is not None else degradation.name
    iterations, select_num = _count(config, "iterations", 0), _count(config, "select_num", 0)
    try:
        base = build_config(task, res, config.get("preset"), (), factor)
    except RunError as err:
        raise ValueError(str(err)) from None
    overrides = {}
    if iterations is not None:
        overrides["iterations"] = (iterations,) * base.num_stages
    if select_num is not None:
        overrides["select_num"] = select_num
    return base.replace(**overrides)


def _solve(method: str, observed, degradation, seed, config):
    import dgp_jax

    check_settings(method, config, SETTINGS)
    check(config)
    observed = np.asarray(observed)
    model = _loaded(config.get("weights") or None)
    res = model.config.resolution
    if observed.shape[1:3] != (res, res):
        raise ValueError(
            f"{method}: the model is {res} px but the observations are "
            f"{observed.shape[1]}x{observed.shape[2]}: compare at --resolution {res}"
        )
    base = _schedule(config, degradation, res)
    classes = config.get("classes")
    classes = np.full(len(observed), -1) if classes is None else np.asarray(classes)
    result = dgp_jax.restore(
        model, observed.astype(model.dtype), classes, ablation_config(base, method),
        image_keys(seed, len(observed)), degradation=degradation, observed=True,
    )  # fmt: skip
    return np.asarray(result.images).astype(observed.dtype)


def dgp(observed, degradation, *, seed, config):
    return _solve("dgp", observed, degradation, seed, config)


def latent_only(observed, degradation, *, seed, config):
    return _solve("latent-only", observed, degradation, seed, config)


def mse_only(observed, degradation, *, seed, config):
    return _solve("mse-only", observed, degradation, seed, config)
