"""Put a trained run into the package as dgp_jax's default model.

    python experiments/ship_default_model.py --run runs/wall64 --data data/wallpapers

Writes ``dgp_jax/weights/G_ema_wallpapers64.pth`` and ``D_wallpapers64.pth`` (the run's EMA
generator and its discriminator, float16 to halve the size; ``load_biggan`` casts them back
to float32), and ``wallpapers64.json``: class names, the files' sha256 (checked at every
load), model and training settings, the data record of ``prepare_wallpapers.py`` and the
final losses. With matplotlib installed it also draws the training curves to
``docs/default_model_curves.png`` and copies the last sample sheet to
``docs/default_model_samples.png``.

``--checkpoint runs/wall64/checkpoints/step_N`` ships a training checkpoint instead of the
run's final ``model/`` folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from dgp_jax import checkpoint
from dgp_jax.default_model import (
    DEFAULT_DISCRIMINATOR,
    DEFAULT_MODEL,
    RECORD,
    sha256,
)
from dgp_jax.train import CONFIG, LOG, SAMPLES, Trainer

ROOT = Path(__file__).resolve().parents[1]


def plot_curves(log_csv: Path, out_png: Path, window: int = 50) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_csv) as f:
        rows = list(csv.DictReader(f))
    step = np.array([float(r["step"]) for r in rows])
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    for key in ("G_loss", "D_loss_real", "D_loss_fake"):
        values = np.array([float(r[key]) for r in rows])
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(step[window - 1 :], smooth, label=key)
    ax.set_xlabel("G iteration")
    ax.set_ylabel(f"hinge loss ({window}-iteration mean)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a train_biggan.py run folder")
    p.add_argument("--data", required=True, help="the prepare_wallpapers.py folder")
    p.add_argument("--checkpoint", help="ship this training checkpoint instead of model/")
    args = p.parse_args(argv)
    run, data = Path(args.run), Path(args.data)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = run / "model"
        if args.checkpoint:
            model_dir = Trainer.resume(run, checkpoint=args.checkpoint).export(Path(tmp) / "m")
        config, _, _, meta = checkpoint.load(model_dir)
        DEFAULT_MODEL.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.export_pth(
            model_dir, DEFAULT_MODEL, DEFAULT_DISCRIMINATOR, dtype="float16", overwrite=True
        )  # replaces the shipped files

    train_config = json.loads((run / CONFIG).read_text())
    train_config.pop("model_config", None)  # recorded once, below
    with open(run / LOG) as f:
        log = list(csv.DictReader(f))
    data_record = json.loads((data / "DATA.json").read_text())
    last = log[-200:]
    record = {
        "name": "wallpapers64",
        "resolution": config.resolution,
        "classes": data_record["classes"],
        "files": {p.name: sha256(p) for p in (DEFAULT_MODEL, DEFAULT_DISCRIMINATOR)},
        "stored_dtype": "float16",
        "model_config": json.loads(config.to_json()),
        "trained_steps": meta.get("metadata", {}).get("trained_steps"),
        "train_config": train_config,
        "final_losses_mean_of_last_200_iterations": {
            k: float(np.mean([float(r[k]) for r in last]))
            for k in ("G_loss", "D_loss_real", "D_loss_fake")
        },
        "training_images_per_s": float(np.median([float(r["images_per_s"]) for r in last])),
        "data": data_record,
    }
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {DEFAULT_MODEL}, {DEFAULT_DISCRIMINATOR} and {RECORD}")

    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    samples = sorted((run / SAMPLES).glob("step_*.png"))
    if samples:
        shutil.copy(samples[-1], docs / "default_model_samples.png")
    try:
        plot_curves(run / LOG, docs / "default_model_curves.png")
    except ImportError:
        print("matplotlib is not installed: no curve plot (pip install matplotlib)")
    else:
        print(f"wrote {docs / 'default_model_curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
