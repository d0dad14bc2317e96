"""Train a class-conditional BigGAN on your images with the BigGAN-PyTorch recipe.

    python experiments/train_biggan.py --data DIR --resolution 64 --G_ch 32 --D_ch 32 \\
        --batch 64 --steps 20000 --out runs/x
    python experiments/train_biggan.py --out runs/x --resume            # after an interruption
    python experiments/train_biggan.py --out runs/x --resume --steps 40000   # train further

On ``--resume`` the run's recorded data, model and training settings apply (only ``--steps``
may change; ``--data`` may point at the same data moved elsewhere).

``--data`` is a folder with one subfolder of images per class, a list file of
``<image path> <class>`` lines, or ``tfds:<name>[:<split>]``; the number of classes is the
data's. Training runs on all local devices (``--devices N`` for the first N), the batch
sharded over them. The logic lives in ``dgp_jax.train`` and ``dgp_jax.data``.

It prints the data and model sizes, then every ``--log_every`` iterations a line::

    step 100/20000  G_loss 0.8123  D_loss_real 0.6021  D_loss_fake 0.5512  141.2 img/s

(img/s: real images D consumes per second, ``batch * num_D_steps`` per iteration), and at
the end the steady-state speed (after the compiling first iteration). It writes in ``--out``:

* ``log.csv``: the training curves, one row per iteration: step, G_loss, D_loss_real,
  D_loss_fake, seconds, images_per_s;
* ``samples/step_*.png``: G_ema sample sheets, one row per class shown, fixed z;
* ``checkpoints/step_*/``: the full training state (orbax), the newest ``--keep``;
* ``model/``: the EMA generator and the discriminator in dgp_jax's checkpoint format:
  ``dgp-jax restore --weights runs/x/model ...``, ``dgp_jax.load_biggan("runs/x/model")``,
  ``dgp-jax export runs/x/model --generator G_ema.pth --discriminator D.pth``;
* ``train_config.json``: the model and training configuration.

Ctrl-C saves a checkpoint before stopping; ``--resume`` continues the run exactly (the same
losses, step for step, as a run that was never interrupted).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh

from dgp_jax.data import DataError, open_dataset
from dgp_jax.nets.biggan import BigGANConfig
from dgp_jax.train import CONFIG, TrainConfig, Trainer, latest_checkpoint, train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train a class-conditional BigGAN (BigGAN-PyTorch recipe) with JAX.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d, m = TrainConfig(), BigGANConfig()
    p.add_argument("--data", help="class-subfolder image folder, list file, or tfds:<name>")
    p.add_argument("--list_root", help="folder that relative list-file paths start from")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    a = p.add_argument_group("model (BigGANConfig)")
    a.add_argument("--resolution", type=int, default=64)
    a.add_argument("--G_ch", type=int, default=32)
    a.add_argument("--D_ch", type=int, default=32)
    a.add_argument("--dim_z", type=int, default=m.dim_z)
    a.add_argument("--shared_dim", type=int, default=m.shared_dim)
    a.add_argument("--hier", action=argparse.BooleanOptionalAction, default=m.hier)
    a.add_argument("--G_attn", default="0", help="attention resolutions, e.g. 32 or 0 = none")
    a.add_argument("--D_attn", default="0")
    a.add_argument("--SN_eps", type=float, default=m.SN_eps)
    a.add_argument("--BN_eps", type=float, default=m.BN_eps)
    t = p.add_argument_group("training (TrainConfig)")
    t.add_argument("--batch", type=int, default=d.batch_size, help="D batch per D step")
    t.add_argument("--G_batch", type=int, default=d.G_batch_size, help="0 = --batch")
    t.add_argument("--num_D_steps", type=int, default=d.num_D_steps)
    t.add_argument("--G_lr", type=float, default=d.G_lr)
    t.add_argument("--D_lr", type=float, default=d.D_lr)
    t.add_argument("--G_B2", type=float, default=d.G_B2)
    t.add_argument("--D_B2", type=float, default=d.D_B2)
    t.add_argument("--adam_eps", type=float, default=d.adam_eps)
    t.add_argument("--ema_decay", type=float, default=d.ema_decay)
    t.add_argument("--ema_start", type=int, default=d.ema_start)
    t.add_argument("--z_std", type=float, default=d.z_std)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument(
        "--steps", type=int, default=None,
        help=f"G iterations in all (default {d.steps}; with --resume, the run's own)",
    )  # fmt: skip
    t.add_argument("--no_augment", action="store_true", help="centre crops, no flips")
    t.add_argument("--log_every", type=int, default=d.log_every)
    t.add_argument("--sample_every", type=int, default=d.sample_every)
    t.add_argument("--save_every", type=int, default=d.save_every)
    t.add_argument("--keep", type=int, default=d.keep_checkpoints, help="checkpoints kept")
    r = p.add_argument_group("runtime")
    r.add_argument("--devices", type=int, default=0, help="use the first N local devices")
    r.add_argument("--workers", type=int, default=2, help="image decoding threads")
    r.add_argument("--cache", action="store_true", help="keep decoded images in memory")
    return p


def _mesh(n: int) -> Mesh:
    devices = jax.local_devices()
    if n:
        if n > len(devices):
            raise SystemExit(f"--devices {n}: only {len(devices)} local devices")
        devices = devices[:n]
    return Mesh(np.array(devices), ("data",))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    mesh = _mesh(args.devices)
    if args.resume:
        if latest_checkpoint(out / "checkpoints") is None:
            raise SystemExit(f"--resume: no checkpoint under {out / 'checkpoints'}")
        saved = json.loads((out / CONFIG).read_text()) if (out / CONFIG).is_file() else {}
        data = args.data or saved.get("data")
        if data is None:
            raise SystemExit("--resume: give --data (the run folder does not record it)")
        # The run's saved model and training settings apply; only --steps may change.
        overrides = {} if args.steps is None else {"steps": args.steps}
        trainer = Trainer.resume(out, mesh=mesh, **overrides)
    else:
        if args.data is None:
            raise SystemExit("--data is required (or --resume)")
        data = args.data
        try:  # before the data is opened (a tfds set can take long)
            tc = TrainConfig(
                batch_size=args.batch, G_batch_size=args.G_batch, num_D_steps=args.num_D_steps,
                G_lr=args.G_lr, D_lr=args.D_lr, G_B2=args.G_B2, D_B2=args.D_B2,
                adam_eps=args.adam_eps, ema_decay=args.ema_decay, ema_start=args.ema_start,
                z_std=args.z_std, seed=args.seed, augment=not args.no_augment,
                steps=TrainConfig().steps if args.steps is None else args.steps,
                log_every=args.log_every, sample_every=args.sample_every,
                save_every=args.save_every, keep_checkpoints=args.keep,
            )  # fmt: skip
        except ValueError as err:
            raise SystemExit(f"training settings: {err}") from None
    try:
        dataset = open_dataset(data, list_root=args.list_root)
    except DataError as err:
        raise SystemExit(f"data: {err}") from None
    print(f"data: {dataset.description}: {len(dataset)} images, {dataset.n_classes} classes")

    if args.resume:
        trainer.meta["data"] = data
        print(f"resuming {out} at step {trainer.step} of {trainer.tc.steps}")
        summary = trainer.fit(dataset, workers=args.workers, cache=args.cache)
    else:
        try:
            config = BigGANConfig(
                resolution=args.resolution, G_ch=args.G_ch, D_ch=args.D_ch, dim_z=args.dim_z,
                shared_dim=args.shared_dim, n_classes=dataset.n_classes, hier=args.hier,
                G_attn=args.G_attn, D_attn=args.D_attn, SN_eps=args.SN_eps, BN_eps=args.BN_eps,
            )  # fmt: skip
        except ValueError as err:
            raise SystemExit(f"model settings: {err}") from None
        print(f"model: {config.to_json()}".replace("\n", ""))
        print(f"devices: {mesh.devices.size} x {mesh.devices.flat[0].platform}")
        try:
            trainer, summary = train(
                config, tc, dataset, out, mesh=mesh, workers=args.workers, cache=args.cache,
                meta={"data": data},
            )  # fmt: skip
        except FileExistsError as err:
            raise SystemExit(str(err)) from None
    speed = summary["images_per_s"]
    speed_text = f"{speed:.1f} images/s" if math.isfinite(speed) else "n/a (too few steps)"
    print(
        f"done: step {summary['steps']}; speed after the first (compiling) iteration "
        f"{speed_text}; first iteration {summary['compile_s']:.1f} s"
    )
    print(f"curves {out / 'log.csv'}; model {out / 'model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
