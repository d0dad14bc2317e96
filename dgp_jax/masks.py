"""Free-form inpainting masks: Co-Mod-GAN's random mask generator and hole-ratio buckets.

:func:`random_mask` is ``RandomMask`` of Co-Mod-GAN (Zhao et al., ICLR 2021;
``training/mask_generator.py`` of github.com/zsyzzsoft/co-mod-gan, commit c8b9ffe), the
generator behind its evaluation by hole ratio. It draws the same numbers in the same order
from a ``numpy.random.RandomState`` as the original draws from numpy's global state, so
``random_mask(s, r, RandomState(k))`` equals ``np.random.seed(k); RandomMask(s, r)[0]`` bit
for bit (``tests/test_masks.py`` checks it against arrays the original computed). Its
quirks are kept, since each one moves the random stream:

* ``RandomBrush`` draws two numbers per stroke for ``mask.transpose(...)`` calls whose result
  it discards (the strokes are never flipped), then flips the whole brush mask for real;
* the tries are ``randint(int(10·c))``, ``randint(int(5·c))`` and ``randint(int(20·c))`` with
  ``c = min(lo + hi, 1)``, so the masks' statistics depend on the requested range, and a
  range with ``lo + hi < 0.2`` makes the original fail (numpy's ``randint(0)``): refused
  here with a clear error;
* masks are redrawn until ``lo < hole ratio < hi`` (both ends excluded);
* stroke widths (12 to 48 px) and vertex distances are in pixels, drawn by Pillow: at 64 px
  a stroke covers as many pixels as it does at 512 px, a far larger share of the image.

The strokes are Pillow's ``ImageDraw.line`` and ``ellipse``; the masks match the original
for the same Pillow version (the fixtures record theirs).

**Buckets.** :data:`BUCKET_SETS` holds the two sets the inpainting papers report by:
PConv's / AOT-GAN's hole ratios 0-10 % ... 50-60 % and Co-Mod-GAN's [0, .2) ... [.8, 1).
:func:`bucket_masks` draws a bucket's masks as Co-Mod-GAN does (``RandomMask(s, [lo, hi])``,
its ``-h0`` ... ``-h4`` metrics), from a ``RandomState`` seeded by (seed, lo, hi), so a
bucket's masks do not depend on which other buckets are asked for, and asking for more
masks extends the list. For a bucket the original cannot draw (``lo + hi < 0.2``: only
0-10 % here), it draws ``RandomMask(s, [lo, 0.2 - lo])`` and keeps the masks whose ratio
is below ``hi``. Every mask's hole ratio lies strictly inside its bucket.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dgp_jax.checks import integer_at_least, is_int, mask_values

__all__ = [
    "BUCKET_SETS",
    "Bucket",
    "bucket_masks",
    "hole_ratio",
    "parse_buckets",
    "random_brush",
    "random_mask",
    "write_bucket_masks",
]

# The two bucket sets of the literature, in percent of the image that is hole.
BUCKET_SETS: dict[str, str] = {
    # Liu et al. (PConv), AOT-GAN and most irregular-mask papers since.
    "aot-gan": "0-10,10-20,20-30,30-40,40-50,50-60",
    # Co-Mod-GAN's -h0 ... -h4 metrics (metrics/metric_defaults.py).
    "co-mod-gan": "0-20,20-40,40-60,60-80,80-100",
}
BUCKET_SETS["pconv"] = BUCKET_SETS["aot-gan"]

# RandomMask's tries are randint(int(5 * c)) and friends, c = min(lo + hi, 1): below this
# sum one of them is randint(0), which numpy refuses.
_MIN_RANGE_SUM = 0.2
# Draws before random_mask gives up on a range (the original draws forever); the buckets
# of both protocols take a few dozen at most at 64 px and up.
MAX_DRAWS = 10_000


def random_brush(
    max_tries: int,
    size: int,
    rng: np.random.RandomState,
    min_num_vertex: int = 4,
    max_num_vertex: int = 18,
    mean_angle: float = 2 * math.pi / 5,
    angle_range: float = 2 * math.pi / 15,
    min_width: int = 12,
    max_width: int = 48,
) -> np.ndarray:
    """Co-Mod-GAN's ``RandomBrush``: (size, size) uint8, 1 where a stroke passes.

    Up to ``max_tries - 1`` strokes (``rng.randint(max_tries)`` of them), each a polyline of
    4 to 17 segments with round joints, then the whole mask flipped up-down and left-right
    at random. Every draw is the original's, in its order.
    """
    height = width = size
    average_radius = math.sqrt(height * height + width * width) / 8
    mask = Image.new("L", (width, height), 0)
    for _ in range(rng.randint(max_tries)):
        num_vertex = rng.randint(min_num_vertex, max_num_vertex)
        angle_min = mean_angle - rng.uniform(0, angle_range)
        angle_max = mean_angle + rng.uniform(0, angle_range)
        angles = []
        for i in range(num_vertex):
            if i % 2 == 0:
                angles.append(2 * math.pi - rng.uniform(angle_min, angle_max))
            else:
                angles.append(rng.uniform(angle_min, angle_max))

        h, w = mask.size  # (width, height) named (h, w) as in the original; square anyway
        vertex = [(int(rng.randint(0, w)), int(rng.randint(0, h)))]
        for i in range(num_vertex):
            r = np.clip(
                rng.normal(loc=average_radius, scale=average_radius // 2), 0, 2 * average_radius
            )
            new_x = np.clip(vertex[-1][0] + r * math.cos(angles[i]), 0, w)
            new_y = np.clip(vertex[-1][1] + r * math.sin(angles[i]), 0, h)
            vertex.append((int(new_x), int(new_y)))

        draw = ImageDraw.Draw(mask)
        stroke = int(rng.uniform(min_width, max_width))
        draw.line(vertex, fill=1, width=stroke)
        for v in vertex:
            draw.ellipse(
                (v[0] - stroke // 2, v[1] - stroke // 2, v[0] + stroke // 2, v[1] + stroke // 2),
                fill=1,
            )
        # The original calls mask.transpose(...) here and drops the result: the strokes are
        # not flipped, but the two draws happen and shift everything after them.
        rng.random_sample()
        rng.random_sample()
    brush = np.asarray(mask, np.uint8)
    if rng.random_sample() > 0.5:
        brush = np.flip(brush, 0)
    if rng.random_sample() > 0.5:
        brush = np.flip(brush, 1)
    return brush


def _check_range(hole_range: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in hole_range)
    except (TypeError, ValueError):
        raise ValueError(f"hole_range must be (low, high), got {hole_range!r}") from None
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"hole_range must satisfy 0 <= low < high <= 1, got {hole_range!r}")
    coef = min(lo + hi, 1.0)
    if min(int(10 * coef), int(5 * coef), int(20 * coef)) < 1:
        raise ValueError(
            f"hole_range {hole_range!r}: Co-Mod-GAN's RandomMask needs low + high >= "
            f"{_MIN_RANGE_SUM} (its tries are randint(int(5 * (low + high))), and numpy's "
            "randint(0) fails); draw with a wider range and filter (see bucket_masks)"
        )
    return lo, hi


def random_mask(
    size: int,
    hole_range: Sequence[float] = (0.0, 1.0),
    rng: np.random.RandomState | None = None,
) -> np.ndarray:
    """Co-Mod-GAN's ``RandomMask``: a free-form mask of rectangles and brush strokes.

    Up to 9 rectangles of up to size/2, up to 4 of up to size (fewer for small ranges),
    and :func:`random_brush` strokes, all scaled by ``c = min(low + high, 1)``; redrawn
    until the hole ratio is strictly between ``low`` and ``high``.

    Args:
      size: the mask's height and width in pixels.
      hole_range: (low, high), fractions of the image that is hole; ``low + high >= 0.2``.
      rng: a ``numpy.random.RandomState``; ``RandomState(k)`` reproduces the original run
        after ``np.random.seed(k)``. Default: a fresh unseeded one.

    Returns:
      (size, size) float32, 1 = keep, 0 = hole (the original returns it as (1, size, size)).
    """
    size = integer_at_least(size, "size", 2)
    lo, hi = _check_range(hole_range)
    rng = np.random.RandomState() if rng is None else rng
    if not isinstance(rng, np.random.RandomState):
        raise TypeError(
            f"rng must be a numpy.random.RandomState (the original's legacy stream), got "
            f"{type(rng).__name__}"
        )
    _check_reachable(size, lo, hi)
    coef = min(lo + hi, 1.0)
    for _ in range(MAX_DRAWS):
        mask = np.ones((size, size), np.uint8)

        def fill(max_size: int, mask=mask) -> None:
            w, h = rng.randint(max_size), rng.randint(max_size)
            ww, hh = w // 2, h // 2
            x, y = rng.randint(-ww, size - w + ww), rng.randint(-hh, size - h + hh)
            mask[max(y, 0) : min(y + h, size), max(x, 0) : min(x + w, size)] = 0

        for _ in range(rng.randint(int(10 * coef))):
            fill(size // 2)
        for _ in range(rng.randint(int(5 * coef))):
            fill(size)
        keep = np.logical_and(mask, 1 - random_brush(int(20 * coef), size, rng))
        ratio = 1 - np.mean(keep)
        if ratio <= lo or ratio >= hi:
            continue
        return keep.astype(np.float32)
    raise RuntimeError(
        f"no {size}x{size} mask with a hole ratio strictly between {lo} and {hi} in "
        f"{MAX_DRAWS} draws: the range is too narrow for this size; widen it"
    )


def _check_reachable(size: int, lo: float, hi: float) -> None:
    """A hole ratio is k / size²: some k must lie strictly between the ends, or no draw can
    ever be accepted (the original then loops forever)."""
    pixels = size * size
    if math.floor(lo * pixels) + 1 >= hi * pixels:
        raise ValueError(
            f"no {size}x{size} mask has a hole ratio strictly between {lo} and {hi} "
            f"(ratios are multiples of 1/{pixels}): widen the range or enlarge the mask"
        )


def hole_ratio(mask: np.ndarray) -> np.ndarray | float:
    """Fraction of hole pixels (mask 0; 1 = keep) of (..., H, W) or (..., H, W, 1) masks."""
    mask = np.asarray(mask)
    if mask.ndim >= 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim < 2:
        raise ValueError(f"a mask must have shape (..., H, W), got {mask.shape}")
    mask_values(mask)
    ratio = 1 - np.mean(mask, axis=(-2, -1), dtype=np.float64)
    return float(ratio) if np.ndim(ratio) == 0 else ratio


@dataclass(frozen=True)
class Bucket:
    """Hole ratios ``low < r < high`` (fractions), named as given (``"10-20"``: percent)."""

    low: float
    high: float
    name: str

    def contains(self, ratio: float) -> bool:
        return self.low < ratio < self.high

    @property
    def seed_words(self) -> list[int]:
        """The bucket's part of its RandomState seed: its ends in basis points."""
        return [round(self.low * 10_000), round(self.high * 10_000)]


def parse_buckets(text: str) -> list[Bucket]:
    """``"0-10,10-20"`` (percent) or a set name of :data:`BUCKET_SETS` -> buckets.

    Raises ValueError naming the item that is not ``low-high`` with 0 <= low < high <= 100.
    """
    if not isinstance(text, str):
        raise TypeError(f"buckets must be text such as '0-10,10-20' or a set name, got {text!r}")
    spec = BUCKET_SETS.get(text.strip(), text)
    buckets = []
    for item in (p.strip() for p in spec.split(",")):
        if not item:
            continue
        low, dash, high = item.partition("-")
        try:
            if not dash:
                raise ValueError
            lo, hi = float(low), float(high)
        except ValueError:
            raise ValueError(
                f"bucket {item!r} is not 'low-high' in percent (e.g. 10-20); "
                f"or name a set: {', '.join(sorted(BUCKET_SETS))}"
            ) from None
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"bucket {item!r}: need 0 <= low < high <= 100 (percent)")
        buckets.append(Bucket(lo / 100, hi / 100, item))
    if not buckets:
        raise ValueError(f"no buckets in {text!r}")
    names = [b.name for b in buckets]
    if len(set(names)) != len(names):
        raise ValueError(f"buckets listed twice in {text!r}")
    return buckets


def bucket_masks(size: int, bucket: Bucket, count: int, seed: int = 0) -> np.ndarray:
    """``count`` masks whose hole ratios lie in ``bucket``: (count, size, size) float32.

    Drawn with :func:`random_mask` from ``RandomState([seed, low, high])`` (ends in basis
    points), so the same arguments give the same masks and the first n of a longer list are
    the list of n. See the module docstring for buckets the original cannot draw.
    """
    integer_at_least(count, "count", 0)
    if is_int(size) and size >= 2:
        _check_reachable(int(size), bucket.low, bucket.high)
    rng = np.random.RandomState([int(seed) % 2**32, *bucket.seed_words])
    draw_range = (bucket.low, max(bucket.high, _MIN_RANGE_SUM - bucket.low))
    masks, misses = [], 0
    while len(masks) < count:
        mask = random_mask(size, draw_range, rng)
        if bucket.contains(hole_ratio(mask)):
            masks.append(mask)
            misses = 0
        elif (misses := misses + 1) >= MAX_DRAWS:
            raise RuntimeError(
                f"bucket {bucket.name}: no {size}x{size} mask in it in {MAX_DRAWS} draws; "
                "widen it or enlarge the masks"
            )
    return np.stack(masks) if masks else np.zeros((0, size, size), np.float32)


def mask_file(bucket: Bucket, index: int) -> str:
    """A bucket mask's path relative to the output folder."""
    return f"{bucket.name}/{index:04d}.png"


def write_bucket_masks(
    out: str | os.PathLike, size: int, buckets: Sequence[Bucket], per_bucket: int, seed: int = 0
) -> dict:
    """PNG masks (white = keep) for every bucket, plus ``masks.json`` (their hole ratios).

    Files: ``OUT/<bucket>/<index>.png``, 8-bit gray, 255 = keep, 0 = hole (``dgp-jax restore
    --mask`` reads them as they are). Returns the record written to ``masks.json``.
    """
    out = Path(out)
    record = {
        "generator": "Co-Mod-GAN RandomMask (dgp_jax.masks.random_mask)",
        "size": size,
        "seed": seed,
        "per_bucket": per_bucket,
        "buckets": {},
    }
    # Every bucket drawn before anything is written: a bucket that cannot be drawn (its
    # range unreachable at this size, or missed MAX_DRAWS times) leaves no half-written set.
    drawn = [bucket_masks(size, bucket, per_bucket, seed) for bucket in buckets]
    for bucket, masks in zip(buckets, drawn, strict=True):
        (out / bucket.name).mkdir(parents=True, exist_ok=True)
        entries = []
        for index, mask in enumerate(masks):
            rel = mask_file(bucket, index)
            Image.fromarray((mask * 255).astype(np.uint8), "L").save(out / rel)
            entries.append({"file": rel, "hole_ratio": hole_ratio(mask)})
        record["buckets"][bucket.name] = {"low": bucket.low, "high": bucket.high,
                                          "masks": entries}  # fmt: skip
    (out / "masks.json").write_text(json.dumps(record, indent=1) + "\n")
    return record
