"""Batch runs on disk: restore (and manipulate) a list of images, resumably.

``dgp-jax restore|jitter|morph|transfer`` and ``experiments/imagenet_protocol.py`` are thin
layers over this module. What it guarantees, and how:

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
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import signal
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dgp_jax.config import STAGE_FIELDS, SolverConfig
from dgp_jax.default_model import DEFAULT_MODEL
from dgp_jax.images import (
    ImageError,
    encode_image,
    image_grid,
    image_sheet,
    load_image_with_size,
    load_mask,
    read_inputs,
)

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
DEFAULT_CACHE_DIR = Path("~/.cache/dgp_jax/jax")


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


# --------------------------------------------------------------------------- jax setup
def configure_compilation_cache(cache_dir: str | None) -> Path | None:
    """Persist compiled programs across runs (JAX's compilation cache).

    ``cache_dir``: a folder, or None for ``$DGP_JAX_CACHE`` or ``~/.cache/dgp_jax/jax``;
    "none"/"off" (or an empty ``DGP_JAX_CACHE``) disables it. Every program is cached
    (min compile time 0), because even the small ones add up to seconds per batch here.
    Must run before JAX compiles anything in this process.
    """
    import jax

    if cache_dir is None:
        cache_dir = os.environ.get("DGP_JAX_CACHE", str(DEFAULT_CACHE_DIR))
    if cache_dir.strip().lower() in ("", "none", "off"):
        return None
    path = Path(cache_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"dgp-jax: compilation cache disabled ({path}: {err})", file=sys.stderr)
        return None
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    # JAX settles whether to use the cache at its first compile; reset so that the new
    # folder applies even when something was compiled already (notebooks, tests).
    compilation_cache.reset_cache()
    return path


# Processes of a batch run finish at different times; the first one done must wait for the
# rest at exit. With JAX's default (300 s) the coordinator gives up and every process still
# working is aborted (seen here: two CPU processes 20 s apart with a 5 s timeout).
SHUTDOWN_WAIT_S = 7 * 24 * 3600


def init_distributed(
    coordinator: str | None, num_processes: int | None, process_id: int | None
) -> tuple[int, int]:
    """Join a multi-process run when asked; returns (process index, process count).

    Explicit values win, then JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    JAX_PROCESS_ID. With a coordinator, ``jax.distributed.initialize`` runs (all processes
    meet before any work; JAX then aborts the others if one dies, after its heartbeat
    timeout of 100 s: finished images are on disk and a rerun resumes). Without one,
    ``num_processes`` > 1 with a ``process_id`` runs independent processes that only
    split the inputs, which is all a batch run needs. One process initialises nothing.
    """
    import jax

    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if (num_processes or 1) <= 1 and coordinator is None:
        return 0, 1
    if num_processes is None or process_id is None:
        raise RunError(
            "a multi-process run needs --num-processes and --process-id (and --coordinator "
            "HOST:PORT for jax.distributed; or JAX_NUM_PROCESSES, JAX_PROCESS_ID, "
            "JAX_COORDINATOR_ADDRESS)"
        )
    if not 0 <= process_id < num_processes:
        raise RunError(f"--process-id {process_id} is not in [0, {num_processes})")
    if coordinator is None:
        return process_id, num_processes
    jax.distributed.initialize(
        coordinator, num_processes, process_id, shutdown_timeout_seconds=SHUTDOWN_WAIT_S
    )
    return jax.process_index(), jax.process_count()


def default_batch() -> int:
    """Images solved together when ``--batch`` is not given: one per device on a CPU, where
    solving per-image generators together (grouped convolutions) is about twice as slow
    per image as one at a time (BENCHMARKS.md); 8 per device on an accelerator."""
    import jax

    devices = jax.local_devices()
    return len(devices) * (1 if devices[0].platform == "cpu" else 8)


# --------------------------------------------------------------------------- inputs
@dataclasses.dataclass(frozen=True)
class Item:
    """One input: its file, its class (-1 = unknown) and its unique output name."""

    path: Path
    cls: int
    name: str


def plan_items(entries: Sequence[tuple[Path, int]]) -> list[Item]:
    """(path, class) entries -> Items with unique names, in input order.

    The name is the file stem; stems that occur more than once get a suffix from a hash
    of the path and class, so names do not depend on the order of the list. Exact
    duplicates (same path and class) are dropped.
    """
    seen: set[tuple[str, int]] = set()
    unique: list[tuple[Path, int]] = []
    for path, cls in entries:
        if (str(path), cls) not in seen:
            seen.add((str(path), cls))
            unique.append((Path(path), int(cls)))
    stems: dict[str, int] = {}
    for path, _ in unique:
        stems[path.stem] = stems.get(path.stem, 0) + 1
    items = []
    for path, cls in unique:
        name = path.stem
        if stems[name] > 1:
            name = f"{name}-{zlib.crc32(f'{path}|{cls}'.encode()):08x}"
        items.append(Item(path, cls, name))
    return items


def take_share(items: Sequence[Any], count: int, index: int) -> list[Any]:
    """Process ``index`` of ``count`` takes items index, index + count, ..."""
    return list(items[index::count])


def image_key(seed: int, name: str) -> np.ndarray:
    """Image ``name``'s PRNG key: fold_in(PRNGKey(seed), crc32(name)), as raw uint32[2]."""
    import jax

    data = np.uint32(zlib.crc32(name.encode("utf-8")))
    return np.asarray(jax.random.fold_in(jax.random.PRNGKey(seed), data), np.uint32)


def check_classes(items: Sequence[Item], n_classes: int) -> None:
    """Every class in [-1, n_classes), else a RunError naming the images."""
    bad = [it for it in items if not -1 <= it.cls < n_classes]
    if bad:
        listed = ", ".join(f"{it.path} (class {it.cls})" for it in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise RunError(
            f"class out of range [-1, {n_classes}) for {listed}{more}: the model has "
            f"{n_classes} classes (-1 = unknown, chosen by the solver)"
        )


# --------------------------------------------------------------------------- output folder
class OutputDir:
    """The run's output folder: atomic writes, a per-process lock, temp-file cleanup."""

    def __init__(self, root: str | os.PathLike, process_index: int = 0, process_count: int = 1):
        self.root = Path(root)
        self.process_index = process_index
        self.process_count = process_count
        self._lock = None
        self._tmp_suffix = f".tmp-{process_index}"

    @staticmethod
    def check_writable(root: str | os.PathLike) -> Path:
        """Create ``root`` and write a probe file there, or raise a RunError.

        A real write, not ``os.access``: root passes every permission check, and a path
        under a regular file or on a read-only mount fails only when written.
        """
        root = Path(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / f".dgp_jax.probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise RunError(
                f"output folder {root} is not writable ({err.strerror or err}): "
                "choose another --out"
            ) from None
        return root

    def open(self) -> OutputDir:
        self.check_writable(self.root)
        lock_path = self.root / f".dgp_jax.lock.{self.process_index}"
        self._lock = open(lock_path, "w")  # noqa: SIM115 - held for the whole run
        try:
            import fcntl

            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock, the rest still works
            pass
        except OSError:
            self._lock.close()
            self._lock = None
            raise RunError(
                f"another dgp-jax run (process {self.process_index}) is writing to "
                f"{self.root}; wait for it to finish or choose another --out"
            ) from None
        # Our temp files can only be leftovers of a killed run: we hold the lock.
        for stale in self.root.rglob(f".*{self._tmp_suffix}"):
            stale.unlink(missing_ok=True)
        return self

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> OutputDir:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def path(self, rel: str) -> Path:
        return self.root / rel

    def write_bytes(self, rel: str, data: bytes) -> Path:
        """Write ``data`` to ``rel`` under the folder: temp file, fsync, rename."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}{self._tmp_suffix}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def write_text(self, rel: str, text: str) -> Path:
        return self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, obj: Any) -> Path:
        return self.write_text(rel, json.dumps(obj, indent=1, sort_keys=True) + "\n")

    def write_image(self, rel: str, x: np.ndarray) -> Path:
        return self.write_bytes(rel, encode_image(x, "PNG"))

    def summary_names(self) -> tuple[str, str]:
        if self.process_count > 1:
            return f"summary.{self.process_index}.json", f"summary.{self.process_index}.csv"
        return "summary.json", "summary.csv"


# --------------------------------------------------------------------------- run spec
@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What a run does; everything here but ``batch`` changes the results.

    label: the file-name label (the task for restore; "jitter", "morph", "transfer").
    kind: one of KINDS. manipulation: the kind's settings (stds, samples, classes, frames).
    mask: (R, R, 1) keep-mask for inpainting/hybrid, or None for the centre hole;
    mask_source describes it for config.json.
    """

    kind: str
    label: str
    config: SolverConfig
    seed: int = 0
    batch: int = 8
    observed: bool = False
    precision: str = "float32"
    mask: np.ndarray | None = dataclasses.field(default=None, compare=False)
    mask_source: str | None = None
    weights: str = ""
    manipulation: dict = dataclasses.field(default_factory=dict)

    def settings(self, model) -> dict[str, Any]:
        """The run's result-defining settings (config.json's "run" entry)."""
        mask_hash = None
        if self.mask is not None:
            mask_hash = hashlib.sha256(np.ascontiguousarray(self.mask, np.uint8)).hexdigest()
        return {
            "kind": self.kind,
            "label": self.label,
            "seed": self.seed,
            # Only when not the default, so that runs made before the option still resume.
            **({"precision": self.precision} if self.precision != "float32" else {}),
            "observed": self.observed,
            "mask": self.mask_source,
            "mask_sha256": mask_hash,
            "weights": self.weights,
            "weights_id": weights_id(model),
            "model": dataclasses.asdict(model.config),
            "manipulation": self.manipulation,
        }

    def fingerprint(self, model) -> str:
        """What results depend on. File paths are left out (weights_id and mask_sha256
        stand for their contents), so a rerun from another folder still resumes."""
        run = {k: v for k, v in self.settings(model).items() if k not in ("weights", "mask")}
        payload = {"config": self.config.to_dict(), "run": run}
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_id(model) -> str:
    """A cheap identity of the weights: every leaf's shape, dtype and first values.

    Hashing all of a 128 px BigGAN (~650 MB) would cost a second per start; the first
    values of every tensor tell two checkpoints apart just as well in practice.
    """
    import jax

    digest = hashlib.sha256()
    trees = {"G": model.generator, "D": model.discriminator}
    for path, leaf in jax.tree_util.tree_flatten_with_path(trees)[0]:
        arr = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}{arr.shape}{arr.dtype}".encode())
        digest.update(np.ascontiguousarray(arr.reshape(-1)[:256]).tobytes())
    return digest.hexdigest()[:16]


def write_run_config(out: OutputDir, spec: RunSpec, model, *, force: bool = False) -> str:
    """Write config.json (the exact SolverConfig plus the run settings) and return the
    fingerprint; refuse a folder holding results of other settings unless ``force``."""
    fingerprint = spec.fingerprint(model)
    settings = spec.settings(model)
    existing = out.path("config.json")
    if existing.is_file() and not force:
        try:
            old = json.loads(existing.read_text())
        except (OSError, ValueError):
            old = {}
        old_fp = old.get("run", {}).get("fingerprint")
        if old_fp is not None and old_fp != fingerprint:
            new_flat = {**spec.config.to_dict(), **settings}
            old_flat = {**{k: v for k, v in old.items() if k != "run"}, **old.get("run", {})}
            differ = sorted(
                k for k in new_flat if json.dumps(new_flat[k], default=str, sort_keys=True)
                != json.dumps(old_flat.get(k), default=str, sort_keys=True)
            )  # fmt: skip
            raise RunError(
                f"{out.root} holds results of other settings (differing: "
                f"{', '.join(differ) or 'weights'}); rerun with the same settings to resume, "
                "choose another --out, or pass --force to redo everything there"
            )
    body = {**spec.config.to_dict(), "run": {**settings, "fingerprint": fingerprint}}
    out.write_json("config.json", body)
    return fingerprint


# --------------------------------------------------------------------------- progress
class Progress:
    """One tqdm line: images done/total, current stage, solver steps/s and ETA."""

    def __init__(self, label: str, total_images: int, done_images: int, total_batches: int,
                 steps_per_batch: int, num_stages: int, enabled: bool = True):  # fmt: skip
        from tqdm.auto import tqdm

        self.label = label
        self.total_images = total_images
        self.done_images = done_images
        self.num_stages = num_stages
        self.steps_per_batch = max(steps_per_batch, 1)
        interactive = enabled and sys.stderr.isatty()
        self.bar = tqdm(
            total=total_batches * self.steps_per_batch, unit="step", disable=not enabled,
            dynamic_ncols=True, file=sys.stderr,
            mininterval=0.2 if interactive else 5.0, leave=True,
            bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} steps "
                       "[{elapsed}<{remaining}, {rate_fmt}]{postfix}",
        )  # fmt: skip
        self._describe()

    def _describe(self) -> None:
        self.bar.set_description_str(
            f"{self.label}: images {self.done_images}/{self.total_images}", refresh=False
        )

    def plan(self, remaining_batches: int) -> None:
        """Re-estimate the step total: steps so far plus the batches still to solve."""
        self.bar.total = self.bar.n + remaining_batches * self.steps_per_batch
        self.bar.refresh()

    def phase(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=False)

    def step(self, step: int, total: int, info: dict) -> None:
        import jax

        # Wait for the step, or the rate would measure dispatch, not compute.
        jax.block_until_ready(info["record"]["loss"])
        if step == 1 or info["stage"] != getattr(self, "_stage", None):
            self._stage = info["stage"]
            self.bar.set_postfix_str(f"stage {info['stage'] + 1}/{self.num_stages}",
                                     refresh=False)  # fmt: skip
        self.bar.update(1)

    def finished(self, count: int) -> None:
        self.done_images += count
        self._describe()
        self.bar.refresh()

    def write(self, message: str) -> None:
        self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def _batch_size(spec: RunSpec, share: int) -> int:
    return max(1, min(spec.batch, share))


def _progress(spec: RunSpec, total: int, done: int, to_solve: int, batch: int,
              enabled: bool) -> Progress:  # fmt: skip
    batches = math.ceil(to_solve / batch)
    return Progress(spec.label, total, done, batches, spec.config.total_steps,
                    spec.config.num_stages, enabled=enabled and to_solve > 0)  # fmt: skip


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

    res = model.config.resolution
    degradation = _degradation(spec, res)
    queue = list(items)
    while queue:
        loaded: list[tuple[Item, np.ndarray, tuple[int, int]]] = []
        while queue and len(loaded) < batch_size:
            item = queue.pop(0)
            try:
                image, size = load_image_with_size(item.path, res)
            except (ImageError, OSError) as err:
                failed[item.name] = str(err)
                progress.write(f"skipped {item.path}: {err}")
                continue
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
            result = dgp_jax.restore(
                model, images, classes, spec.config, keys, degradation=degradation,
                observed=spec.observed, mesh=mesh,
                callback=progress.step, precision=spec.precision,
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
        seconds = (time.perf_counter() - start) / count
        yield [
            Solved(item, image, size, _pick(result, i), seconds)
            for i, (item, image, size) in enumerate(loaded)
        ]


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
    if spec.mask is not None:
        # restore scores inpainting on the reference's centre box, which a custom mask does
        # not use: score the whole image instead.
        values = metrics_lib.restoration_metrics(
            solved.result.images, solved.original[None], "reconstruct"
        )
        region = "whole image (custom mask)"
    if values is None:
        return None, None
    return {k: float(np.asarray(values[k]).reshape(-1)[0]) for k in METRIC_NAMES}, region


def _done_marker(name: str, label: str) -> str:
    return f"{name}_{label}.done.json"


def is_done(out: OutputDir, name: str, label: str, fingerprint: str) -> bool:
    """Done = marker of this run's settings, and every file it lists still there."""
    marker = out.path(_done_marker(name, label))
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if record.get("fingerprint") != fingerprint:
        return False
    return all(out.path(f).is_file() for f in record.get("files", []))


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
    out.write_image(files[0], res.images[0])
    out.write_image(files[1], res.degraded[0])
    # input | degraded | G's output at the end of each stage (the reconstruction process,
    # as the reference's sheet shows it) | result.
    stages = [] if res.stage_images is None else list(res.stage_images[:-1, 0])
    sheet = [res.degraded[0], *stages, res.images[0]]
    out.write_image(files[2], image_sheet(sheet if spec.observed else [solved.original] + sheet))
    metrics, region = _metrics(solved, spec)
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
    out.write_json(_done_marker(name, label), record)
    return record


# --------------------------------------------------------------------------- summaries
def write_summary(out: OutputDir, spec: RunSpec, names: Sequence[tuple[str, str]],
                  failed: dict[str, str], fingerprint: str) -> Path:  # fmt: skip
    """summary(.<process>).json / .csv over this process's share, from the done markers
    (so images finished by an earlier, interrupted run are included)."""
    records, pending = {}, []
    for name, _ in names:
        if is_done(out, name, spec.label, fingerprint):
            records[name] = json.loads(out.path(_done_marker(name, spec.label)).read_text())
        elif name not in failed:
            pending.append(name)
    scored = [r["metrics"] for r in records.values() if r.get("metrics")]
    mean = {k: float(np.mean([m[k] for m in scored])) for k in METRIC_NAMES} if scored else None
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
        "images": records,
        "failures": {n: {"input": sources.get(n), "error": e} for n, e in failed.items()},
    }
    json_name, csv_name = out.summary_names()
    out.write_json(json_name, summary)
    buffer = io.StringIO()
    fields = ["name", "input", "status", "class_given", "class", *METRIC_NAMES, "seconds",
              "error"]  # fmt: skip
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for name, source in names:
        if name in records:
            r = records[name]
            row = {"name": name, "input": source, "status": "done",
                   "class_given": r.get("class_given"), "class": r.get("class"),
                   "seconds": r.get("seconds"), **(r.get("metrics") or {})}  # fmt: skip
        elif name in failed:
            row = {"name": name, "input": source, "status": "failed", "error": failed[name]}
        else:
            row = {"name": name, "input": source, "status": "pending"}
        writer.writerow(row)
    out.write_text(csv_name, buffer.getvalue())
    return out.path(json_name)


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
        report.summary = write_summary(out, spec, names, report.failed, fingerprint)
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
                    out.write_image(f"{s.item.name}_{spec.label}.png", s.result.images[0])
            for a, b, name in pending:
                if a.name not in solved or b.name not in solved:
                    bad = [n for n in (a.name, b.name) if n in image_failed]
                    report.failed[name] = "; ".join(image_failed[n] for n in bad)
                    continue
                ra, rb = solved[a.name].result, solved[b.name].result
                images = manipulate.morph(model, ra, 0, rb, 0, alphas)
                files = []
                for k, frame in enumerate(images):
                    files.append(f"{name}_{spec.label}_frames/frame{k:02d}.png")
                    out.write_image(files[-1], frame)
                files.append(f"{name}_{spec.label}_grid.png")
                out.write_image(files[-1], image_sheet(list(images)))
                record = {"name": name, "label": spec.label, "input": [str(a.path), str(b.path)],
                          "alphas": alphas, "metrics": None, "files": files,
                          "fingerprint": fingerprint}  # fmt: skip
                out.write_json(_done_marker(name, spec.label), record)
                report.done.append(name)
                bar.finished(1)
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        bar.close()
        report.summary = write_summary(out, spec, names, report.failed, fingerprint)
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
    batch: int = 0  # 0 = default_batch()
    precision: str = "float32"
    seed: int = 0
    force: bool = False
    progress: bool = True
    process_index: int = 0
    process_count: int = 1
    manipulation: dict = dataclasses.field(default_factory=dict)


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
        if not settings.get("stds") or any(s < 0 for s in settings["stds"]):
            raise RunError(f"--stds must be one or more values >= 0, got {settings.get('stds')}")
        if settings.get("samples", 0) < 1:
            raise RunError(f"--samples must be >= 1, got {settings.get('samples')}")
    elif kind == "morph" and settings.get("frames", 0) < 2:
        raise RunError(f"--frames must be >= 2, got {settings.get('frames')}")
    elif kind == "transfer":
        classes = settings.get("classes") or []
        bad = [c for c in classes if not 0 <= c < n_classes]
        if not classes or bad:
            raise RunError(f"--classes {bad or classes} out of range [0, {n_classes})")


def execute(options: RunOptions, model=None, *, mesh=None) -> Report:
    """Run one command: checks first (RunError before any work), then the batches."""
    if options.kind not in KINDS:
        raise RunError(f"unknown kind {options.kind!r}")
    if options.batch < 0:
        raise RunError(f"--batch must be >= 1 (or 0, the default), got {options.batch}")
    if options.precision not in PRECISIONS:
        raise RunError(f"--precision must be one of {', '.join(PRECISIONS)}")
    task = canonical_task(options.task)
    OutputDir.check_writable(options.out)
    try:
        entries = read_inputs(options.inputs)
    except (OSError, ValueError) as err:
        raise RunError(str(err)) from None
    if options.class_index is not None:
        entries = [(p, options.class_index) for p, _ in entries]
    # Results written into an input folder would become inputs of the next (resumed) run.
    out_root = Path(options.out).resolve()
    if any(Path(i).is_dir() and Path(i).resolve() == out_root for i in options.inputs):
        raise RunError(f"--out {options.out} is an input folder: choose another folder")
    items = plan_items(entries)
    if not items:
        raise RunError(f"no input images found in {' '.join(options.inputs)}")
    if options.kind == "morph" and len(items) < 2:
        raise RunError("morph needs at least two input images")

    model = model if model is not None else load_model(options.weights)
    res = model.config.resolution
    config = build_config(task, res, options.preset, options.sets, options.factor)
    check_classes(items, model.config.n_classes)
    mask = None
    if options.mask is not None:
        if config.dgp_mode not in ("inpainting", "hybrid"):
            raise RunError(f"--mask applies to the tasks inpainting and hybrid, not {task}")
        try:
            mask = load_mask(options.mask, res, options.mask_keep)
        except (ImageError, OSError, ValueError) as err:
            raise RunError(str(err)) from None
    _check_manipulation(options.kind, options.manipulation, model.config.n_classes)
    label = task if options.kind == "restore" else options.kind
    spec = RunSpec(
        kind=options.kind, label=label, config=config, seed=options.seed,
        batch=options.batch or default_batch(), precision=options.precision,
        observed=options.observed, mask=mask,
        mask_source=None if mask is None else f"{options.mask} (keep {options.mask_keep})",
        weights=str(options.weights or DEFAULT_MODEL), manipulation=dict(options.manipulation),
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
