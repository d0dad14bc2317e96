"""What a run's results depend on (RunSpec, its fingerprint, config.json) and the
per-image done markers that make runs resumable."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from typing import Any

import numpy as np

from dgp_jax.config import SolverConfig
from dgp_jax.run.folder import OutputDir
from dgp_jax.run.settings import RunError

# --------------------------------------------------------------------------- run spec
# SolverConfig fields that set speed and memory, not results (as RunSpec's batch and
# lowering do): each is fingerprinted at a fixed value, so that another choice resumes the
# same results. select_batch's value is its default before 2026-11-30 (16 candidates per
# image), so folders written then still resume.
SPEED_ONLY_FIELDS = {"select_batch": 16}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What a run does; everything here but ``batch`` and ``lowering`` (and the config's
    SPEED_ONLY_FIELDS) changes the results (those change only float rounding: see README,
    "Deterministic").

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
    lowering: str = "auto"
    mask: np.ndarray | None = dataclasses.field(default=None, compare=False)
    mask_source: str | None = None
    weights: str = ""
    manipulation: dict = dataclasses.field(default_factory=dict)
    # dgp_jax.evaluate.Evaluators of restore --metrics: summary columns, computed from the
    # written files; they do not change the results, so not part of the fingerprint.
    extra_metrics: Any = dataclasses.field(default=None, compare=False)
    # VGG16's parameters when config.ftr_type is "VGG" or "johnson" (their identity is in
    # the fingerprint, as the BigGAN's is).
    vgg: Any = dataclasses.field(default=None, compare=False)

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
            **({"vgg_id": tree_id({"vgg": self.vgg})} if self.vgg is not None else {}),
            "model": dataclasses.asdict(model.config),
            "manipulation": self.manipulation,
        }

    def fingerprint(self, model) -> str:
        """What results depend on. File paths are left out (weights_id and mask_sha256
        stand for their contents), so a rerun from another folder still resumes."""
        run = {k: v for k, v in self.settings(model).items() if k not in ("weights", "mask")}
        payload = {"config": {**self.config.to_dict(), **SPEED_ONLY_FIELDS}, "run": run}
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_id(model) -> str:
    """The identity of the weights: sha256 of every leaf's path, shape, dtype and values.

    Every value, not a sample: a run resumed with weights that differ anywhere (one
    fine-tuned layer, one edited value) must be refused. sha256 runs at about 1 GB/s here
    (SHA extensions), so the paper's 128 px model (G and D, ~640 MB in float32) costs about
    0.6 s per start, against hours of solving.
    """
    return tree_id({"G": model.generator, "D": model.discriminator})


def tree_id(trees) -> str:
    """:func:`weights_id` of any tree of arrays."""
    import jax

    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(trees)[0]:
        arr = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}{arr.shape}{arr.dtype}".encode())
        digest.update(memoryview(arr).cast("B"))
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
                k for k in new_flat if k not in SPEED_ONLY_FIELDS
                and json.dumps(new_flat[k], default=str, sort_keys=True)
                != json.dumps(old_flat.get(k), default=str, sort_keys=True)
            )  # fmt: skip
            raise RunError(
                f"{out.root} holds results of other settings (differing: "
                f"{', '.join(differ) or 'weights'}); rerun with the same settings to resume, "
                "choose another --out, or pass --force to redo everything there"
            )
    if force:
        remove_other_results(out, fingerprint)
    # batch and lowering are recorded, not fingerprinted: another --batch or --lowering
    # resumes the same results.
    run = {**settings, "batch": spec.batch, "lowering": spec.lowering, "fingerprint": fingerprint}
    body = {**spec.config.to_dict(), "run": run}
    out.write_json("config.json", body)
    return fingerprint


def done_marker(name: str, label: str) -> str:
    return f"{name}_{label}.done.json"


def is_done(out: OutputDir, name: str, label: str, fingerprint: str) -> bool:
    """Done = marker of this run's settings, and every file it lists still there."""
    marker = out.path(done_marker(name, label))
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if record.get("fingerprint") != fingerprint:
        return False
    return all(out.path(f).is_file() for f in record.get("files", []))


def remove_other_results(out: OutputDir, fingerprint: str) -> list[str]:
    """--force: delete the results of other settings (the files their done markers list,
    the markers, the summaries), so that none is left beside the new ones."""
    removed = []
    for marker in sorted(out.root.glob("*.done.json")):
        try:
            record = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue
        if record.get("fingerprint") == fingerprint:
            continue
        for rel in record.get("files", []):
            path = out.path(rel)
            if path.is_file() and out.root.resolve() in path.resolve().parents:
                path.unlink()
                removed.append(rel)
                if path.parent != out.root:
                    with contextlib.suppress(OSError):  # a frames folder left empty
                        path.parent.rmdir()
        marker.unlink()
        removed.append(marker.name)
    for summary in [*out.root.glob("summary*.json"), *out.root.glob("summary*.csv")]:
        summary.unlink()
        removed.append(summary.name)
    return removed
