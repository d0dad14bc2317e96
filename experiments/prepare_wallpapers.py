"""Build the training set of dgp_jax's default model from Debian's wallpaper packages.

    python experiments/prepare_wallpapers.py --out data/wallpapers

Downloads four Debian 12 packages with ``apt-get download`` (or takes the ``.deb`` files
already in ``--debs``), reads the photographs listed in ``PHOTOS`` out of them (a ``.deb`` is
an ``ar`` archive; no dpkg needed), and writes:

* ``train/<class>/<photo>_<k>.png``: ``--crops`` random square crops of every training
  photo, side log-uniform in [``--min_side``, 1] of the short edge, resized (Lanczos) to
  ``--crop_size`` px. The trainer then takes a random 0.8-1.0 crop of these and flips it.
* ``heldout/<class>_<photo>_<k>.png``: ``--heldout_crops`` crops of each held-out photo at the
  model resolution (the first the whole centre square, the rest half-size squares at fixed
  random positions). No crop of these photos is in ``train/``.
* ``DATA.json``: package names, versions and sha256, the photo table with authors and
  licences, the settings and the counts.

Only photographs are used; the packages' drawn and rendered wallpapers are left out. The three
classes are scene groups: ``flora`` (plants and flowers seen close), ``landscape`` (outdoor
scenes with a horizon or a wide view) and ``objects`` (made things and other close-ups).
Two photos of each class are held out. Same arguments, same files: every random choice comes
from ``--seed``.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import tarfile
import urllib.parse
from pathlib import Path

import numpy as np
from PIL import Image

from dgp_jax.default_model import sha256

# Debian 12 (bookworm) packages and the version the table was made from.
PACKAGES = {
    "lomiri-wallpapers-16.04": "20.04.0-2",
    "lomiri-wallpapers-20.04": "20.04.0-2",
    "mate-backgrounds": "1.26.0-1",
    "plasma-workspace-wallpapers": "4:5.27.5-2",
}

# One photo per line: package (L16/L20 lomiri-wallpapers-16.04/-20.04, MATE mate-backgrounds
# nature/, KDE plasma-workspace-wallpapers, where the name is the wallpaper's folder), file,
# class, split, licence, author. Licences and authors as in each package's debian/copyright,
# except KDE's, from each wallpaper's metadata.json (debian/copyright lists the whole package as
# GPL-2+). Columns are separated by two spaces or more.
_TABLE = """
L16   seeding_by_Clements_Engelhardt.jpg  flora      train    CC0-1.0       Clemens Engelhardt
L16   Dragonfly_by_Bolly.jpg  flora      train    CC-BY-SA-4.0  Bolly
MATE  Garden.jpg  flora      train    GPL-2+        Charles Barbin
MATE  TwoWings.jpg  flora      train    GPL-2+        Charles Barbin, Hylke Bons
MATE  GreenMeadow.jpg  flora      train    GPL-2+        Timothy Schellhase, Lapo Calamandrei
MATE  RainDrops.jpg  flora      train    GPL-2+        blackcombwhistler07
MATE  Blinds.jpg  flora      train    GPL-2+        Lennart Poettering, Andrea Cimitan
MATE  YellowFlower.jpg  flora      train    GPL-2+        Charles Barbin
KDE   FallenLeaf  flora      train    LGPL-3.0      Martin Klapetek
KDE   OneStandsOut  flora      train    LGPL-3.0      Risto Saukonpää
MATE  LadyBird.jpg  flora      heldout  GPL-2+        Charles Barbin
MATE  FreshFlower.jpg  flora      heldout  GPL-2+        Jens Ansorg
L16   aitzgorri_by_Aitzol_Berasategi.jpg  landscape  train    CC-BY-4.0     Aitzol Berasategi
L16   sunset_by_Aitzol_Berasategi.jpg  landscape  train    CC-BY-4.0     Aitzol Berasategi
L16   life_by_Aitzol_Berasategi.jpg  landscape  train    CC-BY-4.0     Aitzol Berasategi
L16   Bridge_by_Sander_Klootwijk.jpg  landscape  train    CC-BY-SA-4.0  Sander Klootwijk
MATE  Dune.jpg  landscape  train    GPL-2+        Marco Cogoni, Hylke Bons
MATE  Storm.jpg  landscape  train    GPL-2+        Sergey Nazarov
KDE   Path  landscape  train    LGPL-3.0      Risto Saukonpää
KDE   DarkestHour  landscape  train    LGPL-3.0      Risto Saukonpää
KDE   summer_1am  landscape  train    LGPL-3.0      Risto Saukonpää
KDE   ColdRipple  landscape  train    LGPL-3.0      Risto Saukonpää
KDE   BytheWater  landscape  train    LGPL-3.0      Maciej Wiklo
KDE   Kite  landscape  train    LGPL-3.0      Risto Saukonpää
L16   picosdeeuropa_by_Aitzol_Berasategi.jpg  landscape  heldout  CC-BY-4.0     Aitzol Berasategi
KDE   EveningGlow  landscape  heldout  LGPL-3.0      Ian Hex
L16   Picture_1A_by_freespace.jpg  objects    train    CC-BY-4.0     Trevor "Freespace"
L16   Picture_0B_by_freespace.jpg  objects    train    CC-BY-4.0     Trevor "Freespace"
L16   greentock_by_Peter_Nerlich.jpg  objects    train    CC-BY-SA-4.0  Peter Nerlich
L16   free_by_Peter_Nerlich.jpg  objects    train    CC-BY-SA-4.0  Peter Nerlich
L16   friends_by_Aitzol_Berasategi.jpg  objects    train    CC-BY-4.0     Aitzol Berasategi
L16   analogpattern_by_Peter_Nerlich.jpg  objects    train    CC-BY-SA-4.0  Peter Nerlich
L20   Kleiber_by_Lukas_Baubkus.jpg  objects    train    CC-BY-SA-3.0  Lukas Baubkus
MATE  Aqua.jpg  objects    train    GPL-2+        Charles Barbin
MATE  Wood.jpg  objects    train    GPL-2+        Jean-François Fortin Tam
KDE   Grey  objects    train    LGPL-3.0      Sigi Sagi
L16   Wine_by_Jakkub_Mede.jpg  objects    heldout  CC-BY-4.0     Jakub Mede
KDE   ColorfulCups  objects    heldout  LGPL-3.0      Dmitri Popov
"""
_PACKAGE = {"L16": "lomiri-wallpapers-16.04", "L20": "lomiri-wallpapers-20.04",
            "MATE": "mate-backgrounds", "KDE": "plasma-workspace-wallpapers"}  # fmt: skip
_PATH = {"L16": "/usr/share/backgrounds/{}", "L20": "/usr/share/backgrounds/{}",
         "MATE": "/usr/share/backgrounds/mate/nature/{}",
         "KDE": "/usr/share/wallpapers/{}/contents/images/2560x1600.jpg"}  # fmt: skip
# (package, path in the package, class, split, author, licence)
PHOTOS = [
    (_PACKAGE[pkg], _PATH[pkg].format(name), cls, split, author, licence)
    for pkg, name, cls, split, licence, author in (
        re.split(r"\s{2,}", line.strip()) for line in _TABLE.strip().splitlines()
    )
]
CLASSES = ("flora", "landscape", "objects")


def deb_members(deb: Path, wanted: set[str]) -> dict[str, bytes]:
    """The files ``wanted`` (absolute paths) from a .deb's data archive."""
    raw = deb.read_bytes()
    if raw[:8] != b"!<arch>\n":
        raise SystemExit(f"{deb}: not a Debian package (no ar header)")
    pos, data = 8, None
    while pos + 60 <= len(raw):
        name = raw[pos : pos + 16].decode().strip().rstrip("/")
        size = int(raw[pos + 48 : pos + 58].decode().strip())
        body = raw[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            data = body
        pos += 60 + size + (size % 2)
    if data is None:
        raise SystemExit(f"{deb}: no data.tar member")
    found = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:  # xz, gz or plain: detected
        for member in tar:
            path = "/" + member.name.lstrip("./")
            if path in wanted and member.isfile():
                found[path] = tar.extractfile(member).read()
    missing = wanted - found.keys()
    if missing:
        raise SystemExit(f"{deb}: missing {sorted(missing)}")
    return found


def fetch_debs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    debs = {}
    for package in PACKAGES:
        found = sorted(folder.glob(f"{package}_*.deb"))
        if not found:
            subprocess.run(["apt-get", "download", package], cwd=folder, check=True)
            found = sorted(folder.glob(f"{package}_*.deb"))
        if not found:
            raise SystemExit(f"apt-get download {package} left no .deb in {folder}")
        debs[package] = found[-1]
    return debs


def random_crops(image: Image.Image, n: int, size: int, min_side: float, rng) -> list:
    w, h = image.size
    short = min(w, h)
    out = []
    for _ in range(n):
        side = short * float(np.exp(rng.uniform(np.log(min_side), 0.0)))
        left, top = rng.uniform(0, w - side), rng.uniform(0, h - side)
        box = (left, top, left + side, top + side)
        out.append(image.resize((size, size), Image.Resampling.LANCZOS, box=box))
    return out


def heldout_crops(image: Image.Image, n: int, size: int, rng) -> list:
    w, h = image.size
    short = min(w, h)
    boxes = [((w - short) / 2, (h - short) / 2, short)]
    for _ in range(n - 1):
        side = short / 2
        boxes.append((rng.uniform(0, w - side), rng.uniform(0, h - side), side))
    return [
        image.resize((size, size), Image.Resampling.LANCZOS, box=(x, y, x + s, y + s))
        for x, y, s in boxes
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--debs", default=None, help="folder for the .deb files (default OUT/debs)")
    p.add_argument("--crops", type=int, default=300, help="crops per training photo")
    p.add_argument("--crop_size", type=int, default=80)
    p.add_argument("--min_side", type=float, default=0.25)
    p.add_argument("--resolution", type=int, default=64, help="held-out crop size")
    p.add_argument("--heldout_crops", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    out = Path(args.out)
    debs = fetch_debs(Path(args.debs) if args.debs else out / "debs")
    files = {}
    for package, deb in debs.items():
        wanted = {path for pkg, path, *_ in PHOTOS if pkg == package}
        files.update({(package, k): v for k, v in deb_members(deb, wanted).items()})

    counts = {"train": {c: 0 for c in CLASSES}, "heldout": {c: 0 for c in CLASSES}}
    table = []
    for i, (package, path, cls, split, author, licence) in enumerate(PHOTOS):
        image = Image.open(io.BytesIO(files[package, path])).convert("RGB")
        stem = Path(path).stem if "/wallpapers/" not in path else path.split("/")[4]
        rng = np.random.default_rng([args.seed, i])
        if split == "train":
            folder = out / "train" / cls
            crops = random_crops(image, args.crops, args.crop_size, args.min_side, rng)
            names = [f"{stem}_{k:03d}.png" for k in range(len(crops))]
        else:
            folder = out / "heldout"
            crops = heldout_crops(image, args.heldout_crops, args.resolution, rng)
            names = [f"{cls}_{stem}_{k}.png" for k in range(len(crops))]
        folder.mkdir(parents=True, exist_ok=True)
        for crop, name in zip(crops, names, strict=True):
            crop.save(folder / name)
        counts[split][cls] += len(crops)
        table.append({
            "package": package, "path": path, "class": cls, "split": split,
            "author": author, "license": licence, "size": list(image.size), "crops": len(crops),
        })  # fmt: skip
        print(f"{split:8s} {cls:10s} {stem}: {len(crops)} crops")

    record = {
        "source": "Debian 12 (bookworm) packages, fetched with apt-get download",
        "packages": {
            name: {
                "file": deb.name,
                "sha256": sha256(deb),
                "version": urllib.parse.unquote(deb.name.split("_")[1]),
                "version_table_made_from": PACKAGES[name],
            }  # fmt: skip
            for name, deb in debs.items()
        },
        "classes": list(CLASSES),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "debs")},
        "counts": counts,
        "photos": table,
    }
    (out / "DATA.json").write_text(json.dumps(record, indent=1))
    print(f"train: {sum(counts['train'].values())} crops; heldout: "
          f"{sum(counts['heldout'].values())} crops; {out / 'DATA.json'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
