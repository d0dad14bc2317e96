"""``dgp-vgg``: DGP with a VGG16 perceptual loss in place of the discriminator's features.

By default the reference's own ablation (``ftr_type`` "VGG": relu4_2 MSE on the raw [-1, 1]
images); ``ftr_type`` "johnson" gives Johnson et al.'s feature reconstruction loss (and,
with ``style_weight``, their style loss). See ``dgp_jax.perceptual``. Everything else is
the DGP solver with the task's published schedule.

Config keys (unknown ones are an error naming the key):

- ``model``: the BigGAN (``dgp_jax.load_biggan``; its discriminator is unused), or the path
  of its weights (a dgp_jax folder or G_*.pth, as ``dgp-jax compare --set
  dgp-vgg.model=PATH`` gives it); default: the shipped 64 px model;
- ``vgg`` (required): the path of torchvision's ``vgg16-397923af.pth``, or its parameter tree
  (``dgp_jax.nets.vgg.load_params``);
- ``task``: the DGP task; default: read from the degradation's name;
- ``preset``, ``set``: the schedule and ``field=value`` overrides, as ``dgp-jax restore
  --preset/--set`` take them (a list, or one text with ``;`` between them, as
  ``--set "dgp-vgg.set=iterations=1;select_num=2"`` gives it);
- ``factor``: the SR factor (default: the degradation's);
- ``ftr_type`` ("VGG" or "johnson"), ``style_weight``: the loss;
- ``classes``: (B,) ImageNet classes, -1 = unknown (default: all unknown);
- ``precision``: as ``dgp_jax.restore``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from dgp_jax import solve
from dgp_jax.baselines.common import image_keys
from dgp_jax.checks import is_int
from dgp_jax.degradations import MODES, Degradation
from dgp_jax.metrics.weights import WeightFile, require
from dgp_jax.nets import vgg as vgg_lib
from dgp_jax.run.settings import RunError, build_config

KEYS = ("model", "vgg", "task", "preset", "set", "factor", "ftr_type", "style_weight",
        "classes", "precision")  # fmt: skip
SETTINGS = KEYS  # what ``dgp-jax compare`` checks, and passes ``factor`` and ``classes`` to
VGG16_FILE = WeightFile(vgg_lib.WEIGHT_FILE, vgg_lib.WEIGHT_URL, "397923af")


def task_of(degradation: Degradation) -> tuple[str, int | None]:
    """(DGP task, SR factor or None) for one of ``dgp_jax.degradations``' φ by its name."""
    name = degradation.name
    if name in MODES:  # degradations.for_mode names its φ after the mode
        return name, None
    factor = re.match(r"SR(\d+)", name)
    if "+" in name:
        return "hybrid", int(factor.group(1)) if factor else None
    if factor:
        return "SR", int(factor.group(1))
    tasks = {"identity": "reconstruct", "gray": "colorization", "inpainting": "inpainting"}
    if name not in tasks:
        raise ValueError(
            f"dgp-vgg cannot tell the task of degradation {name!r}: give config['task']"
        )
    return tasks[name], None


def _vgg_params(weights: Any, dtype):
    if isinstance(weights, str | os.PathLike) or weights is None:
        path = require(weights, VGG16_FILE, "dgp-vgg")
        return vgg_lib.load_params(path, dtype=dtype)
    return weights


def _biggan(model: Any):
    """The model itself, or loaded (once) from a weights path; None: the shipped one."""
    from dgp_jax.baselines.dgp import _loaded

    if model is None or isinstance(model, str | os.PathLike):
        return _loaded(os.fspath(model) if model else None)
    return model


def _solver_config(config: Mapping[str, Any], degradation: Degradation, resolution: int):
    unknown = sorted(set(config) - set(KEYS))
    if unknown:
        raise ValueError(f"dgp-vgg: unknown config keys {unknown}; known: {list(KEYS)}")
    task, factor = task_of(degradation)
    task = config.get("task", task)
    if task == "SR" and config.get("factor", factor) is None:
        # degradations.for_mode names its φ 'SR' whatever its factor
        raise ValueError(f"dgp-vgg: φ {degradation.name!r} is super-resolution: pass the "
                         "setting factor")  # fmt: skip
    sets = config.get("set", ())
    # from the command line one text, "field=value;field=value" (values may hold commas)
    sets = [t for t in sets.split(";") if t] if isinstance(sets, str) else list(sets)
    sets += [f"ftr_type={config.get('ftr_type', 'VGG')}"]
    sets += [f"style_weight={config['style_weight']}"] if "style_weight" in config else []
    try:
        return build_config(task, resolution, preset=config.get("preset"), sets=sets,
                            factor=config.get("factor", factor))  # fmt: skip
    except RunError as err:
        raise ValueError(f"dgp-vgg: {err}") from None


def check(config: Mapping[str, Any], *, degradation=None, resolution: int | None = None) -> None:
    """Before any work (``dgp-jax compare``): the model loads and is ``resolution`` px, the
    VGG16 file is there, and the schedule builds."""
    from dgp_jax.baselines.dgp import check_size

    model = _biggan(config.get("model"))
    check_size(model, resolution)
    res = model.config.resolution
    vgg = config.get("vgg")
    if isinstance(vgg, str | os.PathLike) or vgg is None:
        require(vgg, VGG16_FILE, "dgp-vgg")
    if degradation is not None:
        _solver_config(config, degradation, res)


def restore(
    observed: np.ndarray, degradation: Degradation, *, seed: int, config: Mapping[str, Any]
) -> np.ndarray:
    """The ``dgp_jax.baselines`` method signature: restored (B, H, W, 3) in [-1, 1]."""
    model = _biggan(config.get("model"))
    solver_config = _solver_config(config, degradation, model.config.resolution)
    observed = np.asarray(observed)
    # an int seed as before; one seed per image (compare --batch): each image its own key
    key = int(seed) if is_int(seed) else image_keys(seed, len(observed))
    result = solve.restore(
        model, observed, config.get("classes"), solver_config, key=key,
        degradation=degradation, observed=True, vgg=_vgg_params(config.get("vgg"), model.dtype),
        precision=config.get("precision", "float32"),
    )  # fmt: skip
    return np.asarray(result.images)
