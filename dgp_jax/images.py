"""Images in and out, as the reference reads and writes them.

Loading: RGB, centre crop to the short side (offset ``int(round((long - short) / 2))``, as
torchvision's center_crop), PIL bilinear resize to the model resolution, then [-1, 1].
Saving: ``uint8(255 * (x + 1) / 2)``, truncating. Arrays are (H, W, 3) NHWC-style.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# PIL's own bomb guard is a warning up to 2x this; we refuse anything beyond it.
MAX_PIXELS = 89_478_485
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file."""


def load_image(path: str | os.PathLike, resolution: int) -> np.ndarray:
    """(resolution, resolution, 3) float64 in [-1, 1], EXIF orientation applied."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ImageError(
                    f"{path}: {im.width}x{im.height} pixels is over the limit of {MAX_PIXELS}"
                )
            im = ImageOps.exif_transpose(im)
            rgb = im.convert("RGB")
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"{path} is not a readable image ({type(err).__name__}: {err})") from None
    w, h = rgb.size
    short = min(w, h)
    left = int(round((w - short) / 2.0))
    top = int(round((h - short) / 2.0))
    square = rgb.crop((left, top, left + short, top + short))
    resized = square.resize((resolution, resolution), Image.BILINEAR)
    return np.asarray(resized, np.float64) / 255.0 * 2 - 1


def save_image(x: np.ndarray, path: str | os.PathLike) -> None:
    """Write (H, W, 3) in [-1, 1] as the reference does, atomically (temp + rename)."""
    path = Path(path)
    pixels = np.uint8(np.clip(255 * (np.asarray(x, np.float64) + 1) / 2, 0, 255))
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(pixels).save(tmp, format=_format(path))
    os.replace(tmp, path)


def _format(path: Path) -> str:
    return {".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(), "PNG")


def image_sheet(rows: list[np.ndarray]) -> np.ndarray:
    """Concatenate same-size (H, W, 3) images left to right into one sheet."""
    return np.concatenate(rows, axis=1)


def read_inputs(inputs: list[str]) -> list[tuple[Path, int]]:
    """Files, folders (their images, sorted) and list files (``path [class]`` per line,
    relative to the list's folder; class -1 or absent = unknown) -> (path, class)."""
    out: list[tuple[Path, int]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += [(f, -1) for f in sorted(p.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        elif p.suffix.lower() == ".txt":
            if not p.is_file():
                raise FileNotFoundError(f"no list file at {p}")
            for n, line in enumerate(p.read_text().splitlines(), 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) > 2:
                    raise ValueError(f"{p}:{n}: expected 'path [class]', got {line!r}")
                try:
                    cls = int(parts[1]) if len(parts) == 2 else -1
                except ValueError:
                    raise ValueError(f"{p}:{n}: class {parts[1]!r} is not an integer") from None
                out.append((p.parent / parts[0], cls))
        else:
            out.append((p, -1))
    return out
