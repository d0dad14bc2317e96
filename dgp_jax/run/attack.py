"""``dgp-jax attack``: adversarial copies of input images, for ``--task defense``.

Each input is read as the solver reads it (centre crop, resize to ``resolution``), attacked
against ResNet-50 (``dgp_jax.attacks``) and written as ``OUT/<name>.png``. The attack's label
is the input's class where the input gives one (a list file), else the classifier's answer
on the clean image. ``OUT/labels.lst`` holds ``<name>.png class`` per image for
``dgp-jax evaluate --labels`` (not ``.txt``: a folder's ``*.txt`` files give classes to
``dgp-jax restore``, and the defended generator must not be told the answer).
``OUT/attack.json`` records the settings and the top-1 accuracy on the clean crops and on
the written (8-bit, rounded) attacked images, both through the metric's own eval transform.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import jax
import numpy as np

from dgp_jax.batching import pad_to
from dgp_jax.images import ImageError, encode_uint8, load_image
from dgp_jax.run.folder import OutputDir
from dgp_jax.run.plan import check_classes, plan_inputs
from dgp_jax.run.settings import RunError

METHODS = ("pgd", "fgsm")


def parse_eps(text: str, flag: str = "--eps") -> float:
    """``8/255`` or ``0.03`` -> a positive float (pixel units in [0, 1])."""
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise RunError(
            f"{flag} must be a number or a fraction such as 8/255, got {text!r}"
        ) from None
    if not 0 < value <= 1:
        raise RunError(f"{flag} must be in (0, 1] (pixel units), got {text}")
    return value


@dataclasses.dataclass(frozen=True)
class AttackOptions:
    inputs: Sequence[str]
    out: str
    nets: str
    resolution: int
    method: str = "pgd"
    eps: float = 8 / 255
    steps: int = 10
    step_size: float | None = None
    seed: int = 0
    batch: int = 8


def run_attack(options: AttackOptions) -> dict:
    """Attack every input; returns what attack.json holds."""
    from dgp_jax import attacks
    from dgp_jax.metrics import classification, load_resnet50

    if options.method not in METHODS:
        raise RunError(f"--method must be one of {', '.join(METHODS)}, got {options.method!r}")
    if options.resolution < 1 or options.steps < 1 or options.batch < 1:
        raise RunError("--resolution, --steps and --batch must be positive")
    out_root = Path(options.out)
    if out_root.is_dir() and any(out_root.iterdir()):
        raise RunError(f"--out {options.out} is not empty: choose a new folder")
    OutputDir.check_writable(options.out, keep=False)
    items = plan_inputs(options.inputs)
    check_classes(items, 1000, owner="ResNet-50", unknown="labelled by its clean prediction")
    # Every input read before anything is written: an unreadable one stops the run with
    # its name and leaves no half-written folder.
    try:
        crops = [load_image(i.path, options.resolution).astype(np.float32) for i in items]
    except (ImageError, OSError) as err:
        raise RunError(str(err)) from None
    classifier = load_resnet50(options.nets)  # names the missing file, URL and metric

    steps = 1 if options.method == "fgsm" else options.steps
    if options.method == "fgsm":
        step_size = options.eps
    elif options.step_size is None:
        step_size = attacks.default_step_size(options.eps, steps)
    else:
        step_size = options.step_size
    logits_fn = attacks.resnet50_on_images(options.resolution, options.resolution)
    key = jax.random.PRNGKey(options.seed) if options.method == "pgd" else None
    out = OutputDir(options.out)
    rows, clean_hits, attacked_hits = [], 0, 0
    for start in range(0, len(items), options.batch):
        chunk = items[start : start + options.batch]
        images = np.stack(crops[start : start + options.batch])
        clean = classifier.logits(images).argmax(1)
        labels = np.array([i.cls if i.cls >= 0 else c for i, c in zip(chunk, clean, strict=True)])
        chunk_key = None
        if key is not None:
            key, chunk_key = jax.random.split(key)
        # A short last batch is filled up with copies of its last image, so that the attack
        # runs the program compiled for the full batches instead of compiling another (the
        # images do not interact: each one's gradient is its own loss's).
        full = options.batch if len(items) > options.batch else len(chunk)
        adversarial = attacks.pgd_linf(
            logits_fn, classifier.params, pad_to(images, full), pad_to(labels, full),
            eps=options.eps, steps=steps, step_size=step_size, key=chunk_key,
        )[: len(chunk)]  # fmt: skip
        # Rounded to 8 bits (not truncated, as results are saved): the file stays within
        # the budget to half a level, and is scored as written, through the metric's PIL
        # eval transform.
        pixels = classification.to_uint8(adversarial)
        for item, image in zip(chunk, pixels, strict=True):
            out.write_bytes(f"{item.name}.png", encode_uint8(image))
        attacked = classifier.logits(pixels / 127.5 - 1).argmax(1)
        clean_hits += int(np.sum(clean == labels))
        attacked_hits += int(np.sum(attacked == labels))
        rows += [f"{i.name}.png {int(c)}" for i, c in zip(chunk, labels, strict=True)]
        print(f"attack: {len(rows)}/{len(items)} images", file=sys.stderr, flush=True)
    out.write_text("labels.lst", "\n".join(rows) + "\n")
    record = {
        "method": options.method, "eps": options.eps, "steps": steps,
        "step_size": step_size,
        "seed": options.seed if options.method == "pgd" else None,
        "resolution": options.resolution, "images": len(items),
        "labels": "input classes, else the clean prediction",
        "top1_clean": clean_hits / len(items), "top1_attacked": attacked_hits / len(items),
    }  # fmt: skip
    out.write_json("attack.json", record)
    return record
