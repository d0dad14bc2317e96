"""Batch runs on disk: restore (and manipulate) a list of images, resumably.

``dgp-jax restore|jitter|morph|transfer`` and ``experiments/imagenet_protocol.py`` are thin
layers over this module, which puts together the parts in ``dgp_jax.run`` (settings,
setup, plan, folder, markers, progress, solving, results; the names used elsewhere are
re-exported here). What a run guarantees, and how:

* **Every result file is whole.** Files are written to a hidden temp name in the same
  folder (``.<file>.tmp-<process>``), flushed to disk and renamed over the final name, so a
  kill leaves the old file or the new one, never half of one. Temp files of a killed run
  are removed when the next run of the same process opens the folder (it holds a lock, so
  no live writer owns them).
* **Resumable.** Per image, ``<name>_<label>.done.json`` is written *last*, after every
  other file of that image. A run skips images whose marker exists, matches this run's
  settings (a fingerprint) and whose listed files exist; anything else is redone. A run
  with other settings (config, seed, task, mask, weights) refuses a folder that holds
  results of different settings instead of mixing them (``force`` redoes everything).
* **Deterministic.** Image i's PRNG key is ``fold_in(PRNGKey(seed), crc32(name))``, with
  ``name`` its output name (the file stem, made unique), not its position in a batch, so
  a resumed run, another ``batch`` or another process split gives the same key. With the
  same batch shape the results are bitwise the same (tested: a resumed run, other batch
  partners, a two-process split); another ``--batch`` can differ by float rounding,
  because XLA may vectorise another shape differently.
* **Failures stay local.** An unreadable image (or a batch whose solve raises) is reported,
  listed in the summary and skipped; the others finish. Setup errors (unwritable folder,
  wrong mask size, class out of range, model/preset resolution mismatch) are ``RunError``s
  raised before any image is solved.
* **Scale-out.** With several JAX processes, process p takes items p, p + n, p + 2n, ...
  of the full list (names are assigned on the full list, so all processes agree), writes
  its own images and ``summary.<p>.json`` / ``.csv``.

Compiled programs: ``configure_compilation_cache`` turns on JAX's persistent cache, so
a second run (or a resumed one) loads the solver's programs instead of compiling them.
All batches of a run have one shape (the last is padded), so they share one program.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
from collections.abc import Iterator, Sequence

from dgp_jax.checks import is_nonnegative_number
from dgp_jax.config import SolverConfig
from dgp_jax.default_model import DEFAULT_MODEL
from dgp_jax.degradations import MASK_MODES
from dgp_jax.images import ImageError, image_sheet, load_mask
from dgp_jax.run.folder import OutputDir
from dgp_jax.run.markers import RunSpec, done_marker, is_done, weights_id, write_run_config
from dgp_jax.run.plan import (
    Item,
    check_classes,
    image_key,
    plan_inputs,
    plan_items,
    refuse_output_among_inputs,
    take_share,
)
from dgp_jax.run.progress import Progress, _batch_size, _progress
from dgp_jax.run.results import write_solved, write_summary
from dgp_jax.run.settings import (
    KINDS,
    METRIC_NAMES,
    PRECISIONS,
    TASKS,
    RunError,
    build_config,
    canonical_task,
    default_preset,
    parse_sets,
    parse_value,
)
from dgp_jax.run.setup import (
    DEFAULT_CACHE_DIR,
    SHUTDOWN_WAIT_S,
    configure_compilation_cache,
    default_batch,
    init_distributed,
)
from dgp_jax.run.solving import Report, Solved, solve_items

__all__ = [
    "DEFAULT_CACHE_DIR",
    "DEFAULT_MODEL",
    "KINDS",
    "METRIC_NAMES",
    "PRECISIONS",
    "SHUTDOWN_WAIT_S",
    "TASKS",
    "Item",
    "OutputDir",
    "Progress",
    "Report",
    "RunError",
    "RunOptions",
    "RunSpec",
    "Solved",
    "SolverConfig",
    "build_config",
    "canonical_task",
    "check_classes",
    "configure_compilation_cache",
    "default_batch",
    "default_preset",
    "done_marker",
    "execute",
    "image_key",
    "init_distributed",
    "is_done",
    "load_model",
    "parse_sets",
    "parse_value",
    "plan_items",
    "run_items",
    "run_morph",
    "sigterm_as_interrupt",
    "solve_items",
    "take_share",
    "weights_id",
    "write_run_config",
    "write_solved",
    "write_summary",
]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, a scheduler's stop) ends the run like Ctrl-C: the summary is still
    written and finished results are kept."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- runs
def run_items(
    model,
    items: Sequence[Item],
    out: OutputDir,
    spec: RunSpec,
    fingerprint: str,
    *,
    progress: bool = True,
    mesh=None,
) -> Report:
    """Solve and write every item of this process's share that is not done yet.

    For ``spec.kind`` restore, jitter and transfer (morph: ``run_morph``). On Ctrl-C /
    SIGTERM the summary is written, ``report.interrupted`` is set and the run returns.
    """
    report = Report(total=len(items))
    todo = []
    for item in items:
        if is_done(out, item.name, spec.label, fingerprint):
            report.skipped.append(item.name)
        else:
            todo.append(item)
    batch_size = _batch_size(spec, len(items))
    bar = _progress(spec, len(items), len(report.skipped), len(todo), batch_size, progress)
    try:
        with sigterm_as_interrupt():
            for batch in solve_items(model, todo, spec, bar, report.failed,
                                     batch_size=batch_size, mesh=mesh):  # fmt: skip
                for solved in batch:
                    write_solved(out, model, spec, solved, fingerprint)
                    report.done.append(solved.item.name)
                bar.finished(len(batch))
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        bar.close()
        names = [(it.name, str(it.path)) for it in items]
        report.summary = write_summary(
            out, spec, names, report.failed, fingerprint, model.config.resolution
        )
    return report


def run_morph(
    model,
    items: Sequence[Item],
    out: OutputDir,
    spec: RunSpec,
    fingerprint: str,
    *,
    process_index: int = 0,
    process_count: int = 1,
    progress: bool = True,
    mesh=None,
) -> Report:
    """Morph consecutive inputs (1 -> 2, 2 -> 3, ...): every generator weight, latent and
    class embedding interpolated (dgp_jax.manipulate.morph). Pairs are split across
    processes; each process solves the images its pending pairs need.

    Per pair: ``<a>_to_<b>_morph_frames/frameNN.png``, ``<a>_to_<b>_morph_grid.png`` and
    the done marker; per solved image ``<name>_morph.png`` (its reconstruction).
    """
    from dgp_jax import manipulate

    frames = spec.manipulation["frames"]
    alphas = [i / (frames - 1) for i in range(frames)] if frames > 1 else [0.0]
    pairs = take_share(list(zip(items[:-1], items[1:], strict=True)), process_count,
                       process_index)  # fmt: skip
    names = [(f"{a.name}_to_{b.name}", f"{a.path} -> {b.path}") for a, b in pairs]
    report = Report(total=len(pairs))
    pending = []
    for (a, b), (name, _) in zip(pairs, names, strict=True):
        if is_done(out, name, spec.label, fingerprint):
            report.skipped.append(name)
        else:
            pending.append((a, b, name))
    needed = list({it.name: it for a, b, _ in pending for it in (a, b)}.values())
    batch_size = _batch_size(spec, len({it.name for pair in pairs for it in pair}))
    bar = _progress(spec, len(pairs), len(report.skipped), len(needed), batch_size, progress)
    solved: dict[str, Solved] = {}
    image_failed: dict[str, str] = {}
    try:
        with sigterm_as_interrupt():
            for batch in solve_items(model, needed, spec, bar, image_failed,
                                     batch_size=batch_size, mesh=mesh):  # fmt: skip
                for s in batch:
                    solved[s.item.name] = s
                    # The image's reconstruction (its final state rendered, as the frames).
                    out.write_image(f"{s.item.name}_{spec.label}.png", s.result.images[0])
            for a, b, name in pending:
                if a.name not in solved or b.name not in solved:
                    bad = [n for n in (a.name, b.name) if n in image_failed]
                    report.failed[name] = "; ".join(image_failed[n] for n in bad)
                    continue
                ra, rb = solved[a.name].result, solved[b.name].result
                images = manipulate.morph(model, ra, 0, rb, 0, alphas)
                files = [f"{a.name}_{spec.label}.png", f"{b.name}_{spec.label}.png"]
                for k, frame in enumerate(images):
                    files.append(f"{name}_{spec.label}_frames/frame{k:02d}.png")
                    out.write_image(files[-1], frame)
                files.append(f"{name}_{spec.label}_grid.png")
                out.write_image(files[-1], image_sheet(list(images)))
                record = {"name": name, "label": spec.label, "input": [str(a.path), str(b.path)],
                          "alphas": alphas, "metrics": None, "files": files,
                          "fingerprint": fingerprint}  # fmt: skip
                out.write_json(done_marker(name, spec.label), record)
                report.done.append(name)
                bar.finished(1)
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        bar.close()
        report.summary = write_summary(
            out, spec, names, report.failed, fingerprint, model.config.resolution
        )
    return report


# --------------------------------------------------------------------------- one command
@dataclasses.dataclass
class RunOptions:
    """A whole command's options (what ``dgp-jax restore|jitter|morph|transfer`` parse)."""

    kind: str
    inputs: list[str]
    weights: str
    out: str
    task: str = "reconstruct"
    preset: str | None = None
    sets: list[str] = dataclasses.field(default_factory=list)
    class_index: int | None = None
    mask: str | None = None
    mask_keep: str = "white"
    factor: int | None = None
    observed: bool = False
    batch: int | None = None  # None = default_batch()
    precision: str = "float32"
    lowering: str = "auto"
    seed: int = 0
    force: bool = False
    progress: bool = True
    process_index: int = 0
    process_count: int = 1
    manipulation: dict = dataclasses.field(default_factory=dict)
    metrics: str | Sequence[str] | None = None  # restore: extra summary columns
    nets: str | None = None  # weight files: the metrics', and VGG16 for ftr_type VGG/johnson


def load_model(weights: str | None):
    """The BigGAN (with its discriminator) from a dgp_jax folder or a G_*.pth file; with no
    ``weights``, the model shipped with dgp_jax."""
    import warnings

    import dgp_jax

    if not weights:
        try:
            return dgp_jax.load_default_biggan()
        except (OSError, ValueError) as err:
            raise RunError(str(err)) from None
    with warnings.catch_warnings():
        # orbax warns that it reads the saved sharding; that is what we want.
        warnings.filterwarnings("ignore", message="Sharding info not provided")
        try:
            model = dgp_jax.load_biggan(weights)
        except FileNotFoundError as err:
            raise RunError(str(err)) from None
    if model.discriminator is None:
        raise RunError(
            f"{weights} has no discriminator, which DGP needs: convert G and D together, or "
            "put D_<tag>.pth beside G_ema_<tag>.pth"
        )
    return model


def _check_manipulation(kind: str, settings: dict, n_classes: int) -> None:
    if kind == "jitter":
        stds = settings.get("stds")
        if not stds or not all(is_nonnegative_number(s) for s in stds):
            raise RunError(f"--stds must be one or more finite values >= 0, got {stds}")
        if settings.get("samples", 0) < 1:
            raise RunError(f"--samples must be >= 1, got {settings.get('samples')}")
    elif kind == "morph" and settings.get("frames", 0) < 2:
        raise RunError(f"--frames must be >= 2, got {settings.get('frames')}")
    elif kind == "transfer":
        classes = settings.get("classes") or []
        bad = [c for c in classes if not 0 <= c < n_classes]
        if not classes or bad:
            raise RunError(f"--classes {bad or classes} out of range [0, {n_classes})")


def _extra_metrics(options: RunOptions, items: Sequence[Item], *, holes: bool):
    """restore --metrics: the evaluators, built (weights read) before any image is solved;
    ``holes``: whether the task has an inpainting mask for the mask metrics."""
    if not options.metrics:
        return None
    if options.kind != "restore":
        raise RunError(f"--metrics applies to restore, not {options.kind}")
    from dgp_jax.evaluate import Evaluators

    hint = (f"the task {canonical_task(options.task)} has none (inpainting and hybrid have: "
            "their --mask, or the centre hole)")  # fmt: skip
    try:
        evaluators = Evaluators(options.metrics, nets=options.nets, masks=holes, masks_hint=hint)
    except (OSError, ValueError) as err:
        raise RunError(str(err)) from None
    if options.observed and evaluators.needs_reference:
        raise RunError(f"--metrics {evaluators.needs_reference} compare with the original "
                       "images, which --observed runs do not have")  # fmt: skip
    unlabelled = [it.name for it in items if it.cls is None or it.cls < 0]
    if evaluators.needs_labels and unlabelled:
        raise RunError(f"--metrics {evaluators.needs_labels} need each image's class (a list "
                       f"file 'path class' or --class): none for {unlabelled[:5]}")  # fmt: skip
    return evaluators


def _perceptual_net(options: RunOptions, config, dtype):
    """VGG16 from --nets when the feature loss is a VGG one (--set ftr_type=VGG|johnson)."""
    if config.ftr_type == "Discriminator":
        return None
    from dgp_jax.baselines.dgp_vgg import VGG16_FILE
    from dgp_jax.metrics.weights import require
    from dgp_jax.nets import vgg

    try:
        path = require(options.nets, VGG16_FILE, f"ftr_type={config.ftr_type}")
        return vgg.load_params(path, dtype=dtype)
    except (OSError, ValueError) as err:
        raise RunError(str(err)) from None


def execute(options: RunOptions, model=None, *, mesh=None) -> Report:
    """Run one command: checks first (RunError before any work), then the batches."""
    if options.kind not in KINDS:
        raise RunError(f"unknown kind {options.kind!r}")
    if options.batch is not None and options.batch < 1:
        raise RunError(f"--batch must be >= 1, got {options.batch}")
    if options.precision not in PRECISIONS:
        raise RunError(f"--precision must be one of {', '.join(PRECISIONS)}")
    task = canonical_task(options.task)
    # Every check before the folder is made: a refused run leaves nothing behind.
    OutputDir.check_writable(options.out, keep=False)
    refuse_output_among_inputs(options.out, options.inputs)
    items = plan_inputs(options.inputs, options.class_index)
    if options.kind == "morph" and len(items) < 2:
        raise RunError("morph needs at least two input images")

    model = model if model is not None else load_model(options.weights)
    res = model.config.resolution
    config = build_config(task, res, options.preset, options.sets, options.factor,
                          kind=options.kind)  # fmt: skip
    check_classes(items, model.config.n_classes)
    mask = None
    if options.mask is not None:
        if config.dgp_mode not in MASK_MODES:
            raise RunError(f"--mask applies to the tasks inpainting and hybrid, not {task}")
        try:
            mask = load_mask(options.mask, res, options.mask_keep)
        except (ImageError, OSError, ValueError) as err:
            raise RunError(str(err)) from None
    _check_manipulation(options.kind, options.manipulation, model.config.n_classes)
    extra_metrics = _extra_metrics(options, items, holes=config.dgp_mode in MASK_MODES)
    vgg = _perceptual_net(options, config, model.dtype)
    label = task if options.kind == "restore" else options.kind
    spec = RunSpec(
        kind=options.kind, label=label, config=config, seed=options.seed,
        batch=options.batch or default_batch(), precision=options.precision,
        lowering=options.lowering,
        observed=options.observed, mask=mask,
        mask_source=None if mask is None else f"{options.mask} (keep {options.mask_keep})",
        weights=str(options.weights or DEFAULT_MODEL), manipulation=dict(options.manipulation),
        extra_metrics=extra_metrics, vgg=vgg,
    )  # fmt: skip

    with OutputDir(options.out, options.process_index, options.process_count) as out:
        fingerprint = write_run_config(out, spec, model, force=options.force)
        if options.kind == "morph":
            return run_morph(
                model, items, out, spec, fingerprint, process_index=options.process_index,
                process_count=options.process_count, progress=options.progress, mesh=mesh,
            )  # fmt: skip
        share = take_share(items, options.process_count, options.process_index)
        return run_items(model, share, out, spec, fingerprint, progress=options.progress,
                         mesh=mesh)  # fmt: skip
