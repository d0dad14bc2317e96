"""One labelled before/after sheet from the README quickstart's three runs.

    python experiments/quickstart_sheet.py out --out out/quickstart_sheet.png

reads ``out/<task>/<name>_<task>_degraded.png`` and ``<name>_<task>.png`` for the tasks
colorization, inpainting and SR (the folders ``dgp-jax restore --task <task> --out
out/<task>`` wrote; the SR folder must be named ``SR``), each run's ``summary.csv`` (the
PSNR in the labels) and the originals named in ``out/colorization/summary.csv`` (loaded as
the runner loads them), and writes a sheet with one row per photo: original | grayscale,
DGP | masked, DGP | x4 low resolution (as the loss sees it: bilinearly upsampled back),
DGP; every tile enlarged to at least 128 px and labelled.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dgp_jax.images import labelled_sheet, load_image

TASKS = ("colorization", "inpainting", "SR")
OBSERVATION = {"colorization": "grayscale", "inpainting": "masked", "SR": "x4 low-res"}


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.float64) / 127.5 - 1.0


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as f:
        return {r["name"]: r for r in csv.DictReader(f) if r["status"] == "done"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", help="folder holding the colorization, inpainting and SR runs")
    p.add_argument("--out", required=True, help="sheet PNG to write")
    p.add_argument("--size", type=int, default=128, help="smallest tile size shown (px)")
    args = p.parse_args(argv)
    runs = Path(args.runs)

    done = {task: _rows(runs / task / "summary.csv") for task in TASKS}
    names = [n for n in done[TASKS[0]] if all(n in done[t] for t in TASKS)]
    if not names:
        raise SystemExit(f"no photo finished in all of {', '.join(TASKS)} under {runs}")
    res = Image.open(runs / TASKS[0] / f"{names[0]}_{TASKS[0]}.png").size[0]
    rows = []
    for name in names:
        tiles = [load_image(done[TASKS[0]][name]["input"], res)]
        labels = ["original"]
        for task in TASKS:
            base = runs / task / f"{name}_{task}"
            psnr = done[task][name].get("psnr")
            tiles += [_read(Path(f"{base}_degraded.png")), _read(Path(f"{base}.png"))]
            labels += [OBSERVATION[task], f"DGP, {float(psnr):.2f} dB" if psnr else "DGP"]
        rows.append(labelled_sheet(tiles, labels, min_size=args.size))
    sheet = np.concatenate(rows, axis=0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(args.out)
    print(f"wrote {args.out}: {len(rows)} photos x (original, then observation and DGP result "
          f"for {', '.join(TASKS)})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
