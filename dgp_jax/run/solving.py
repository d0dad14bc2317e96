"""Loading and solving a run's images in fixed-shape batches."""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dgp_jax.images import (
    ClippedImageWarning,
    ImageError,
    load_image_with_size,
)
from dgp_jax.run.markers import RunSpec
from dgp_jax.run.plan import Item, image_key
from dgp_jax.run.progress import Progress


# --------------------------------------------------------------------------- solving
@dataclasses.dataclass
class Report:
    """What a run did: ``done`` solved now, ``skipped`` done before, ``failed`` name ->
    message, ``total`` this process's share."""

    total: int = 0
    done: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    interrupted: bool = False
    summary: Path | None = None


@dataclasses.dataclass
class Solved:
    """One solved image: its item, original (R, R, 3), source size and its slice of the
    SolveResult (a one-image result, as dgp_jax.manipulate takes)."""

    item: Item
    original: np.ndarray
    source_size: tuple[int, int]
    result: Any
    seconds: float


def _pick(result, i: int):
    """Image i of a SolveResult as a one-image SolveResult."""
    import jax

    sl = slice(i, i + 1)
    return result.replace(
        images=result.images[sl], degraded=result.degraded[sl], z=result.z[sl],
        classes=result.classes[sl], embeddings=result.embeddings[sl],
        params=jax.tree.map(lambda a: a[sl], result.params),
        history={k: v[:, sl] for k, v in result.history.items()},
        select_loss=result.select_loss[sl],
        metrics=None if result.metrics is None else {k: v[sl] for k, v in result.metrics.items()},
        stage_images=None if result.stage_images is None else result.stage_images[:, sl],
    )  # fmt: skip


def _degradation(spec: RunSpec, resolution: int):
    from dgp_jax import degradations

    if spec.mask is None:
        return None  # restore's default for the mode
    config = spec.config
    factor = config.sr_factor if config.dgp_mode in ("SR", "hybrid") else None
    return degradations.for_mode(config.dgp_mode, resolution, factor=factor, mask=spec.mask)


def _is_gray(image: np.ndarray) -> bool:
    return bool(np.all(image[..., 0] == image[..., 1]) and np.all(image[..., 1] == image[..., 2]))


def _final_renders(model, result, originals: np.ndarray, spec: RunSpec):
    """For jitter, morph and transfer: the result as each image's final state renders it
    (dgp_jax.manipulate.render, what the frames start from), scored as restore scores."""
    from dgp_jax import manipulate
    from dgp_jax import metrics as metrics_lib
    from dgp_jax.solve import _metric_mode

    images = manipulate.render(model, result).astype(np.asarray(result.images).dtype)
    metrics = result.metrics
    if metrics is not None:
        mode = _metric_mode(spec.config.dgp_mode)
        mask = spec.mask if mode == "inpainting" else None
        metrics = metrics_lib.restoration_metrics(images, originals, mode, mask=mask)
    return result.replace(images=images, metrics=metrics)


def solve_items(
    model,
    items: Sequence[Item],
    spec: RunSpec,
    progress: Progress,
    failed: dict[str, str],
    *,
    batch_size: int,
    mesh=None,
) -> Iterator[list[Solved]]:
    """Load and solve ``items`` in batches of ``batch_size``, yielding each solved batch.

    Every batch is padded to ``batch_size``. Callers pass min(--batch, the whole share),
    not of what is left to do, so a resumed run solves in the same shape as the first
    one and so gives bitwise the same results.

    Unreadable images go to ``failed`` (name -> message) and are skipped; a batch whose
    solve raises is failed as a whole and the run goes on.
    """
    import dgp_jax
    from dgp_jax.solve import GrayInputWarning

    res = model.config.resolution
    degradation = _degradation(spec, res)
    queue = list(items)
    while queue:
        loaded: list[tuple[Item, np.ndarray, tuple[int, int]]] = []
        while queue and len(loaded) < batch_size:
            item = queue.pop(0)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ClippedImageWarning)
                    image, size = load_image_with_size(item.path, res)
                for w in caught:
                    progress.write(f"warning: {w.message}")
            except (ImageError, OSError) as err:
                failed[item.name] = str(err)
                progress.write(f"skipped {item.path}: {err}")
                continue
            if spec.config.dgp_mode == "colorization" and not spec.observed and _is_gray(image):
                progress.write(
                    f"note: {item.path} is gray: colorization scores the result against this "
                    "input as the original; pass --observed for gray inputs (no metrics)"
                )
            if min(size) < res:
                progress.write(f"note: {item.path} is {size[0]}x{size[1]}, upsampled to {res}")
            loaded.append((item, image, size))
        progress.plan(math.ceil(len(queue) / batch_size) + (1 if loaded else 0))
        if not loaded:
            continue
        count = len(loaded)
        # Pad to the batch size with copies of the last image: one compiled shape for all
        # batches of the run (the copies' results are dropped).
        rows = loaded + [loaded[-1]] * (batch_size - count)
        images = np.stack([r[1] for r in rows]).astype(model.dtype)
        classes = np.asarray([r[0].cls for r in rows])
        keys = np.stack([image_key(spec.seed, r[0].name) for r in rows])
        progress.phase("choosing start latents" if spec.config.select_num > 1 else "starting")
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # Said per file when it was loaded, with the CLI's flag.
                warnings.simplefilter("ignore", GrayInputWarning)
                result = dgp_jax.restore(
                    model, images, classes, spec.config, keys, degradation=degradation,
                    observed=spec.observed, mesh=mesh,
                    callback=progress.step, precision=spec.precision, lowering=spec.lowering,
                    vgg=spec.vgg,
                )  # fmt: skip
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - one bad batch must not end the run
            for item, _, _ in loaded:
                failed[item.name] = f"solve failed: {type(err).__name__}: {err}"
            progress.write(
                f"solve failed for {', '.join(str(r[0].path) for r in loaded)}: "
                f"{type(err).__name__}: {err}"
            )
            continue
        if spec.kind != "restore":
            result = _final_renders(model, result, images, spec)
        seconds = (time.perf_counter() - start) / count
        yield [
            Solved(item, image, size, _pick(result, i), seconds)
            for i, (item, image, size) in enumerate(loaded)
        ]
