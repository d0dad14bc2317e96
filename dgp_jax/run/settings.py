"""A run's settings: tasks, presets and ``--set`` overrides -> the SolverConfig;
RunError, the setup error every check raises (the CLI exits with 2)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from dgp_jax.checks import fits_field_type
from dgp_jax.config import STAGE_FIELDS, SolverConfig, preset_for_size

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


# jitter/morph/transfer default to the reference's manipulation scripts (run_jitter.sh,
# run_morphing.sh, run_category_transfer.sh: use_in off throughout, so that the frames,
# rendered in batch-norm mode, start from the solved image). 128 px has no such script:
# it takes the 256 px schedules.
_MANIPULATION_PRESETS = {"jitter": "jitter", "morph": "morphing", "transfer": "category_transfer"}


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
            values = tuple(_typed(name, v) for v in value.split(","))
            out[name] = values * base.num_stages if len(values) == 1 else values
        else:
            out[name] = _typed(name, value)
    return out


def _field_kind(annotation: str) -> tuple[str, bool]:
    """(kind for ``fits_field_type``, whether None is allowed) of a SolverConfig annotation
    such as ``tuple[float, ...]`` or ``int | None``: the field's type, not the type of its
    value, which presets.json may spell as an int in a float field (``w_mse: [0, 0]``)."""
    inner = annotation.removeprefix("tuple[").removesuffix(", ...]")
    return inner.removesuffix(" | None"), inner.endswith(" | None")


_FIELD_KINDS = {f.name: _field_kind(f.type) for f in dataclasses.fields(SolverConfig)}


def _typed(name: str, text: str) -> Any:
    """``text`` parsed for field ``name`` (by its annotated type), or a RunError naming the
    field."""
    value = parse_value(text)
    kind, optional = _FIELD_KINDS[name]
    if value is None and optional:
        return None
    if kind == "bool" and value in (0, 1):
        return bool(value)
    if kind == "str" or fits_field_type(kind, value):
        return value
    expected = {"bool": "true or false", "int": "an integer", "float": "a number"}[kind]
    raise RunError(f"--set {name}={text}: {name} must be {expected}, got {text!r}")


def canonical_task(task: str) -> str:
    task = {"sr": "SR", "defence": "defense"}.get(task, task)
    if task not in TASKS:
        raise RunError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    return task


def default_preset(task: str, resolution: int, kind: str = "restore") -> str:
    """The task's published preset for this model size (128 px ones otherwise); for the
    manipulation kinds, the reference's manipulation script (64 px: scaled down)."""
    if kind in _MANIPULATION_PRESETS:
        prefix = "wallpapers_64" if resolution == 64 else "examples_256"
        return f"{prefix}/{_MANIPULATION_PRESETS[kind]}"
    return _DEFAULT_PRESETS.get(resolution, {}).get(task) or _DEFAULT_PRESETS[128].get(
        task, "imagenet1k_128/reconstruct"
    )


def build_config(
    task: str,
    resolution: int,
    preset: str | None = None,
    sets: Sequence[str] = (),
    factor: int | None = None,
    kind: str = "restore",
) -> SolverConfig:
    """The SolverConfig a run uses: the preset, ``dgp_mode = task``, then the overrides.

    A preset written for another model size is a RunError (``--set resolution=none``
    accepts it anyway), because the schedules are tuned per size. A manipulation ``kind``
    (jitter, morph, transfer) needs a schedule whose last stage is in batch-norm mode.
    """
    name = preset or default_preset(task, resolution, kind)
    if factor is not None and factor < 1:
        raise RunError(f"--factor must be a positive integer, got {factor}")
    try:
        base = SolverConfig.preset(name)
        if preset is None and kind in _MANIPULATION_PRESETS and resolution not in (64, 256):
            base = base.replace(resolution=None)  # the 256 px schedule at this size
        overrides = parse_sets(sets, base)
        if overrides.get("dgp_mode", task) != task:
            # the files would be labelled with the task but solved as another
            raise RunError(
                f"--set dgp_mode={overrides['dgp_mode']} contradicts --task {task}: "
                "choose the task with --task"
            )
        overrides["dgp_mode"] = task
        if factor is not None:
            if task not in ("SR", "hybrid"):
                raise RunError(f"--factor applies to the tasks SR and hybrid, not {task}")
            overrides["factor"] = factor
        config = base.replace(**overrides)
    except ValueError as err:
        raise RunError(str(err)) from None
    if config.resolution is not None and config.resolution != resolution:
        own = preset_for_size(task, resolution)
        own = f" {own}" if own else ""
        raise RunError(
            f"the checkpoint is a {resolution} px model but preset {name!r} is for "
            f"{config.resolution} px models: pick a preset for {resolution} px (--preset"
            f"{own}) or "
            "pass --set resolution=none to run this schedule anyway"
        )
    if kind in _MANIPULATION_PRESETS and config.use_in[-1]:
        fallback = default_preset(task, resolution, kind)
        raise RunError(
            f"{kind} renders its frames in batch-norm mode, as the reference does, but the "
            f"schedule ({name}) ends in instance-norm mode (use_in), whose solved image those "
            f"frames would not reproduce: leave out --preset (default {fallback}) "
            "or end the schedule with use_in false (--set use_in=...)"
        )
    if config.dgp_mode in ("SR", "hybrid") and resolution % config.sr_factor:
        raise RunError(
            f"super-resolution factor {config.sr_factor} does not divide the model "
            f"resolution {resolution}"
        )
    return config
