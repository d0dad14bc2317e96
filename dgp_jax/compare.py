"""``dgp-jax compare``: several methods on the same observations, one table.

Every method (``dgp_jax.baselines.METHODS``) gets the same φ object and the same
observations, made once from the originals (``φ.target_fn``), and every result is scored the
same way: for inpainting the known pixels are pasted back (as ``restore`` writes its result),
then ``dgp_jax.metrics`` (the reference's restoration metrics for the task, and any other
registered evaluator asked for with ``--metrics``) against the originals.

Output folder (written through ``dgp_jax.run.folder.OutputDir``: atomic files, a lock):

* ``<method>/<image>.png``: the result, and ``<method>/<image>_compare.done.json``, written
  last, with the image's metrics, seconds and a fingerprint of what the result depends on
  (the method, its settings, task, φ, seed, the image's observation). A rerun skips images
  whose marker matches (``dgp_jax.run.markers.is_done``) and redoes the rest, per method
  and per image; changed settings of one method redo only that method.
* ``table.csv``, ``table.md``, ``table.json``: one row per method: mean of every metric,
  seconds per image, images scored;
* ``per_image.csv``: one row per (method, image);
* ``sheet.png``: one row per image: original, observation, then one column per method.

Image i's seed is crc32-derived from its name (``dgp_jax.run.plan.image_key``), so a
result does not depend on which images are solved with it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dgp_jax import baselines
from dgp_jax.run.folder import OutputDir
from dgp_jax.run.markers import done_marker, is_done
from dgp_jax.run.plan import Item, image_key, plan_inputs, refuse_output_among_inputs
from dgp_jax.run.settings import RunError, canonical_task

LABEL = "compare"
DEFAULT_METHODS = ("dgp", "latent-only", "mse-only", "dip", "bicubic")


@dataclasses.dataclass
class CompareOptions:
    task: str
    methods: list[str]
    inputs: list[str]
    out: str
    resolution: int = 64
    factor: int | None = None
    mask: str | None = None
    mask_keep: str = "white"
    sets: list[str] = dataclasses.field(default_factory=list)  # "method.key=value"
    metrics: list[str] = dataclasses.field(default_factory=list)  # extra evaluators
    nets: str | None = None  # the metrics' weight files (as evaluate's --nets)
    seed: int = 0
    batch: int = 1
    progress: bool = True


@dataclasses.dataclass
class CompareReport:
    done: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    skipped: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    failed: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    table: Path | None = None
    interrupted: bool = False  # Ctrl-C or SIGTERM: the tables hold what finished before


# --------------------------------------------------------------------------- settings
def method_settings(methods: Sequence[str], sets: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--set method.key=value`` -> {method: {key: value}}; values parsed as JSON-ish
    (numbers, true/false, none), else kept as text."""
    settings: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for item in sets:
        name, eq, text = item.partition("=")
        method, dot, key = name.partition(".")
        if not eq or not dot or not key:
            raise RunError(f"--set {item!r}: expected METHOD.KEY=VALUE (e.g. dip.iterations=100)")
        if method not in settings:
            raise RunError(
                f"--set {item!r}: {method!r} is not one of --methods {','.join(methods)}"
            )
        settings[method][key] = _value(text)
    return settings


def _value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _fingerprint(payload: dict) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array)).hexdigest()


def _seed_of(seed: int, name: str) -> int:
    """Image ``name``'s seed: the first word of its run key (dgp_jax.run.plan.image_key)."""
    return int(image_key(seed, name)[1]) % 2**31


# --------------------------------------------------------------------------- scoring
def _evaluators(mode: str, extra: Sequence[str], *, nets: str | None, task: str, masks: bool):
    """(per-image, set) evaluate.Evaluators: the restoration metrics and the ``--metrics``
    ones, built (weights read) before any work; each gets the options it declares among
    ``nets`` and ``mode``. Set metrics (registry.SET_METRICS) score each method's images
    together, once every method has run (:func:`_set_scores`)."""
    from dgp_jax.evaluate import RESTORATION_COLUMNS, Evaluators
    from dgp_jax.metrics import registry

    if nets is not None and not Path(nets).is_dir():
        raise RunError(f"--nets {nets} is not a folder")
    names = [*RESTORATION_COLUMNS, *(n for n in extra if n != "restoration")]
    hint = f"the task {task} has none (inpainting and hybrid have)"
    try:
        evaluators = Evaluators(names, nets=nets, mode=mode, masks=masks, masks_hint=hint)
    except (OSError, ValueError) as err:
        raise RunError(f"--metrics: {err}") from None
    return evaluators.split(registry.SET_METRICS)


def _score_what_is_missing(out: OutputDir, method: str, done: Sequence[int], items, originals,
                           keep, evaluators) -> None:  # fmt: skip
    """A rerun with more ``--metrics``: done images (not solved again) get the evaluators
    their record lacks, scored on their written file (8-bit, as a reader of the folder has
    it; listed in the record's ``scored_from_file``), so that every column's mean covers
    every image of the row."""
    for i in done:
        name = items[i].name
        marker = done_marker(f"{method}/{name}", LABEL)
        record = json.loads(out.path(marker).read_text())
        have = record.get("evaluators", ["restoration"])  # (records before this field)
        missing = [n for n in evaluators.names if n not in have]
        if not missing:
            continue
        result = _read(out.path(record["files"][0]), originals.shape[1])[None]
        masks = None if keep is None else np.broadcast_to(keep, result.shape[:-1] + (1,))
        try:
            scores = _score(evaluators.split(missing)[1], result, originals[i : i + 1], masks,
                            [items[i].cls])  # fmt: skip
        except Exception as err:  # noqa: BLE001 - the image stays done, its columns blank
            print(f"compare: scoring {method}'s {name} failed: {type(err).__name__}: {err}",
                  file=sys.stderr, flush=True)  # fmt: skip
            continue
        record["metrics"].update(scores[0])
        record["evaluators"] = have + missing
        record["scored_from_file"] = record.get("scored_from_file", []) + missing
        out.write_json(marker, record)


def _set_scores(out: OutputDir, methods: Sequence[str], items: Sequence[Item],
                originals: np.ndarray, set_evaluators, res: int) -> dict[str, dict]:  # fmt: skip
    """{method: {value name: value}}: each set metric over all of a method's done images,
    as written (the files a reader of the folder scores), against their originals. A method
    with fewer than two done images gets none; a metric that fails is named on stderr."""
    scores: dict[str, dict[str, float]] = {m: {} for m in methods}
    if not set_evaluators.names:
        return scores
    index = {it.name: i for i, it in enumerate(items)}
    for m in methods:
        names = [n for n in _records(out, m, items) if n in index]
        if len(names) < 2:
            continue
        results = np.stack([_read(out.path(f"{m}/{n}.png"), res) for n in names])
        refs = originals[[index[n] for n in names]]
        for name in set_evaluators.names:
            try:
                _, values = set_evaluators.split([name])[1](results, refs)
            except Exception as err:  # noqa: BLE001 - the per-image results stand
                print(f"compare: {name} on {m}'s images failed: {type(err).__name__}: {err}",
                      file=sys.stderr, flush=True)  # fmt: skip
                continue
            scores[m].update(values)
    return scores


def _check_labels(evaluators, items: Sequence[Item]) -> None:
    """An evaluator that declares ``labels`` (ResNet-50 accuracy) needs every input's class."""
    unknown = [it.name for it in items if it.cls < 0]
    if evaluators.needs_labels and unknown:
        raise RunError(
            f"--metrics: {evaluators.needs_labels[0]} needs every input's ImageNet class (a "
            f"list file of 'path class' lines); none for {unknown[:3]}"
        )


def _score(evaluators, results: np.ndarray, originals: np.ndarray, masks: np.ndarray | None,
           labels: list) -> list[dict[str, float]]:  # fmt: skip
    """Per image, every evaluator's values (a value for the whole batch goes to each image);
    the masks (B, H, W, 1) and the inputs' classes go to the evaluators that take them."""
    per_image, per_set = evaluators(results, originals, labels=labels, masks=masks)
    return [{**{k: float(v[i]) for k, v in per_image.items()}, **per_set}
            for i in range(len(results))]  # fmt: skip


def finish(results: np.ndarray, observed: np.ndarray, mode: str, keep: np.ndarray | None):
    """What compare scores: for inpainting the known pixels pasted back, else as returned."""
    if mode != "inpainting" or keep is None:
        return results
    keep = np.asarray(keep, np.float64).reshape((1,) + keep.shape[-3:])
    # observed = original * keep there, so keep * observed is the known pixels exactly.
    return (keep * observed + (1 - keep) * np.asarray(results, np.float64)).astype(results.dtype)


# --------------------------------------------------------------------------- the run
def _load(items: Sequence[Item], resolution: int) -> tuple[list[Item], np.ndarray, dict]:
    from dgp_jax.images import ImageError, load_image

    kept, images, failed = [], [], {}
    for item in items:
        try:
            images.append(load_image(item.path, resolution))
            kept.append(item)
        except (ImageError, OSError) as err:
            failed[item.name] = str(err)
            print(f"compare: skipped {item.path}: {err}", file=sys.stderr)
    if not kept:
        raise RunError("no readable input images")
    return kept, np.stack(images).astype(np.float32), failed


def execute(options: CompareOptions) -> CompareReport:
    from dgp_jax import degradations
    from dgp_jax.images import ImageError, image_grid, load_mask, save_image
    from dgp_jax.runner import sigterm_as_interrupt

    task = canonical_task(options.task)
    methods = list(dict.fromkeys(options.methods))
    if not methods:
        raise RunError("--methods is empty")
    for m in methods:
        try:
            baselines.get(m)
        except ValueError as err:
            raise RunError(f"--methods: {err}") from None
    settings = method_settings(methods, options.sets)
    if options.batch < 1:  # it was taken as 1
        raise RunError(f"--batch must be >= 1, got {options.batch}")
    res = options.resolution
    if not isinstance(res, int) or res < 1:  # named by the flag, not by degradations' name
        raise RunError(f"--resolution must be a positive integer, got {res!r}")
    factor = options.factor
    if factor is None and task in ("SR", "hybrid"):
        factor = 4 if task == "SR" else 2
    keep = None
    if options.mask is not None:
        if task not in degradations.MASK_MODES:
            raise RunError(f"--mask applies to the tasks inpainting and hybrid, not {task}")
        try:
            keep = load_mask(options.mask, res, options.mask_keep)
        except (ImageError, OSError, ValueError) as err:
            raise RunError(str(err)) from None
    try:
        phi = degradations.for_mode(task, res, factor=factor, mask=keep)
    except ValueError as err:
        raise RunError(str(err)) from None
    if task in degradations.MASK_MODES and keep is None:
        keep = degradations.center_mask(res, res)
    mode = "reconstruct" if task == "defense" else task

    # Per method: its settings, with the task's factor and the inputs' classes where taken.
    OutputDir.check_writable(options.out, keep=False)
    refuse_output_among_inputs(options.out, options.inputs)
    items = plan_inputs(options.inputs)
    configs: dict[str, dict[str, Any]] = {}
    for m in methods:
        module = baselines.module_of(m)
        accepted = getattr(module, "SETTINGS", None)
        config = dict(settings[m])
        if factor is not None and accepted is not None and "factor" in accepted:
            config.setdefault("factor", factor)
        if accepted is not None:
            unknown = sorted(set(config) - set(accepted) - {"factor"})
            if unknown:
                raise RunError(f"--set {m}.{unknown[0]}: {m} has no setting {unknown[0]!r}; "
                               f"settings: {', '.join(accepted) or 'none'}")  # fmt: skip
        check = getattr(module, "check", None)
        if check is not None:
            try:
                check(config, degradation=phi, resolution=res)
            except (OSError, ValueError) as err:
                raise RunError(f"{m}: {err}") from None
        configs[m] = config
    evaluators, set_evaluators = _evaluators(mode, options.metrics, nets=options.nets,
                                             task=task, masks=keep is not None)  # fmt: skip
    _check_labels(evaluators, items)

    items, originals, load_failed = _load(items, res)
    observed = np.asarray(phi.target_fn(originals)).astype(np.float32)
    report = CompareReport()
    with OutputDir(options.out) as out, sigterm_as_interrupt():
        try:
            for i, item in enumerate(items):
                out.write_image(f"observed/{item.name}.png", observed[i])
            for m in methods:
                _run_method(out, m, configs[m], items, originals, observed, phi, mode, keep,
                            task, factor, options, evaluators, report)  # fmt: skip
            set_values = _set_scores(out, methods, items, originals, set_evaluators, res)
        except KeyboardInterrupt:
            # As the restore runs end: finished images keep their markers (a rerun resumes
            # after them) and the tables show them; no sheet for a partial run.
            report.interrupted = True
            report.table = write_tables(out, methods, items, task)
            return report
        report.table = write_tables(out, methods, items, task, set_values)
        sheet = [[originals[i], observed[i]] for i in range(len(items))]
        for i, item in enumerate(items):
            for m in methods:
                path = out.path(f"{m}/{item.name}.png")
                sheet[i].append(_read(path, res) if path.is_file() else np.zeros_like(originals[i]))
        save_image(image_grid(sheet), out.path("sheet.png"))
    for name, err in load_failed.items():
        for m in methods:
            report.failed.setdefault(m, {})[name] = err
    return report


def _read(path: Path, res: int) -> np.ndarray:
    from dgp_jax.images import load_image

    return load_image(path, res)


def _run_method(out, method, config, items, originals, observed, phi, mode, keep, task,
                factor, options, evaluators, report):  # fmt: skip
    restore = baselines.get(method)
    public = {k: v for k, v in config.items() if k != "progress"}
    fingerprints = {}
    for i, item in enumerate(items):
        fingerprints[item.name] = _fingerprint({
            "method": method, "config": public, "task": task, "factor": factor,
            "phi": phi.name, "seed": options.seed, "resolution": options.resolution,
            "keep": None if keep is None else _sha(keep.astype(np.float32)),
            "observed": _sha(observed[i]),
            # Before 2026-12-01 a --mask run was scored on the centre square, not the
            # mask's hole: a rerun redoes those images.
            **({"scored_on": "the mask's hole"} if options.mask is not None else {}),
        })  # fmt: skip
    todo = [i for i, it in enumerate(items)
            if not is_done(out, f"{method}/{it.name}", LABEL, fingerprints[it.name])]  # fmt: skip
    report.skipped[method] = [items[i].name for i in range(len(items)) if i not in todo]
    _score_what_is_missing(out, method, [i for i in range(len(items)) if i not in todo], items,
                           originals, keep, evaluators)  # fmt: skip
    report.done[method] = []
    batch = max(1, options.batch)
    if options.progress:
        print(f"compare: {method}: {len(todo)} to do, {len(report.skipped[method])} done before",
              file=sys.stderr, flush=True)  # fmt: skip
    for start in range(0, len(todo), batch):
        idx = todo[start : start + batch]
        seeds = [_seed_of(options.seed, items[i].name) for i in idx]
        call_config = dict(config)
        if "classes" in getattr(baselines.module_of(method), "SETTINGS", ()):
            call_config.setdefault("classes", [items[i].cls for i in idx])
        t0 = time.perf_counter()
        try:
            results = restore(observed[idx], phi, seed=seeds[0] if len(idx) == 1 else seeds,
                              config=call_config)  # fmt: skip
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - one method's failure must not end the run
            for i in idx:
                report.failed.setdefault(method, {})[items[i].name] = f"{type(err).__name__}: {err}"
            print(f"compare: {method} failed on {', '.join(items[i].name for i in idx)}: "
                  f"{type(err).__name__}: {err}", file=sys.stderr, flush=True)  # fmt: skip
            continue
        seconds = (time.perf_counter() - t0) / len(idx)
        results = finish(np.asarray(results), observed[idx], mode, keep)
        if results.shape != originals[idx].shape:
            raise RunError(
                f"{method} returned shape {results.shape}, expected {originals[idx].shape}"
            )
        masks = None if keep is None else np.broadcast_to(keep, results.shape[:-1] + (1,))
        try:
            scores = _score(evaluators, results, originals[idx], masks,
                            [items[i].cls for i in idx])  # fmt: skip
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - e.g. NIQE on images under 96 px
            for i in idx:
                report.failed.setdefault(method, {})[items[i].name] = (
                    f"scoring: {type(err).__name__}: {err}"
                )
            print(f"compare: scoring {method}'s results failed: {type(err).__name__}: {err}",
                  file=sys.stderr, flush=True)  # fmt: skip
            continue
        for j, i in enumerate(idx):
            name = items[i].name
            files = [f"{method}/{name}.png"]
            out.write_image(files[0], results[j])
            record = {"method": method, "name": name, "input": str(items[i].path),
                      "metrics": scores[j], "evaluators": evaluators.names,
                      "seconds": round(seconds, 3), "files": files, "config": public,
                      "fingerprint": fingerprints[name]}  # fmt: skip
            out.write_json(done_marker(f"{method}/{name}", LABEL), record)
            report.done[method].append(name)
        if options.progress:
            print(f"compare: {method}: {len(report.done[method])}/{len(todo)} "
                  f"({seconds:.1f} s per image)", file=sys.stderr, flush=True)  # fmt: skip


# --------------------------------------------------------------------------- tables
def _records(out: OutputDir, method: str, items: Sequence[Item]) -> dict[str, dict]:
    records = {}
    for item in items:
        path = out.path(done_marker(f"{method}/{item.name}", LABEL))
        if path.is_file():
            records[item.name] = json.loads(path.read_text())
    return records


def write_tables(out: OutputDir, methods: Sequence[str], items: Sequence[Item], task: str,
                 set_values: dict[str, dict[str, float]] | None = None) -> Path:  # fmt: skip
    """table.csv / .md / .json (one row per method) and per_image.csv, from the markers;
    ``set_values`` ({method: {name: value}}, the set metrics) add columns to the table."""
    set_values = set_values or {}
    set_keys = list(dict.fromkeys(k for values in set_values.values() for k in values))
    per_method = {m: _records(out, m, items) for m in methods}
    keys: list[str] = []
    for recs in per_method.values():
        for r in recs.values():
            keys += [k for k in r["metrics"] if k not in keys]
    ordered = [k for k in ("psnr", "ssim", "mse", "l1") if k in keys]
    keys = ordered + [k for k in keys if k not in ordered]
    rows = []
    for m in methods:
        recs = list(per_method[m].values())
        row: dict[str, Any] = {"method": m}
        for k in keys:
            vals = [r["metrics"][k] for r in recs if k in r["metrics"]]
            row[k] = float(np.mean(vals)) if vals else None
        for k in set_keys:
            row[k] = set_values.get(m, {}).get(k)
        row["seconds_per_image"] = float(np.mean([r["seconds"] for r in recs])) if recs else None
        row["images"] = len(recs)
        rows.append(row)
    fields = ["method", *keys, *set_keys, "seconds_per_image", "images"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row[k]) for k in fields})
    out.write_text("table.csv", buf.getvalue())
    lines = ["| " + " | ".join(fields) + " |", "|" + " --- |" * len(fields)]
    lines += ["| " + " | ".join(_fmt(row[k]) for k in fields) + " |" for row in rows]
    out.write_text("table.md", "\n".join(lines) + "\n")
    per_image = {m: {n: {**r["metrics"], "seconds": r["seconds"]} for n, r in recs.items()}
                 for m, recs in per_method.items()}  # fmt: skip
    out.write_json("table.json", {"task": task, "images": [it.name for it in items],
                                  "table": rows, "per_image": per_image})  # fmt: skip
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["method", "name", *keys, "seconds"],
                            lineterminator="\n")  # fmt: skip
    writer.writeheader()
    for m in methods:
        for n, r in per_method[m].items():
            writer.writerow({"method": m, "name": n, "seconds": r["seconds"],
                             **{k: _fmt(v) for k, v in r["metrics"].items()}})  # fmt: skip
    out.write_text("per_image.csv", buf.getvalue())
    return out.path("table.csv")


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


__all__ = ["CompareOptions", "CompareReport", "execute", "finish", "method_settings",
           "write_tables"]  # fmt: skip
