"""The canonical weight files metrics read, and the error a missing one raises.

No metric downloads anything: the user places each file (its public URL is in the error and
in the README) in a folder, ``--nets DIR`` on the command line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple


class WeightFile(NamedTuple):
    """A published weight file: its file name, where it is downloaded from, the first hex
    digits of its sha256 (what torchvision and pytorch-fid put in the name), and the
    metric that reads it."""

    filename: str
    url: str
    sha256_prefix: str
    metric: str = ""


class MissingWeightsError(FileNotFoundError):
    """A metric's weight file is not where it was looked for; the message says which file,
    where to get it and which metric needs it."""


def locate(weights: WeightFile, path: str | os.PathLike | None) -> Path:
    """The weight file: ``path`` itself if it is a file, ``path/<filename>`` if it is a
    folder. A missing file raises :class:`MissingWeightsError`."""
    if path is None:
        raise MissingWeightsError(_message(weights, None))
    path = Path(path)
    candidate = path / weights.filename if path.is_dir() else path
    if not candidate.is_file():
        raise MissingWeightsError(_message(weights, candidate))
    return candidate


def require(path: str | os.PathLike | None, weights: WeightFile, metric: str) -> Path:
    """:func:`locate` for a file several metrics or methods read (a VGG16 trunk serves LPIPS
    and the perceptual losses): ``metric`` names the one asking."""
    return locate(weights._replace(metric=metric), path)


def _message(weights: WeightFile, looked_at: Path | None) -> str:
    where = f"{looked_at} does not exist" if looked_at else "no weight file or folder was given"
    return (
        f"metric {weights.metric!r} needs {weights.filename} (sha256 {weights.sha256_prefix}...): "
        f"{where}; download it from {weights.url} and put it in the --nets folder"
    )
