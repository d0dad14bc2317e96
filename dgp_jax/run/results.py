"""Writing results: one solved image's files (done marker last), and the summaries."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dgp_jax.images import encode_uint8, image_grid, image_sheet, labelled_sheet
from dgp_jax.run.folder import OutputDir
from dgp_jax.run.markers import RunSpec, done_marker, is_done
from dgp_jax.run.plan import image_key
from dgp_jax.run.settings import METRIC_NAMES
from dgp_jax.run.solving import Solved


# --------------------------------------------------------------------------- per image
def _metrics(solved: Solved, spec: RunSpec) -> tuple[dict[str, float] | None, str | None]:
    """The reference's metrics against the original, and which region they cover."""
    if spec.observed:
        return None, None
    from dgp_jax import metrics as metrics_lib

    mode = spec.config.dgp_mode
    values = solved.result.metrics
    region = {"colorization": "Lab merge, whole image", "inpainting": "centre hole"}.get(
        mode, "whole image"
    )
    if spec.mask is not None and mode == "inpainting":
        # restore scored the custom mask's hole (dgp_jax.metrics.inpainting).
        region = "hole of the custom mask (PSNR: its pixels; SSIM: 7x7 windows inside it)"
    elif spec.mask is not None:
        # hybrid with a custom mask: score the whole result.
        values = metrics_lib.restoration_metrics(
            result_image(solved, spec)[None], solved.original[None], "reconstruct"
        )
        region = "whole image (custom mask)"
    if values is None:
        return None, None
    return {k: float(np.asarray(values[k]).reshape(-1)[0]) for k in METRIC_NAMES}, region


def result_image(solved: Solved, spec: RunSpec) -> np.ndarray:
    """The image a restore run writes as its result, the one its metrics score: for
    colorization the Lab merge of the input's lightness with G's colours, for inpainting
    G's output with the known pixels pasted back, otherwise G's output."""
    raw = np.asarray(solved.result.images[0])
    if spec.kind != "restore":
        return raw
    mode = spec.config.dgp_mode
    if mode == "colorization":
        from dgp_jax.metrics import colorization_merge

        return colorization_merge(raw, solved.original)
    if mode == "inpainting":
        from dgp_jax.degradations import center_mask

        keep = spec.mask if spec.mask is not None else center_mask(*raw.shape[:2])
        # In float64, so that the known pixels are written exactly as the input's.
        keep = np.asarray(keep, np.float64).reshape(raw.shape[:2] + (1,))
        return keep * np.asarray(solved.original, np.float64) + (1 - keep) * raw
    return raw


def _frames_jitter(model, spec: RunSpec, solved: Solved) -> tuple[list[tuple[str, Any]], Any]:
    import jax

    from dgp_jax import manipulate

    stds = spec.manipulation["stds"]
    samples = spec.manipulation["samples"]
    key = jax.random.fold_in(image_key(spec.seed, solved.item.name), 1)
    images = manipulate.jitter(model, solved.result, key, stds=stds, samples=samples)[0]
    frames = [
        (f"std{std:g}_{s:02d}.png", images[k, s])
        for k, std in enumerate(stds)
        for s in range(samples)
    ]
    grid = image_grid([[solved.result.images[0]] + list(images[k]) for k in range(len(stds))])
    return frames, grid


def _frames_transfer(model, spec: RunSpec, solved: Solved) -> tuple[list[tuple[str, Any]], Any]:
    from dgp_jax import manipulate

    classes = spec.manipulation["classes"]
    images = manipulate.category_transfer(model, solved.result, classes)[0]
    frames = [(f"class{c:04d}.png", images[k]) for k, c in enumerate(classes)]
    return frames, image_sheet([solved.result.images[0]] + list(images))


_FRAMES: dict[str, Callable] = {"jitter": _frames_jitter, "transfer": _frames_transfer}


def write_solved(out: OutputDir, model, spec: RunSpec, solved: Solved, fingerprint: str) -> dict:
    """All files of one image, the done marker last; returns the marker's record."""
    name, label, res = solved.item.name, spec.label, solved.result
    stem = f"{name}_{label}"
    files = [f"{stem}.png", f"{stem}_degraded.png", f"{stem}_sheet.png"]
    final = result_image(solved, spec)
    out.write_image(files[0], final)
    out.write_image(files[1], res.degraded[0])
    # input | degraded | G's output at the end of each stage (the reconstruction process,
    # as the reference's sheet shows it) | result.
    stages = [] if res.stage_images is None else list(res.stage_images[:-1, 0])
    if spec.kind == "restore":
        files.append(f"{stem}_generated.png")  # G's raw output, beside the result
        out.write_image(files[-1], res.images[0])
    metrics, region = _metrics(solved, spec)
    tiles = [res.degraded[0], *stages, final]
    labels = ["observation", *(f"stage {s + 1}" for s in range(len(stages))), "result"]
    if metrics is not None:
        labels[-1] = f"result, PSNR {metrics['psnr']:.2f} dB"
    if not spec.observed:
        tiles, labels = [solved.original, *tiles], ["input", *labels]
    out.write_bytes(files[2], encode_uint8(labelled_sheet(tiles, labels)))
    record: dict[str, Any] = {
        "name": name,
        "label": label,
        "input": str(solved.item.path),
        "class_given": solved.item.cls,
        "class": int(res.classes[0]),
        "metrics": metrics,
        "metrics_region": region,
        "source_size": list(solved.source_size),
        "upsampled": min(solved.source_size) < model.config.resolution,
        "final_loss": float(res.history["loss"][-1, 0]) if len(res.history["loss"]) else None,
        "seconds": round(solved.seconds, 3),
    }
    if metrics is not None:
        files.append(f"{stem}_metrics.json")
        out.write_json(files[-1], {**metrics, "class": record["class"], "region": region})
    if spec.kind in _FRAMES:
        frames, grid = _FRAMES[spec.kind](model, spec, solved)
        for fname, frame in frames:
            files.append(f"{stem}_frames/{fname}")
            out.write_image(files[-1], frame)
        files.append(f"{stem}_grid.png")
        out.write_image(files[-1], grid)
    record["files"] = files
    record["fingerprint"] = fingerprint
    out.write_json(done_marker(name, label), record)
    return record


# --------------------------------------------------------------------------- summaries
def _filled_hole(spec: RunSpec, resolution: int) -> np.ndarray | None:
    """The inpainting mask the run filled ((R, R, 1), 1 = keep): its --mask, else the
    centre hole at the model's resolution (every result's size); None for the tasks
    without one."""
    from dgp_jax.degradations import MASK_MODES, center_mask

    if spec.config.dgp_mode not in MASK_MODES:
        return None
    if spec.mask is not None:
        return spec.mask
    return center_mask(resolution, resolution, np.float64)


def _extra_metrics(out: OutputDir, spec: RunSpec, records: dict[str, dict], resolution: int
                   ) -> tuple[list[str], dict | None]:  # fmt: skip
    """restore --metrics: the evaluators on every done image's result file against its input
    (read as the solver read it): (columns, {"per_image": {name: {column: value}},
    "table": {column: mean or set value}})."""
    if spec.extra_metrics is None or not records:
        return [], None
    from dgp_jax.evaluate import Entry, known_class, score

    entries = [
        Entry(name, out.path(r["files"][0]), None if spec.observed else Path(r["input"]),
              known_class(r.get("class_given")))
        for name, r in records.items()
    ]  # fmt: skip
    try:
        scores = score(entries, spec.extra_metrics, mask=_filled_hole(spec, resolution))
    except Exception as err:  # noqa: BLE001 - any metric's failure, a bug in one included
        # After the solving: the results stay, and the summary is written (this runs as the
        # run ends), saying why the columns are missing.
        text = str(err) if isinstance(err, OSError | ValueError) else f"{type(err).__name__}: {err}"
        print(f"dgp-jax: --metrics could not score the results: {text}", file=sys.stderr)
        return [], {"error": text, "per_image": {}, "table": {}}
    columns = [c for c in scores.per_image if c not in METRIC_NAMES]
    per_image = {
        e.name: {c: float(scores.per_image[c][i]) for c in columns}
        for i, e in enumerate(scores.entries)
    }
    table = {k: v for k, v in scores.table().items() if k not in METRIC_NAMES}
    return columns, {"per_image": per_image, "table": table}


def write_summary(out: OutputDir, spec: RunSpec, names: Sequence[tuple[str, str]],
                  failed: dict[str, str], fingerprint: str, resolution: int
                  ) -> Path:  # fmt: skip
    """summary(.<process>).json / .csv over this process's share, from the done markers
    (so images finished by an earlier, interrupted run are included); ``resolution``, the
    model's, sizes the centre hole that restore --metrics scores."""
    records, pending = {}, []
    for name, _ in names:
        if is_done(out, name, spec.label, fingerprint):
            records[name] = json.loads(out.path(done_marker(name, spec.label)).read_text())
        elif name not in failed:
            pending.append(name)
    scored = [r["metrics"] for r in records.values() if r.get("metrics")]
    mean = {k: float(np.mean([m[k] for m in scored])) for k in METRIC_NAMES} if scored else None
    extra_columns, extra = _extra_metrics(out, spec, records, resolution)
    if extra is not None:
        mean = {**(mean or {}), **extra["table"]}
    sources = dict(names)
    summary = {
        "label": spec.label,
        "process": out.process_index,
        "processes": out.process_count,
        "total": len(names),
        "done": len(records),
        "failed": len(failed),
        "pending": len(pending),
        "mean": mean,
        **({"extra_metrics": extra} if extra is not None else {}),
        "images": records,
        "failures": {n: {"input": sources.get(n), "error": e} for n, e in failed.items()},
    }
    json_name, csv_name = out.summary_names()
    out.write_json(json_name, summary)
    buffer = io.StringIO()
    fields = ["name", "input", "status", "class_given", "class", *METRIC_NAMES,
              *extra_columns, "seconds", "error"]  # fmt: skip
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for name, source in names:
        if name in records:
            r = records[name]
            row = {"name": name, "input": source, "status": "done",
                   "class_given": r.get("class_given"), "class": r.get("class"),
                   "seconds": r.get("seconds"), **(r.get("metrics") or {}),
                   **(extra["per_image"].get(name, {}) if extra else {})}  # fmt: skip
        elif name in failed:
            row = {"name": name, "input": source, "status": "failed", "error": failed[name]}
        else:
            row = {"name": name, "input": source, "status": "pending"}
        writer.writerow(row)
    out.write_text(csv_name, buffer.getvalue())
    return out.path(json_name)
