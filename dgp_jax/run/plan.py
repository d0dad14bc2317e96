"""Planning a run's inputs: unique output names, per-image PRNG keys, process shares."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dgp_jax.run.settings import RunError


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


def plan_inputs(inputs: Sequence[str], class_index: int | None = None) -> list[Item]:
    """The Items of a command's INPUT arguments (images, folders, list files), or a
    RunError naming the input that is missing or unreadable, or saying that none holds an
    image. ``class_index`` replaces every input's class."""
    from dgp_jax.images import read_inputs

    try:
        entries = read_inputs(list(inputs))
    except (OSError, ValueError) as err:
        raise RunError(str(err)) from None
    if class_index is not None:
        entries = [(path, class_index) for path, _ in entries]
    items = plan_items(entries)
    if not items:
        raise RunError(f"no input images found in {' '.join(inputs)}")
    return items


def refuse_output_among_inputs(out: str, inputs: Sequence[str]) -> None:
    """Results written into an input folder would become inputs of the next (resumed) run."""
    out_root = Path(out).resolve()
    if any(Path(i).is_dir() and Path(i).resolve() == out_root for i in inputs):
        raise RunError(f"--out {out} is an input folder: choose another folder")


def take_share(items: Sequence[Any], count: int, index: int) -> list[Any]:
    """Process ``index`` of ``count`` takes items index, index + count, ..."""
    return list(items[index::count])


def image_key(seed: int, name: str) -> np.ndarray:
    """Image ``name``'s PRNG key: fold_in(PRNGKey(seed), crc32(name)), as raw uint32[2]."""
    import jax

    data = np.uint32(zlib.crc32(name.encode("utf-8")))
    return np.asarray(jax.random.fold_in(jax.random.PRNGKey(seed), data), np.uint32)


def check_classes(
    items: Sequence[Item],
    n_classes: int,
    owner: str = "the model",
    unknown: str = "chosen by the solver",
) -> None:
    """Every class in [-1, n_classes), else a RunError naming the images; ``owner`` has
    the classes and ``unknown`` says what becomes of -1, for the message."""
    bad = [it for it in items if not -1 <= it.cls < n_classes]
    if bad:
        listed = ", ".join(f"{it.path} (class {it.cls})" for it in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise RunError(
            f"class out of range [-1, {n_classes}) for {listed}{more}: {owner} has "
            f"{n_classes} classes (-1 = unknown, {unknown})"
        )
