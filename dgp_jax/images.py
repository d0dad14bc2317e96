"""Images in and out, as the reference reads and writes them.

Loading: RGB, centre crop to the short side (offset ``int(round((long - short) / 2))``, as
torchvision's center_crop), PIL bilinear resize to the model resolution, then [-1, 1].
Saving: ``uint8(255 * (x + 1) / 2)``, truncating. Arrays are (H, W, 3) NHWC-style.

What the loader does with unusual inputs, and why:

* Every PIL mode is turned into RGB with ``.convert('RGB')``, as the reference does: L, LA,
  P, RGBA (alpha dropped, not composited), CMYK (PIL's naive inversion, no ICC profile).
  16-bit grayscale (``I;16``, e.g. a 16-bit PNG) is *clipped* to 0..255, not rescaled, so a
  typical 16-bit photo comes out almost white. That is PIL's and therefore the reference's
  behaviour; we keep it so that results match, and say so here rather than guess a scale.
* EXIF orientation is applied first, so a phone photo is upright.
* An image smaller than the model is upsampled by the same bilinear resize (the reference
  does not refuse it either); ``load_image_with_size`` reports the source size so a caller
  can flag it.
* Decompression bombs: anything over ``MAX_PIXELS`` pixels is refused from the header,
  before any pixel is decoded.
* Any decoding failure (corrupt, truncated, empty, not an image) is an ``ImageError`` whose
  message names the file, so a batch run can report and skip it.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from dgp_jax.checks import integer_at_least, unit_range_images

# PIL's own bomb guard only warns up to 2x this; we refuse anything beyond it.
MAX_PIXELS = 89_478_485
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


class ImageError(ValueError):
    """An input image (or mask) that cannot be used; the message names the file."""


def _too_big(path: Path, width: int | None, height: int | None, pixels: int | None) -> ImageError:
    size = f"{width}x{height} = {width * height}" if width and height else f"{pixels}"
    return ImageError(
        f"{path}: refused, {size} pixels is over the limit of {MAX_PIXELS} pixels "
        "(dgp_jax.images.MAX_PIXELS; a guard against decompression bombs)"
    )


def _decode(path: Path, convert: Callable[[Image.Image], Any], what: str = "") -> Any:
    """``convert(opened image)`` with the size guard first; any failure is an ImageError
    naming the file (``what`` prefixes it, e.g. "mask ")."""
    if path.is_dir():  # FileNotFoundError as for a missing file: callers handle that one
        kind = f"a {what}" if what else "an image "
        raise FileNotFoundError(f"{path} is a folder, not {kind}file")
    if not path.is_file():
        raise FileNotFoundError(f"no {what or 'image '}file at {path}")
    try:
        with warnings.catch_warnings():
            # PIL warns between 1x and 2x its limit; we refuse those ourselves below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                # The size comes from the header: checked before any pixel is decoded.
                if im.width * im.height > MAX_PIXELS:
                    raise _too_big(path, im.width, im.height, None)
                return convert(im)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        # PIL refuses > 2x its limit inside open(), before we see the size.
        found = re.search(r"\((\d+) pixels\)", str(err))
        raise _too_big(path, None, None, int(found.group(1)) if found else None) from None
    except Exception as err:  # any decoder failure means "unreadable file"
        raise ImageError(
            f"{what}{path} is not a readable image ({type(err).__name__}: {err})"
        ) from None


def _upright_rgb(im: Image.Image) -> Image.Image:
    return ImageOps.exif_transpose(im).convert("RGB")


class ClippedImageWarning(UserWarning):
    """A 16-bit image whose values above 255 are clipped when it is read."""


def _upright_rgb_checked(im: Image.Image) -> tuple[Image.Image, float]:
    """The RGB image and the fraction of pixels clipped (16-bit grayscale values > 255)."""
    clipped = 0.0
    if im.mode.startswith("I"):
        values = np.asarray(im)
        clipped = float(np.mean(values > 255)) if values.size else 0.0
    return _upright_rgb(im), clipped


def load_image_with_size(
    path: str | os.PathLike, resolution: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """(image, (width, height) of the upright source): see ``load_image``."""
    integer_at_least(resolution, "resolution", 1)
    path = Path(path)
    rgb, clipped = _decode(path, _upright_rgb_checked)
    if clipped:
        warnings.warn(
            f"{path} is a 16-bit grayscale image: it is clipped to 0..255, not scaled (as PIL "
            f"and the reference read it), so {clipped:.0%} of it loads as white; convert it to "
            "8 bits first for a faithful input",
            ClippedImageWarning,
            stacklevel=2,
        )
    w, h = rgb.size
    short = min(w, h)
    left = int(round((w - short) / 2.0))
    top = int(round((h - short) / 2.0))
    square = rgb.crop((left, top, left + short, top + short))
    resized = square.resize((resolution, resolution), Image.BILINEAR)
    return np.asarray(resized, np.float64) / 255.0 * 2 - 1, (w, h)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) float64 in [-1, 1] at the file's own size, upright (EXIF), with the same
    checks as ``load_image`` (size guard, unreadable files named)."""
    return np.asarray(_decode(Path(path), _upright_rgb), np.float64) / 255.0 * 2 - 1


def load_image(path: str | os.PathLike, resolution: int) -> np.ndarray:
    """(resolution, resolution, 3) float64 in [-1, 1], EXIF orientation applied."""
    return load_image_with_size(path, resolution)[0]


def read_mask(path: str | os.PathLike, keep: str = "white") -> np.ndarray:
    """A mask file at its own size -> (H, W, 1) float64, 1 = keep.

    Pixels are read as grayscale and thresholded at 128, so anti-aliased edges fall on one
    side.

    Args:
      keep: "white" (pixels >= 128 are kept) or "black" (pixels < 128 are kept).
    """
    if keep not in ("white", "black"):
        raise ValueError(f"mask keep must be 'white' or 'black', got {keep!r}")
    pixels = _decode(Path(path), lambda im: np.asarray(im.convert("L")), "mask ")
    kept = pixels >= 128 if keep == "white" else pixels < 128
    return kept.astype(np.float64)[..., None]


def load_mask(path: str | os.PathLike, resolution: int, keep: str = "white") -> np.ndarray:
    """An inpainting mask file for the model -> (resolution, resolution, 1) float64, 1 = keep.

    The mask must already be ``resolution`` x ``resolution``: it is not cropped or resized,
    because a mask drawn on a photo of another size would land somewhere else after the
    photo's centre crop and resize, and a resized mask is no longer binary. Read as
    ``read_mask`` reads (``keep``: "white" or "black").
    """
    mask = read_mask(path, keep)
    if mask.shape[:2] != (resolution, resolution):
        raise ImageError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but the model works at "
            f"{resolution}x{resolution}: draw the mask at {resolution}x{resolution}"
        )
    if mask.min() == 1:  # it solved for nothing and scored an empty hole as NaN
        raise ImageError(
            f"mask {path} has no hole: every pixel is kept (keep={keep!r}), so there is "
            "nothing to inpaint"
        )
    return mask


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] -> uint8 as the reference saves: ``uint8(255 * (x + 1) / 2)``, truncating."""
    return np.uint8(np.clip(255 * (np.asarray(x, np.float64) + 1) / 2, 0, 255))


def encode_image(x: np.ndarray, fmt: str = "PNG") -> bytes:
    """(H, W, 3) in [-1, 1] -> encoded file bytes (so a caller can write them atomically)."""
    import io

    x = np.asarray(x)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"an image to write must be (H, W, 3), got shape {x.shape}")
    # 0..255 values would be written white; a NaN (a diverged solve) writes as black
    unit_range_images(x, "an image to write", slack=0.5, nan_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(x)).save(buffer, format=fmt)
    return buffer.getvalue()


def save_image(x: np.ndarray, path: str | os.PathLike) -> None:
    """Write (H, W, 3) in [-1, 1] as the reference does, atomically (temp + rename)."""
    path = Path(path)
    data = encode_image(x, _format(path))
    # The pid keeps two writers of one file (e.g. two processes) off each other's temp file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _format(path: Path) -> str:
    formats = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}
    if path.suffix.lower() not in formats:  # PNG bytes under another suffix mislead readers
        raise ValueError(f"{path}: images are written as .png or .jpg/.jpeg files")
    return formats[path.suffix.lower()]


def labelled_sheet(
    tiles: list[np.ndarray], labels: list[str], min_size: int = 128, pad: int = 4
) -> np.ndarray:
    """Same-size (H, W, 3) tiles in [-1, 1], left to right, each enlarged (nearest, by a whole
    factor) to at least ``min_size`` px and captioned above with its label -> uint8 sheet."""
    from PIL import ImageDraw, ImageFont

    if len(tiles) != len(labels):
        raise ValueError(f"{len(tiles)} tiles but {len(labels)} labels")
    h, w = np.shape(tiles[0])[:2]
    scale = max(1, -(-min_size // min(h, w)))
    font = ImageFont.load_default()
    band = font.getbbox("Ag")[3] + 2 * pad
    width = len(tiles) * (w * scale + pad) + pad
    sheet = Image.new("RGB", (width, band + h * scale + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (tile, label) in enumerate(zip(tiles, labels, strict=True)):
        left = pad + k * (w * scale + pad)
        big = Image.fromarray(to_uint8(tile)).resize((w * scale, h * scale), Image.NEAREST)
        sheet.paste(big, (left, band))
        draw.text((left, pad), label, fill=(0, 0, 0), font=font)
    return np.asarray(sheet)


def encode_uint8(x: np.ndarray, fmt: str = "PNG") -> bytes:
    """(H, W, 3) uint8 -> encoded file bytes."""
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(x, np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def image_sheet(rows: list[np.ndarray]) -> np.ndarray:
    """Concatenate same-size (H, W, 3) images left to right into one sheet."""
    return np.concatenate(rows, axis=1)


def image_grid(rows: list[list[np.ndarray]]) -> np.ndarray:
    """A grid of same-size (H, W, 3) images; short rows are padded with mid-gray (0)."""
    width = max(len(r) for r in rows)
    blank = np.zeros_like(rows[0][0])
    return np.concatenate([image_sheet(list(r) + [blank] * (width - len(r))) for r in rows], axis=0)


def sample_grid(images: np.ndarray, cols: int, pad: int = 2) -> np.ndarray:
    """(N, H, W, 3) in [-1, 1] -> one uint8 sheet, ``cols`` images per row."""
    n, h, w, _ = images.shape
    rows = -(-n // cols)
    sheet = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    pixels = np.clip(np.round((np.asarray(images, np.float64) + 1) * 127.5), 0, 255)
    for i, img in enumerate(pixels.astype(np.uint8)):
        r, c = divmod(i, cols)
        sheet[pad + r * (h + pad) : pad + r * (h + pad) + h,
              pad + c * (w + pad) : pad + c * (w + pad) + w] = img  # fmt: skip
    return sheet


def read_inputs(inputs: list[str]) -> list[tuple[Path, int]]:
    """Files, folders (their images, sorted) and list files (``path [class]`` per line,
    relative to the list's folder; class -1 or absent = unknown; lines starting with ``#``
    are comments) -> (path, class).

    A folder's own list files (``*.txt`` in it) give the classes of the folder's images they
    name; its other images are unknown (-1). A path that does not exist is an error.
    """
    out: list[tuple[Path, int]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            classes: dict[Path, int] = {}
            for listed in sorted(p.glob("*.txt")):
                for path, cls in _read_list(listed):
                    key = path.resolve()
                    if classes.get(key, cls) != cls:
                        raise ValueError(
                            f"{listed}: class {cls} for {path}, but another list file in {p} "
                            f"gives it class {classes[key]}"
                        )
                    classes[key] = cls
            out += [
                (f, classes.get(f.resolve(), -1))
                for f in sorted(p.iterdir())
                if f.suffix.lower() in IMAGE_SUFFIXES
            ]
        elif p.suffix.lower() == ".txt":
            if not p.is_file():
                raise FileNotFoundError(f"no list file at {p}")
            out += _read_list(p)
        elif not p.exists():
            raise FileNotFoundError(f"no input file or folder at {p}")
        else:
            out.append((p, -1))
    return out


def _read_list(p: Path) -> list[tuple[Path, int]]:
    out = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) > 2:
            raise ValueError(f"{p}:{n}: expected 'path [class]', got {line!r}")
        try:
            cls = int(parts[1]) if len(parts) == 2 else -1
        except ValueError:
            raise ValueError(f"{p}:{n}: class {parts[1]!r} is not an integer") from None
        out.append((p.parent / parts[0], cls))
    return out
