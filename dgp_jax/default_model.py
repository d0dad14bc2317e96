"""Where the model shipped with dgp_jax lies, and its record (no JAX import: the CLI reads
this before JAX starts).

The model is a 64 px class-conditional BigGAN trained on photographs from Debian's wallpaper
packages (``weights/MODEL_CARD.md``): what ``dgp-jax`` uses when no ``--weights`` is given.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = WEIGHTS_DIR / "G_ema_wallpapers64.pth"
DEFAULT_DISCRIMINATOR = WEIGHTS_DIR / "D_wallpapers64.pth"
RECORD = WEIGHTS_DIR / "wallpapers64.json"


def default_model_info() -> dict[str, Any]:
    """The shipped model's record: class names, files and their sha256, data, training."""
    return json.loads(RECORD.read_text())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_default_model() -> None:
    """Raise ValueError naming the file when a shipped file is missing or altered (a
    damaged install), rather than letting a truncated tensor surface later."""
    if not RECORD.is_file():
        raise ValueError(f"the shipped model's record {RECORD} is missing: reinstall dgp_jax")
    expected = default_model_info().get("files", {})
    for path in (DEFAULT_MODEL, DEFAULT_DISCRIMINATOR):
        if not path.is_file():
            raise ValueError(f"the shipped model file {path} is missing: reinstall dgp_jax")
        if sha256(path) != expected.get(path.name):
            raise ValueError(
                f"the shipped model file {path} does not match its sha256 in {RECORD} "
                "(damaged or replaced): reinstall dgp_jax"
            )
