"""A run's settings: tasks, presets and ``--set`` overrides -> the SolverConfig;
RunError, the setup error every check raises (the CLI exits with 2)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from dgp_jax.config import STAGE_FIELDS, SolverConfig

PRECISIONS = ("float32", "tf32", "bfloat16")  # dgp_jax.solve.PRECISIONS, without JAX
METRIC_NAMES = ("psnr", "ssim", "mse", "l1")
TASKS = ("colorization", "inpainting", "SR", "hybrid", "reconstruct", "defense")
KINDS = ("restore", "jitter", "morph", "transfer")
# The task's published schedule, by model resolution (the 256 px examples have no
# reconstruct script: their jitter one reconstructs).
_DEFAULT_PRESETS = {
    64: {
        "colorization": "wallpapers_64/colorization",
        "inpainting": "wallpapers_64/inpainting",
        "SR": "wallpapers_64/SR",
        "reconstruct": "wallpapers_64/reconstruct",
        "hybrid": "wallpapers_64/reconstruct",
        "defense": "wallpapers_64/reconstruct",
    },
    128: {
        "colorization": "imagenet1k_128/colorization",
        "inpainting": "imagenet1k_128/inpainting",
        "SR": "imagenet1k_128/SR_D_biased",
    },
    256: {
        "colorization": "examples_256/colorization",
        "inpainting": "examples_256/inpainting",
        "SR": "examples_256/SR",
        "reconstruct": "examples_256/jitter",
        "hybrid": "examples_256/jitter",
        "defense": "examples_256/jitter",
    },
}


class RunError(Exception):
    """A setup problem found before any image is solved (the CLI exits with 2)."""


# --------------------------------------------------------------------------- settings
def parse_value(text: str) -> Any:
    """``--set`` value: int, float, true/false, none, else the string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    return text


def parse_sets(items: Sequence[str], base: SolverConfig) -> dict[str, Any]:
    """``field=value`` overrides for ``base``; per-stage fields take comma-separated lists.

    One value for a per-stage field applies to every stage of ``base`` (so
    ``iterations=1`` keeps a 5-stage preset's stages); to change the number of stages,
    give ``iterations`` and the other per-stage fields as lists of the new length.
    """
    names = {f.name for f in dataclasses.fields(SolverConfig)}
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise RunError(f"--set expects field=value, got {item!r}")
        name, value = item.split("=", 1)
        if name not in names:
            raise RunError(f"--set: unknown field {name!r}; fields: {sorted(names)}")
        if name in STAGE_FIELDS or name == "iterations":
            values = tuple(parse_value(v) for v in value.split(","))
            out[name] = values * base.num_stages if len(values) == 1 else values
        else:
            out[name] = parse_value(value)
    return out


def canonical_task(task: str) -> str:
    task = {"sr": "SR", "defence": "defense"}.get(task, task)
    if task not in TASKS:
        raise RunError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    return task


def default_preset(task: str, resolution: int) -> str:
    """The task's published preset for this model size (128 px ones otherwise)."""
    return _DEFAULT_PRESETS.get(resolution, {}).get(task) or _DEFAULT_PRESETS[128].get(
        task, "imagenet1k_128/reconstruct"
    )


def build_config(
    task: str,
    resolution: int,
    preset: str | None = None,
    sets: Sequence[str] = (),
    factor: int | None = None,
) -> SolverConfig:
    """The SolverConfig a run uses: the preset, ``dgp_mode = task``, then the overrides.

    A preset written for another model size is a RunError (``--set resolution=none``
    accepts it anyway), because the schedules are tuned per size.
    """
    name = preset or default_preset(task, resolution)
    try:
        base = SolverConfig.preset(name)
        overrides = {"dgp_mode": task, **parse_sets(sets, base)}
        if factor is not None:
            if task not in ("SR", "hybrid"):
                raise RunError(f"--factor applies to the tasks SR and hybrid, not {task}")
            overrides["factor"] = factor
        config = base.replace(**overrides)
    except ValueError as err:
        raise RunError(str(err)) from None
    if config.resolution is not None and config.resolution != resolution:
        raise RunError(
            f"the checkpoint is a {resolution} px model but preset {name!r} is for "
            f"{config.resolution} px models: pick a preset for {resolution} px (--preset) or "
            "pass --set resolution=none to run this schedule anyway"
        )
    if config.dgp_mode in ("SR", "hybrid") and resolution % config.sr_factor:
        raise RunError(
            f"super-resolution factor {config.sr_factor} does not divide the model "
            f"resolution {resolution}"
        )
    return config
