"""Score restored images with any registered metric: ``dgp-jax evaluate`` and ``restore
--metrics``.

Metric names are those of :mod:`dgp_jax.metrics.registry` (``niqe``, ``resnet50``, and
whatever else is registered: ``lpips``, ``fid``, ...), plus the columns of its
``restoration`` evaluator (``psnr``, ``ssim``, ``mse``, ``l1``). Every evaluator is built
before any image is read, so an unknown name or a missing weight file fails at once with a
message naming the metric and the file.

An evaluator returns named values: an (N,) array is one value per image (a per-image CSV
column; the table shows its mean), a scalar one value for the set (FID and the like; table
only). Evaluators are called as ``evaluate(restored, reference)``, with ``labels=`` (the
ImageNet class of each image) added when their signature has it; one whose ``reference``
has no default needs reference images.

Results and references: a folder of images (matched by file stem), or the output folder of
a ``dgp-jax restore`` run, whose done markers give each result file, its input (the
reference when ``--reference`` is not given) and its class. A reference whose size differs
from its result's is read as the solver read it: centre crop to a square, bilinear resize
to the result's size (:func:`dgp_jax.images.load_image`). Every image is held in memory
as float64.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import inspect
import io
import json
import math
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dgp_jax.metrics import registry

# Columns of the "restoration" evaluator, asked for by name.
RESTORATION_COLUMNS = ("psnr", "ssim", "mse", "l1")
_RESTORATION = "restoration"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# Files a restore run writes beside each result.
_RUN_SIDE_FILES = ("_degraded", "_sheet", "_generated")


class EvaluationError(ValueError):
    """Bad metric names, inputs or weight files; the message names what and where."""


def metric_names() -> list[str]:
    """Every name ``--metrics`` accepts, sorted."""
    return sorted(set(RESTORATION_COLUMNS) | set(registry.names()) - {_RESTORATION})


def parse_metrics(text: str | Sequence[str]) -> list[str]:
    """``psnr,ssim,niqe`` -> ['psnr', 'ssim', 'niqe'] (order kept, repeats dropped); an
    unknown name is an EvaluationError listing the known ones."""
    names = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text)
    names = list(dict.fromkeys(n for n in names if n))
    known = metric_names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise EvaluationError(f"unknown metrics {unknown}; known: {', '.join(known)}")
    if not names:
        raise EvaluationError(f"no metrics given; known: {', '.join(known)}")
    return names


@dataclasses.dataclass
class _Evaluator:
    name: str  # registry name
    function: Callable[..., Mapping[str, Any]]
    columns: tuple[str, ...] | None  # keep only these (restoration), else all
    needs_reference: bool
    takes_labels: bool


def _owner(metric: str) -> str:
    """The evaluator that gives ``metric``: 'restoration' for its columns, else itself."""
    return _RESTORATION if metric in RESTORATION_COLUMNS else metric


def factory_options(factory: Callable, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options ``factory`` declares (all of them if it takes ``**kwargs``)."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    return {k: v for k, v in options.items() if k in params}


class Evaluators:
    """The evaluators for a list of metric names, built (weights loaded) up front."""

    def __init__(
        self,
        metrics: str | Sequence[str],
        nets: str | os.PathLike | None = None,
        mode: str = "reconstruct",
        masks: bool = False,
        masks_hint: str = (
            "give dgp-jax evaluate --masks DIR (restore and compare pass them for the tasks "
            "inpainting and hybrid, experiments/inpainting_protocol.py always)"
        ),
        **options: Any,
    ):
        """Args:
        metrics: names (a list or ``a,b,c``), see :func:`metric_names`.
        nets: the folder holding the metrics' weight files (passed to every factory that
          has a ``nets`` argument).
        mode: the DGP mode the restoration metrics score as (default: the whole image).
        masks: whether each image's inpainting mask will be given (``evaluate --masks``):
          the mask metrics need them, and 'inpainting' then scores each mask's hole.
        masks_hint: what the refusal of a mask metric without masks tells the user.
        options: further factory arguments, each passed where a factory declares it.
        """
        self.metrics = parse_metrics(metrics)
        if nets is not None and not Path(nets).is_dir():
            raise EvaluationError(f"--nets {nets} is not a folder")
        config = {"nets": None if nets is None else str(nets), "mode": mode, **options}
        wanted: dict[str, list[str] | None] = {}
        for name in self.metrics:
            if name in RESTORATION_COLUMNS:
                wanted.setdefault(_RESTORATION, [])
                wanted[_RESTORATION].append(name)
            else:
                wanted[name] = None
        self.evaluators = []
        for name, columns in wanted.items():
            factory = registry.get(name)
            function = factory(**factory_options(factory, config))
            if registry.needs_masks(function) and not masks:
                raise EvaluationError(
                    f"metric {name!r} scores inpainting holes and needs each image's mask: "
                    + masks_hint
                )
            params = inspect.signature(function).parameters
            positional = [
                p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            required = inspect.Parameter.empty
            needs_reference = len(positional) > 1 and positional[1].default is required
            self.evaluators.append(
                _Evaluator(
                    name,
                    function,
                    None if columns is None else tuple(columns),
                    needs_reference,
                    "labels" in params,
                )
            )

    @property
    def names(self) -> list[str]:
        """The evaluators' registry names ('restoration' for the restoration columns)."""
        return [e.name for e in self.evaluators]

    def split(self, names: Collection[str]) -> tuple[Evaluators, Evaluators]:
        """(the evaluators not in ``names``, those in it), built once: e.g. the per-image
        metrics and the set metrics (registry.SET_METRICS), which compare runs apart."""
        rest, chosen = copy.copy(self), copy.copy(self)
        for part, keep in ((rest, False), (chosen, True)):
            part.evaluators = [e for e in self.evaluators if (e.name in names) == keep]
            owners = set(part.names)
            part.metrics = [m for m in self.metrics if _owner(m) in owners]
        return rest, chosen

    @property
    def needs_reference(self) -> list[str]:
        """Metric names that compare with a reference image."""
        out = []
        for e in self.evaluators:
            out += list(e.columns) if e.columns is not None else [e.name]
        return [m for m in out if self._needs(m)]

    def _needs(self, metric: str) -> bool:
        for e in self.evaluators:
            if metric == e.name or (e.columns and metric in e.columns):
                return e.needs_reference
        return False

    @property
    def needs_labels(self) -> list[str]:
        return [e.name for e in self.evaluators if e.takes_labels]

    def __call__(
        self,
        restored: Any,
        reference: Any = None,
        labels: Sequence[int | None] | None = None,
        masks: Any = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """(per-image columns {name: (N,) float64}, set values {name: float}); ``masks``
        ((N, H, W, 1), 1 = keep) go to the evaluators that take them."""
        n = len(restored)
        per_image: dict[str, np.ndarray] = {}
        per_set: dict[str, float] = {}
        for e in self.evaluators:
            if e.needs_reference and reference is None:
                raise EvaluationError(
                    f"metric {e.name!r} compares with reference images: give them (--reference)"
                )
            kwargs = {"labels": labels} if e.takes_labels else {}
            if masks is not None and registry.takes_masks(e.function):
                kwargs["masks"] = masks
            values = e.function(restored, reference, **kwargs)
            for key in e.columns if e.columns is not None else values:  # as asked
                array = np.asarray(values[key], np.float64)
                if array.ndim == 0:
                    per_set[key] = float(array)
                elif array.shape == (n,):
                    per_image[key] = array
                else:
                    raise EvaluationError(
                        f"metric {e.name!r} returned {key!r} of shape {array.shape} for {n} images"
                    )
        return per_image, per_set


# --------------------------------------------------------------------------- inputs
@dataclasses.dataclass
class Entry:
    """One image to score: its name, result file, reference file and class (or None)."""

    name: str
    result: Path
    reference: Path | None = None
    label: int | None = None
    mask: Path | None = None


def _image_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise EvaluationError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    out: dict[str, Path] = {}
    for path in files:
        if path.stem in out:
            raise EvaluationError(
                f"{folder} holds two images named {path.stem!r}: "
                f"{out[path.stem].name} and {path.name}"
            )
        out[path.stem] = path
    return out


def read_labels(path: str | os.PathLike) -> dict[str, int]:
    """A list file (``file class`` per line, as ``dgp-jax restore`` reads) -> {stem: class}."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"--labels {path} does not exist")
    labels = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 2:
            raise EvaluationError(f"{path}:{number}: expected 'file class', got {line!r}")
        try:
            labels[Path(parts[0]).stem] = int(parts[1])
        except ValueError:
            raise EvaluationError(
                f"{path}:{number}: class {parts[1]!r} is not an integer"
            ) from None
        if not 0 <= labels[Path(parts[0]).stem] < 1000:
            raise EvaluationError(
                f"{path}:{number}: class {parts[1]} is not an ImageNet class index [0, 1000)"
            )
    return labels


def known_class(value: Any) -> int | None:
    """A run's class (-1 or None: unknown) as a label, or None."""
    return None if value is None or int(value) < 0 else int(value)


def _run_entries(folder: Path) -> list[Entry] | None:
    """The done images of a restore output folder, or None if it is not one."""
    markers = sorted(folder.glob("*.done.json"))
    if not markers:
        return None
    entries = []
    for marker in markers:
        record = json.loads(marker.read_text())
        files, source = record.get("files") or [], record.get("input")
        if not files or not isinstance(source, str):  # morph pairs: nothing to score
            continue
        entries.append(
            Entry(
                record["name"],
                folder / files[0],
                Path(source),
                known_class(record.get("class_given")),
            )
        )
    return entries


def collect(
    results: str | os.PathLike,
    reference: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    masks: str | os.PathLike | None = None,
) -> list[Entry]:
    """The images to score, in name order: see the module docstring."""
    results = Path(results)
    entries = _run_entries(results) if results.is_dir() else None
    if entries is None:
        files = _image_files(results)
        files = {k: v for k, v in files.items() if not k.endswith(_RUN_SIDE_FILES)}
        entries = [Entry(stem, path) for stem, path in files.items()]
    if not entries:
        raise EvaluationError(f"no images to score in {results}")
    if reference is not None:
        originals = _image_files(Path(reference))
        missing = [e.name for e in entries if _reference_for(e, originals) is None]
        if missing:
            raise EvaluationError(
                f"no reference image in {reference} for {missing[:5]}"
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            )
        for e in entries:
            e.reference = _reference_for(e, originals)
    if labels is not None:
        table = read_labels(labels)
        for e in entries:
            stem = e.reference.stem if e.reference is not None else e.name
            e.label = table.get(e.name, table.get(stem, e.label))
    if masks is not None:
        found = _image_files(Path(masks))
        missing = [e.name for e in entries if e.name not in found]
        if missing:
            raise EvaluationError(
                f"no mask in {masks} for {missing[:5]}"
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            )
        for e in entries:
            e.mask = found[e.name]
    return sorted(entries, key=lambda e: e.name)


def _reference_for(entry: Entry, originals: dict[str, Path]) -> Path | None:
    if entry.name in originals:
        return originals[entry.name]
    if entry.reference is not None:  # a restore run: its input's stem
        return originals.get(entry.reference.stem)
    return None


def _read(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) float64 in [-1, 1]; with ``size`` (H, W) of a square result, an image of
    another size is read as the solver reads its inputs."""
    from dgp_jax.images import ImageError, load_image, read_image

    try:
        image = read_image(path)
    except (ImageError, OSError) as err:
        raise EvaluationError(f"cannot read {path}: {err}") from None
    if size is not None and image.shape[:2] != size:
        if size[0] != size[1]:
            raise EvaluationError(
                f"{path} is {image.shape[1]}x{image.shape[0]}, its result "
                f"{size[1]}x{size[0]}: sizes must match"
            )
        image = load_image(path, size[0])
    return image


def _read_mask(path: Path, size: tuple[int, int], keep: str) -> np.ndarray:
    """(H, W, 1) float64, 1 = keep: the mask file at its result's size (images.read_mask)."""
    from dgp_jax.images import ImageError, read_mask

    try:
        mask = read_mask(path, keep)
    except (ImageError, OSError) as err:
        raise EvaluationError(str(err)) from None  # it names the file
    if mask.shape[:2] != size:
        raise EvaluationError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]}, its result "
            f"{size[1]}x{size[0]}: sizes must match"
        )
    return mask


def _stack(images: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    return np.stack(images) if len({im.shape for im in images}) == 1 else images


# --------------------------------------------------------------------------- scoring
@dataclasses.dataclass
class Scores:
    """Per-image values (columns over ``entries``) and the table (means and set values)."""

    entries: list[Entry]
    per_image: dict[str, np.ndarray]
    per_set: dict[str, float]

    def table(self) -> dict[str, float]:
        means = {k: float(np.mean(v)) for k, v in self.per_image.items()}
        return {**means, **self.per_set}


def score(
    entries: Sequence[Entry],
    evaluators: Evaluators,
    mask_keep: str = "white",
    *,
    mask: np.ndarray | None = None,
) -> Scores:
    """Read the images (and masks, where the entries have them) and run every evaluator on
    the whole set. ``mask`` ((H, W, 1), 1 = keep) is every image's inpainting mask instead
    (restore --metrics: its --mask or the centre hole)."""
    if evaluators.needs_reference and any(e.reference is None for e in entries):
        raise EvaluationError(
            f"metrics {evaluators.needs_reference} compare with reference "
            "images: give them (--reference)"
        )
    if evaluators.needs_labels and any(e.label is None for e in entries):
        unlabelled = [e.name for e in entries if e.label is None]
        raise EvaluationError(
            f"metrics {evaluators.needs_labels} need each image's class: "
            f"none for {unlabelled[:5]} (--labels FILE: 'file class' "
            "per line)"
        )
    restored = [_read(e.result) for e in entries]
    reference = None
    if all(e.reference is not None for e in entries):
        pairs = zip(entries, restored, strict=True)
        reference = _stack([_read(e.reference, r.shape[:2]) for e, r in pairs])
    labels = [e.label for e in entries]
    if mask_keep not in ("white", "black"):
        raise EvaluationError(f"--mask-keep must be 'white' or 'black', got {mask_keep!r}")
    masks = None
    if mask is not None:
        sizes = sorted({r.shape[:2] for r in restored})
        if sizes != [np.shape(mask)[:2]]:
            raise EvaluationError(
                f"the mask is {np.shape(mask)[:2]}, the results {sizes}: one mask scores "
                "results of its own size"
            )
        masks = np.broadcast_to(np.asarray(mask, np.float64), (len(restored), *np.shape(mask)))
    elif entries and all(e.mask is not None for e in entries):
        masks = _stack([_read_mask(e.mask, r.shape[:2], mask_keep)
                        for e, r in zip(entries, restored, strict=True)])  # fmt: skip
    per_image, per_set = evaluators(_stack(restored), reference, labels=labels, masks=masks)
    return Scores(list(entries), per_image, per_set)


# --------------------------------------------------------------------------- outputs
def _cell(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(value)


def write_outputs(out: str | os.PathLike, scores: Scores, title: str = "") -> dict[str, Path]:
    """per_image.csv, table.md, table.csv and table.json in ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    columns = list(scores.per_image)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "result", "reference", "label", *columns])
    for i, e in enumerate(scores.entries):
        writer.writerow(
            [
                e.name,
                e.result,
                e.reference or "",
                "" if e.label is None else e.label,
                *(_cell(float(scores.per_image[c][i])) for c in columns),
            ]
        )
    paths = {
        "per_image": out / "per_image.csv",
        "markdown": out / "table.md",
        "csv": out / "table.csv",
        "json": out / "table.json",
    }
    paths["per_image"].write_text(buffer.getvalue())
    table = scores.table()
    names = list(table)
    values = " | ".join(f"{table[k]:.4f}" for k in names)
    lines = [
        "| images | " + " | ".join(names) + " |",
        "|" + " --- |" * (len(names) + 1),
        f"| {len(scores.entries)} | {values} |",
    ]
    paths["markdown"].write_text((f"{title}\n\n" if title else "") + "\n".join(lines) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["images", *names])
    writer.writerow([len(scores.entries), *(_cell(table[k]) for k in names)])
    paths["csv"].write_text(buffer.getvalue())
    summary = {
        "images": len(scores.entries),
        "metrics": table,
        "per_image_metrics": columns,
        "set_metrics": list(scores.per_set),
    }
    paths["json"].write_text(json.dumps(summary, indent=2) + "\n")
    return paths


def evaluate(
    results: str | os.PathLike,
    reference: str | os.PathLike | None = None,
    metrics: str | Sequence[str] = ("psnr", "ssim"),
    nets: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    mode: str = "reconstruct",
    masks: str | os.PathLike | None = None,
    mask_keep: str = "white",
) -> tuple[Scores, dict[str, Path]]:
    """What ``dgp-jax evaluate`` does: evaluators first, then the images, then the files
    (``out``, default ``RESULTS/evaluation``)."""
    from dgp_jax.run.folder import OutputDir
    from dgp_jax.run.settings import RunError

    if masks is not None and mode not in ("inpainting", "reconstruct"):
        raise EvaluationError(f"--masks scores inpainting holes; --mode {mode} has none")
    if masks is not None:
        mode = "inpainting"  # psnr/ssim on each mask's hole
    if mask_keep not in ("white", "black"):
        raise EvaluationError(f"--mask-keep must be 'white' or 'black', got {mask_keep!r}")
    evaluators = Evaluators(metrics, nets=nets, mode=mode, masks=masks is not None)
    entries = collect(results, reference, labels, masks)
    target = Path(out) if out is not None else Path(results) / "evaluation"
    try:  # before any scoring (an FID can take long): a folder the tables can go into
        OutputDir.check_writable(target, keep=False, flag="--out (the tables' folder)")
    except RunError as err:
        raise EvaluationError(str(err)) from None
    scores = score(entries, evaluators, mask_keep)
    return scores, write_outputs(target, scores, title=f"Metrics of {results}")
