"""One before/after sheet from the README quickstart's three runs.

    python experiments/quickstart_sheet.py out --out docs/quickstart_sheet.png

reads ``out/<task>/<name>_<task>_degraded.png`` and ``<name>_<task>.png`` for the tasks
colorization, inpainting and SR (the folders ``dgp-jax restore --task <task> --out
out/<task>`` wrote; the SR folder must be named ``SR``) and the originals named in
``out/colorization/summary.csv`` (loaded as the runner loads them), and writes a sheet with
one row per photo: original | grayscale, DGP | masked, DGP | x4 low resolution (as the
loss sees it: bilinearly upsampled back), DGP. The PSNR of each result is in the run's
``summary.csv``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dgp_jax.images import load_image, sample_grid, to_uint8

TASKS = ("colorization", "inpainting", "SR")


def _read(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.NEAREST))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", help="folder holding the colorization, inpainting and SR runs")
    p.add_argument("--out", required=True, help="sheet PNG to write")
    p.add_argument("--scale", type=int, default=2, help="enlarge every tile this much")
    args = p.parse_args(argv)
    runs = Path(args.runs)

    with open(runs / TASKS[0] / "summary.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "done"]
    if not rows:
        raise SystemExit(f"no finished images in {runs / TASKS[0] / 'summary.csv'}")
    res = Image.open(runs / TASKS[0] / f"{rows[0]['name']}_{TASKS[0]}.png").size[0]
    size = res * args.scale
    tiles = []
    for row in rows:
        original = to_uint8(load_image(row["input"], res))
        tiles.append(np.asarray(Image.fromarray(original).resize((size, size), Image.NEAREST)))
        for task in TASKS:
            base = runs / task / f"{row['name']}_{task}"
            tiles += [_read(Path(f"{base}_degraded.png"), size), _read(Path(f"{base}.png"), size)]
    as_unit = np.stack(tiles).astype(np.float64) / 127.5 - 1.0
    sheet = sample_grid(as_unit, cols=1 + 2 * len(TASKS), pad=2 * args.scale)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(args.out)
    print(f"wrote {args.out}: {len(rows)} photos x (original, then observation and DGP result "
          f"for {', '.join(TASKS)})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
