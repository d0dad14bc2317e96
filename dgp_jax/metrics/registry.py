"""Evaluators registered by name, as big_vision's ``config.evals``.

An entry maps a name to ``"module:factory"``; the module is imported only when the name is
asked for, so listing metrics never loads a network. ``factory(**config)`` returns an
evaluator: a callable over restored and reference images (channels-last, [-1, 1]) that
returns a dict of named values. Per-image metrics return one value per image; set metrics
(FID and the like) return one value for the set. An evaluator that needs the inpainting
masks declares a keyword parameter ``masks`` ((B, H, W) or (B, H, W, 1), 1 = keep) and is
given them; the others are called without (``experiments/inpainting_protocol.py`` calls every
evaluator this way, on the composites: the result in the hole, the original elsewhere).

Metrics modules add their lines to ``EVALUATORS``. ``dgp-jax evaluate``
(:mod:`dgp_jax.evaluate`) passes a factory the options it declares among ``nets`` (the
folder of weight files, ``--nets``) and ``mode``; a factory that reads a weight file
raises :class:`~dgp_jax.metrics.weights.MissingWeightsError` (file, URL, sha256 prefix,
metric) when it is absent. The evaluator is called as ``evaluate(restored, reference)``
(``reference`` may default to None for no-reference metrics), with ``labels=`` (ImageNet
class per image) when it declares that keyword.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dgp_jax.lazy_registry import resolve

EVALUATORS: dict[str, str] = {
    "restoration": "dgp_jax.metrics.restoration:restoration_evaluator",
    "fid": "dgp_jax.metrics.inception:fid_evaluator",
    "kid": "dgp_jax.metrics.inception:kid_evaluator",
    "is": "dgp_jax.metrics.inception:is_evaluator",
    "ids": "dgp_jax.metrics.inception:ids_evaluator",
    "niqe": "dgp_jax.metrics.niqe_metric:niqe_evaluator",
    "resnet50": "dgp_jax.metrics.classification:resnet50_evaluator",
    "lpips": "dgp_jax.metrics.lpips:lpips_evaluator",
    "inpainting_hole": "dgp_jax.metrics.inpainting:hole_evaluator",
    "aot_gan": "dgp_jax.metrics.inpainting:composite_evaluator",
}

# Evaluators that give one value for a whole set (FID and the like): compare scores them on
# each method's images together, once every method has run, not on each call's batch.
SET_METRICS = frozenset({"fid", "kid", "is", "ids"})
# Evaluators that need each image's inpainting mask (a ``masks`` parameter without default):
# restore --metrics has none; evaluate --masks, compare and the inpainting protocol pass them.
MASK_METRICS = frozenset({"inpainting_hole", "aot_gan"})


def names() -> list[str]:
    """Every registered evaluator name, sorted."""
    return sorted(EVALUATORS)


def get(name: str) -> Callable[..., Callable[..., dict[str, Any]]]:
    """The factory registered as ``name``; unknown names list the known ones."""
    return resolve(EVALUATORS, name, "metric")


def build(name: str, **config: Any) -> Callable[..., dict[str, Any]]:
    """``get(name)(**config)``: an evaluator ready to call."""
    return get(name)(**config)


def takes_masks(evaluator: Callable[..., Any]) -> bool:
    """Whether ``evaluator`` wants the inpainting masks (a ``masks`` keyword parameter)."""
    import inspect

    try:
        return "masks" in inspect.signature(evaluator).parameters
    except (TypeError, ValueError):
        return False


def needs_masks(evaluator: Callable[..., Any]) -> bool:
    """Whether ``evaluator`` cannot score without the inpainting masks (its ``masks``
    parameter has no default; the restoration evaluator's has one)."""
    import inspect

    try:
        param = inspect.signature(evaluator).parameters.get("masks")
    except (TypeError, ValueError):
        return False
    return param is not None and param.default is inspect.Parameter.empty
