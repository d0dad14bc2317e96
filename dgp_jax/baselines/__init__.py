"""Competing methods, one module each, registered by name for ``dgp-jax compare``.

A method is a function

    restore(observed, degradation, *, seed, config) -> restored

- ``observed``: numpy (B, h, w, 3) in [-1, 1], the degraded images exactly as DGP sees them
  (``degradation.target_fn`` of the originals), so every method gets the same observation;
- ``degradation``: the :class:`dgp_jax.degradations.Degradation` that made them (methods that
  optimise through φ use its ``generator_fn``);
- ``seed``: an int, or one int per image (then image i depends only on its own seed, so
  ``compare`` gets the same result whatever the batch); the same seed gives the same result;
- ``config``: a mapping of the method's settings (iterations, weight file paths, ...);
  unknown keys are an error naming the key;
- returns numpy (B, H, W, 3) in [-1, 1].

``METHODS`` maps a name to ``"module:function"``; the module is imported only when the name
is asked for. A method's module may also define ``SETTINGS`` (the config keys it accepts:
``compare`` passes the task's ``factor`` and the inputs' ``classes`` only to methods that
list them) and ``check(config, *, degradation, resolution)``, called by ``compare`` before
any work with its φ and image size (to name a missing weight file or a bad setting).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from dgp_jax.lazy_registry import resolve

METHODS: dict[str, str] = {
    "dgp": "dgp_jax.baselines.dgp:dgp",
    "latent-only": "dgp_jax.baselines.dgp:latent_only",
    "mse-only": "dgp_jax.baselines.dgp:mse_only",
    "dip": "dgp_jax.baselines.dip:restore",
    "bicubic": "dgp_jax.baselines.trivial:bicubic",
    "nearest": "dgp_jax.baselines.trivial:nearest",
    "observation": "dgp_jax.baselines.trivial:observation",
    "singan": "dgp_jax.baselines.singan:restore",
    "dgp-vgg": "dgp_jax.baselines.dgp_vgg:restore",
}


def names() -> list[str]:
    """Every registered method name, sorted."""
    return sorted(METHODS)


def get(name: str) -> Callable[..., Any]:
    """The restore function registered as ``name``; unknown names list the known ones."""
    return resolve(METHODS, name, "method")


def module_of(name: str):
    """The module of method ``name`` (for its SETTINGS and check)."""
    get(name)
    return importlib.import_module(METHODS[name].split(":")[0])
