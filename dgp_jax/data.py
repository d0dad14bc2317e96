"""Training data for the BigGAN trainer: labelled images as a deterministic numpy stream.

Three sources, one ``Dataset`` (a list of (image source, class) pairs plus class names):

* ``image_folder(root)``: ``root/<class name>/*.png|jpg|...``; classes are the sorted
  subfolder names. A folder holding images and no class subfolders is one class.
* ``list_file(path)``: one ``<image path> <class index>`` per line (paths relative to the
  list file's folder unless absolute; ``#`` comments and blank lines skipped).
* ``tfds_dataset(name)``: a tensorflow-datasets dataset (imported only here; a clear error
  names the package when it is missing).

``open_dataset(spec)`` picks one: ``tfds:<name>[:<split>]``, a folder, or a list file.

``BatchIterator`` yields ``(images, labels)``: images (B, R, R, 3) float32 NHWC in [-1, 1],
labels (B,) int32. Sample ``p`` of the stream (counting from 0 over the whole run) is the
``p % N``-th image of epoch ``p // N``'s permutation, and its random crop is drawn from a
generator seeded by (seed, epoch, p % N), so the stream is a function of (seed, position)
alone: a run resumed at position p sees exactly what the uninterrupted run saw.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class DataError(ValueError):
    """A data source that cannot be used, with the reason."""


@dataclasses.dataclass
class Dataset:
    """Labelled images. ``sources[i]`` is a path or an (H, W, C) uint8 array."""

    sources: list[Any]
    labels: np.ndarray
    class_names: list[str]
    description: str = ""

    def __post_init__(self):
        self.labels = np.asarray(self.labels, np.int32).reshape(-1)
        if len(self.sources) == 0:
            raise DataError(f"{self.description or 'dataset'} holds no images")
        if len(self.sources) != len(self.labels):
            raise DataError(f"{len(self.sources)} images but {len(self.labels)} labels")
        if self.labels.min() < 0 or self.labels.max() >= len(self.class_names):
            raise DataError(
                f"{self.description}: labels must lie in [0, {len(self.class_names)}), got "
                f"[{self.labels.min()}, {self.labels.max()}]"
            )

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def load(self, index: int) -> Image.Image:
        """Image ``index`` as an RGB PIL image."""
        src = self.sources[index]
        if isinstance(src, np.ndarray):
            arr = src[..., 0] if src.ndim == 3 and src.shape[-1] == 1 else src
            return Image.fromarray(np.asarray(arr, np.uint8)).convert("RGB")
        try:
            with Image.open(src) as img:
                return img.convert("RGB")
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read image {src}: {err}") from None


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def image_folder(root: str | os.PathLike) -> Dataset:
    """``root/<class>/<image>``; classes are the sorted names of the subfolders that hold
    images. Images directly in ``root`` (and no class subfolders) make one class."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    class_dirs = sorted(
        d for d in root.iterdir() if d.is_dir() and any(_is_image(f) for f in d.rglob("*"))
    )
    sources, labels = [], []
    if class_dirs:
        names = [d.name for d in class_dirs]
        for label, d in enumerate(class_dirs):
            files = sorted(f for f in d.rglob("*") if _is_image(f))
            sources += files
            labels += [label] * len(files)
    else:
        files = sorted(f for f in root.iterdir() if _is_image(f))
        names = [root.name or "images"]
        sources, labels = files, [0] * len(files)
    if not sources:
        raise DataError(
            f"no images found in {root}: expected class subfolders {root}/<class>/ holding "
            f"images ({', '.join(IMAGE_EXTENSIONS)})"
        )
    return Dataset(sources, np.asarray(labels), names, description=f"image folder {root}")


def list_file(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Dataset:
    """A list file of ``<image path> <class index>`` lines (ImageNet's ``val.txt`` style).

    Relative paths are taken from ``root``, or else from the list file's folder. Paths may
    hold spaces: the class is the last field of the line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"list file {path} does not exist")
    base = Path(root) if root is not None else path.parent
    sources, labels = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{path}:{n}: expected '<image path> <class>', got {line!r}")
        try:
            label = int(parts[1])
        except ValueError:
            raise DataError(f"{path}:{n}: class {parts[1]!r} is not an integer") from None
        if label < 0:
            raise DataError(f"{path}:{n}: class {label} is negative")
        image = Path(parts[0])
        image = image if image.is_absolute() else base / image
        if not image.is_file():
            raise DataError(f"{path}:{n}: image {image} does not exist")
        sources.append(image)
        labels.append(label)
    if not sources:
        raise DataError(f"list file {path} names no images")
    names = [str(i) for i in range(max(labels) + 1)]
    return Dataset(sources, np.asarray(labels), names, description=f"list file {path}")


def tfds_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | None = None,
    image_key: str = "image",
    label_key: str = "label",
) -> Dataset:
    """A tensorflow-datasets dataset, read into memory (uint8 arrays)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(
            "tfds data needs tensorflow-datasets: pip install tensorflow-datasets "
            "(and tensorflow, or array_record for tfds.data_source)"
        ) from None
    builder = tfds.builder(name, data_dir=data_dir)
    feature = builder.info.features[label_key]
    n_classes = int(feature.num_classes)
    class_names = list(getattr(feature, "names", None) or [str(i) for i in range(n_classes)])
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir)
        records: Sequence = [source[i] for i in range(len(source))]
    except Exception:  # no array_record files: fall back to the tf.data pipeline
        ds = tfds.load(name, split=split, data_dir=data_dir)
        records = list(tfds.as_numpy(ds))
    images = [np.asarray(r[image_key]) for r in records]
    labels = np.asarray([int(r[label_key]) for r in records])
    return Dataset(images, labels, class_names, description=f"tfds {name}:{split}")


def open_dataset(spec: str | os.PathLike, *, list_root: str | None = None) -> Dataset:
    """``tfds:<name>[:<split>]``, an image folder, or a list file."""
    text = os.fspath(spec)
    if text.startswith("tfds:"):
        parts = text.split(":")
        return tfds_dataset(parts[1], parts[2] if len(parts) > 2 and parts[2] else "train")
    path = Path(text)
    if path.is_dir():
        return image_folder(path)
    if path.is_file():
        return list_file(path, list_root)
    raise DataError(f"{text} is neither a folder, a list file nor tfds:<name>")


# --------------------------------------------------------------------------- transforms
def preprocess(
    image: Image.Image,
    resolution: int,
    rng: np.random.Generator | None = None,
    *,
    min_scale: float = 0.8,
    flip: bool = True,
) -> np.ndarray:
    """A square crop resized to ``resolution``: (R, R, 3) float32 in [-1, 1].

    With ``rng`` the crop is random: a square of side ``s * short edge`` (s uniform in
    [min_scale, 1]) at a uniform position, mirrored with probability 1/2 when ``flip``.
    Without it, the centre square of the short edge (BigGAN's CenterCropLongEdge).
    """
    w, h = image.size
    short = min(w, h)
    if rng is None:
        side, left, top, mirror = short, (w - short) / 2, (h - short) / 2, False
    else:
        side = short * rng.uniform(min_scale, 1.0)
        left = rng.uniform(0, w - side)
        top = rng.uniform(0, h - side)
        mirror = bool(flip and rng.random() < 0.5)
    box = (left, top, left + side, top + side)
    out = image.resize((resolution, resolution), Image.Resampling.LANCZOS, box=box)
    if mirror:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out, np.float32) / 127.5 - 1.0


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of epoch ``epoch`` (a function of seed and epoch only)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class BatchIterator(Iterator):
    """Endless ``(images, labels)`` batches from a Dataset, deterministic in (seed, position).

    images: (batch_size, R, R, 3) float32 NHWC in [-1, 1]; labels: (batch_size,) int32.
    ``start`` is the position (samples already consumed) to begin at; ``position`` is the
    next one. ``augment=False`` centre-crops; ``cache`` keeps decoded images in memory
    (reduced so their short edge is at most 2 R); ``workers`` threads decode a batch;
    ``prefetch`` batches are prepared ahead in a background thread (0 = none).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        resolution: int,
        *,
        seed: int = 0,
        start: int = 0,
        augment: bool = True,
        min_scale: float = 0.8,
        flip: bool = True,
        cache: bool = False,
        workers: int = 2,
        prefetch: int = 2,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size, self.resolution = dataset, batch_size, resolution
        self.seed, self.augment, self.min_scale, self.flip = seed, augment, min_scale, flip
        self.position = start
        self._cache: dict[int, Image.Image] | None = {} if cache else None
        self._perm: tuple[int, np.ndarray] | None = None
        self._pool = ThreadPoolExecutor(max(1, workers)) if workers > 1 else None
        self._prefetch = prefetch
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._next_produce = start

    # -- sample p of the stream --------------------------------------------------------
    def _index(self, p: int) -> tuple[int, int, int]:
        n = len(self.dataset)
        epoch, i = divmod(p, n)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(n, self.seed, epoch))
        return epoch, i, int(self._perm[1][i])

    def _image(self, index: int) -> Image.Image:
        if self._cache is None:
            return self.dataset.load(index)
        img = self._cache.get(index)
        if img is None:
            img = self.dataset.load(index)
            limit = 2 * self.resolution
            if min(img.size) > limit:
                scale = limit / min(img.size)
                size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
                img = img.resize(size, Image.Resampling.LANCZOS)
            self._cache[index] = img
        return img

    def _sample(self, epoch: int, i: int, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, i, 1]) if self.augment else None
        return preprocess(
            self._image(index), self.resolution, rng, min_scale=self.min_scale, flip=self.flip
        )

    def batch_at(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """The batch whose first sample is stream position ``position``."""
        where = [self._index(p) for p in range(position, position + self.batch_size)]
        if self._pool is not None:
            images = list(self._pool.map(lambda w: self._sample(*w), where))
        else:
            images = [self._sample(*w) for w in where]
        labels = self.dataset.labels[[w[2] for w in where]]
        return np.stack(images), np.asarray(labels, np.int32)

    # -- iteration ---------------------------------------------------------------------
    def _producer(self):
        try:
            while not self._stop.is_set():
                item = self.batch_at(self._next_produce)
                self._next_produce += self.batch_size
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # surfaced in __next__
            self._queue.put(err)

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        if self._stop.is_set():
            raise RuntimeError("this BatchIterator is closed")
        if self._prefetch <= 0:
            out = self.batch_at(self.position)
        else:
            if self._thread is None:
                self._queue = queue.Queue(self._prefetch)
                self._next_produce = self.position
                self._thread = threading.Thread(target=self._producer, daemon=True)
                self._thread.start()
            out = self._queue.get()
            if isinstance(out, BaseException):
                raise out
        self.position += self.batch_size
        return out

    def close(self):
        """Stop the prefetch thread and the decoding pool."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
