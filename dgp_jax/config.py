"""``SolverConfig``: DGP's settings under the reference's flag names, and the presets.

Every field keeps the name of the reference's command-line flag, so a published script
translates one to one::

    python main.py --dgp_mode SR --iterations 200 200 --G_lrs 5e-5 2e-5 ...
    SolverConfig(dgp_mode="SR", iterations=(200, 200), G_lrs=(5e-5, 2e-5), ...)

Presets are the reference's experiment scripts (``presets.json``, copied from them):
``SolverConfig.preset("imagenet1k_128/colorization", iterations=(2, 2, 2, 2, 2))``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from dgp_jax.checks import integer_at_least, is_int, is_nonnegative_number
from dgp_jax.degradations import MODES  # one list of mode names for φ and config

FTR_TYPES = ("Discriminator", "VGG", "johnson")  # dgp_jax.perceptual

# Fields given once per stage.
STAGE_FIELDS = ("ft_num", "lr_ratio", "G_lrs", "z_lrs", "w_D_loss", "w_mse", "ftr_num", "use_in")
# Short names for the published 128 px ImageNet protocol.
ALIASES = {
    "colorization": "imagenet1k_128/colorization",
    "inpainting": "imagenet1k_128/inpainting",
    "SR": "imagenet1k_128/SR_D_biased",
    "sr": "imagenet1k_128/SR_D_biased",
    "reconstruct": "imagenet1k_128/reconstruct",
}


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """DGP solver settings (reference flag names; per-stage fields are tuples).

    ``factor`` (super-resolution factor; None = the reference's 4, or 2 in hybrid) and
    ``select_batch`` (start candidates scored per forward pass on each device, shared among
    that device's images, at least one each; None = by backend,
    ``dgp_jax.solve.SELECT_BATCH``) are dgp_jax additions;
    ``resolution`` records the model size a preset was written for (None = any).
    ``ftr_type`` is the reference's flag ("Discriminator" or its VGG ablation "VGG"), plus
    "johnson" (Johnson et al.'s feature reconstruction loss, with ``style_weight`` x their
    style loss); see ``dgp_jax.perceptual``.
    """

    dgp_mode: str = "reconstruct"
    iterations: tuple[int, ...] = (200, 200, 200, 200)
    ft_num: tuple[int, ...] = (2, 3, 4, 5)
    lr_ratio: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    G_lrs: tuple[float, ...] = (1e-6, 2e-5, 1e-5, 1e-6)
    z_lrs: tuple[float, ...] = (1e-1, 1e-3, 1e-5, 1e-6)
    w_D_loss: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    w_mse: tuple[float, ...] = (0.1, 0.1, 0.1, 0.1)
    w_nll: float = 0.001
    ftr_num: tuple[int, ...] = (3, 3, 3, 3)
    use_in: tuple[bool, ...] = (False, False, False, False)
    update_G: bool = True
    update_embed: bool = False
    select_num: int = 500
    sample_std: float = 1.0
    stop_mse: float = 0.0
    stop_ftr: float = 0.0
    G_B1: float = 0.0
    G_B2: float = 0.999
    adam_eps: float = 1e-8
    warm_up: int = 0
    factor: int | None = None
    select_batch: int | None = None
    resolution: int | None = None
    ftr_type: str = "Discriminator"
    style_weight: float = 0.0

    def __post_init__(self):
        for name in ("iterations", *STAGE_FIELDS):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        n = len(self.iterations)
        if n == 0:
            raise ValueError("iterations must name at least one stage")
        for name in STAGE_FIELDS:
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} entries but iterations has {n} "
                    f"stages: {name}={getattr(self, name)}, iterations={self.iterations}"
                )
        if self.dgp_mode not in MODES:
            raise ValueError(f"dgp_mode {self.dgp_mode!r} is not one of {MODES}")
        for name in ("iterations", "ft_num", "ftr_num"):
            values = getattr(self, name)
            if not all(is_int(v) for v in values):
                raise ValueError(f"{name} must be integers, got {values}")
        resolution = self.resolution
        if resolution is not None and (not is_int(resolution) or resolution < 1):
            raise ValueError(f"resolution must be a positive integer or None, got {resolution!r}")
        for name in ("select_num", "warm_up"):
            integer_at_least(getattr(self, name), name, 0)
        # rates and weights: a NaN or a negative one trains silently to garbage
        for name in ("lr_ratio", "G_lrs", "z_lrs", "w_D_loss", "w_mse"):
            values = getattr(self, name)
            if not all(is_nonnegative_number(v) for v in values):
                raise ValueError(f"{name} must be finite numbers >= 0, got {values}")
        for name in ("w_nll", "sample_std", "stop_mse", "stop_ftr", "style_weight"):
            value = getattr(self, name)
            if not is_nonnegative_number(value):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        # Adam's settings: eps 0 divides by zero on a parameter with no gradient yet (the
        # images come out NaN, written black); a beta of 1 never forgets the first step.
        if not is_nonnegative_number(self.adam_eps, positive=True):
            raise ValueError(f"adam_eps must be a finite number > 0, got {self.adam_eps!r}")
        for name in ("G_B1", "G_B2"):
            value = getattr(self, name)
            if not (is_nonnegative_number(value) and value < 1):
                raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
        if any(int(i) < 0 for i in self.iterations):
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if any(int(f) < 0 for f in self.ft_num):
            raise ValueError(f"ft_num must be >= 0, got {self.ft_num}")
        if any(int(f) < 1 for f in self.ftr_num):
            raise ValueError(f"ftr_num must be >= 1, got {self.ftr_num}")
        if self.select_num < 0 or (self.select_batch is not None and self.select_batch < 1):
            raise ValueError(
                f"select_num must be >= 0 and select_batch >= 1, got {self.select_num}, "
                f"{self.select_batch}"
            )
        if self.factor is not None and (not is_int(self.factor) or self.factor < 1):
            raise ValueError(f"factor must be a positive integer or None, got {self.factor!r}")
        if self.ftr_type not in FTR_TYPES:
            raise ValueError(f"ftr_type must be one of {FTR_TYPES}, got {self.ftr_type!r}")
        if self.style_weight and self.ftr_type != "johnson":
            raise ValueError(
                f"style_weight applies to ftr_type 'johnson' only, not {self.ftr_type!r}"
            )
        object.__setattr__(self, "iterations", tuple(int(i) for i in self.iterations))
        object.__setattr__(self, "ft_num", tuple(int(i) for i in self.ft_num))
        object.__setattr__(self, "ftr_num", tuple(int(i) for i in self.ftr_num))
        object.__setattr__(self, "use_in", tuple(_as_bool(b) for b in self.use_in))

    @property
    def num_stages(self) -> int:
        return len(self.iterations)

    @property
    def total_steps(self) -> int:
        return sum(self.iterations)

    @property
    def sr_factor(self) -> int:
        if self.factor is not None:
            return int(self.factor)
        return 2 if self.dgp_mode == "hybrid" else 4

    def replace(self, **overrides) -> SolverConfig:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown SolverConfig fields {unknown}; known: {sorted(names)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SolverConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def preset(cls, name: str, **overrides) -> SolverConfig:
        """A named preset (see :func:`preset_names`), with field overrides."""
        presets = _presets()
        key = ALIASES.get(name, name)
        if key not in presets:
            raise ValueError(
                f"unknown preset {name!r}; known: {sorted(presets)} and aliases {sorted(ALIASES)}"
            )
        fields = {k: v for k, v in presets[key].items() if k not in _PRESET_INFO}
        return cls.from_dict(fields).replace(**overrides)


_PRESET_INFO = ("source", "G_ch", "D_ch", "weights")


def _as_bool(value) -> bool:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "y", "t"):
            return True
        if lowered in ("0", "false", "no", "n", "f"):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    return bool(value)


@functools.cache
def _presets() -> dict[str, dict[str, Any]]:
    text = resources.files("dgp_jax").joinpath("presets.json").read_text()
    return json.loads(text)["presets"]


def preset_names() -> list[str]:
    return sorted(_presets())


def preset_for_size(mode: str, resolution: int) -> str | None:
    """The preset written for ``mode`` at this model size, if there is one."""
    prefix = {64: "wallpapers_64", 128: "imagenet1k_128", 256: "examples_256"}.get(resolution)
    name = {"SR": "SR_D_biased"}.get(mode, mode) if resolution == 128 else mode
    return f"{prefix}/{name}" if prefix and f"{prefix}/{name}" in _presets() else None


def preset_source(name: str) -> str:
    return _presets()[ALIASES.get(name, name)]["source"]
