"""The weight files metrics need, and the error that says where to get a missing one.

No weights are downloaded by dgp_jax: the user places the canonical files (the ones the
reference packages download) and passes their paths or a folder holding them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple


class WeightFile(NamedTuple):
    """A canonical weight file: its file name, public URL and the start of its sha256."""

    name: str
    url: str
    sha256_prefix: str


def require(path: str | os.PathLike | None, weight: WeightFile, metric: str) -> Path:
    """``path`` as a Path if it is a file; else a FileNotFoundError naming the file, where to
    download it, its sha256 prefix and the metric that needs it."""
    if path is not None and Path(path).is_file():
        return Path(path)
    where = f"not found at {path}" if path is not None else "no path given"
    raise FileNotFoundError(
        f"metric {metric!r} needs the weight file {weight.name} ({where}); download it from "
        f"{weight.url} (sha256 {weight.sha256_prefix}...) and pass its path or the folder "
        "holding it"
    )
