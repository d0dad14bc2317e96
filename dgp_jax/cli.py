"""``dgp-jax``: convert checkpoints and restore images from the command line.

dgp-jax convert G_ema_128.pth D_128.pth --out biggan128
dgp-jax export biggan128 --generator G_out.pth --discriminator D_out.pth
dgp-jax restore --weights biggan128 --task colorization photos/ --out results/
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _parse_set(items: list[str]) -> dict:
    """``field=value`` overrides; lists comma-separated (``iterations=200,200,300``)."""
    import dataclasses

    from dgp_jax.config import STAGE_FIELDS, SolverConfig

    types = {f.name: f.type for f in dataclasses.fields(SolverConfig)}
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects field=value, got {item!r}")
        name, value = item.split("=", 1)
        if name not in types:
            raise SystemExit(f"--set: unknown field {name!r}; fields: {sorted(types)}")
        if name in STAGE_FIELDS or name == "iterations":
            out[name] = tuple(_scalar(v) for v in value.split(","))
        else:
            out[name] = _scalar(value)
    return out


def _scalar(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    return text


def cmd_convert(args) -> int:
    from dgp_jax import checkpoint

    overrides = _parse_set_model(args.set)
    t = time.perf_counter()
    out = checkpoint.convert(
        args.generator, args.discriminator, args.out, overrides=overrides, overwrite=args.force
    )
    meta = checkpoint.read_meta(out)
    print(f"converted in {time.perf_counter() - t:.1f} s -> {out}")
    print(json.dumps(meta["config"], sort_keys=True))
    return 0


def _parse_set_model(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects field=value, got {item!r}")
        name, value = item.split("=", 1)
        out[name] = _scalar(value)
    return out


def cmd_export(args) -> int:
    from dgp_jax import checkpoint

    checkpoint.export_pth(args.checkpoint, args.generator, args.discriminator)
    print(f"wrote {args.generator}" + (f" and {args.discriminator}" if args.discriminator else ""))
    return 0


def cmd_restore(args) -> int:
    import jax
    import numpy as np

    import dgp_jax
    from dgp_jax.images import ImageError, image_sheet, load_image, read_inputs, save_image

    model = dgp_jax.load_biggan(args.weights)
    res = model.config.resolution
    task = {"sr": "SR", "reconstruct": "reconstruct"}.get(args.task, args.task)
    preset = args.preset or {"SR": "SR", "colorization": "colorization",
                             "inpainting": "inpainting"}.get(task, "reconstruct")  # fmt: skip
    overrides = {"dgp_mode": task, "resolution": None, **_parse_set(args.set)}
    if args.factor is not None:
        overrides["factor"] = args.factor
    config = dgp_jax.SolverConfig.preset(preset, **overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1))

    entries = read_inputs(args.inputs)
    if args.class_index is not None:
        entries = [(p, args.class_index) for p, _ in entries]
    images, classes, names, failed = [], [], [], []
    for path, cls in entries:
        try:
            images.append(load_image(path, res))
        except (ImageError, FileNotFoundError) as err:
            print(f"skipped: {err}", file=sys.stderr)
            failed.append(str(path))
            continue
        classes.append(cls)
        names.append(path.stem)
    summary = {}
    key = jax.random.PRNGKey(args.seed)
    for start in range(0, len(images), args.batch):
        chunk = slice(start, start + args.batch)
        t = time.perf_counter()
        result = dgp_jax.restore(
            model, np.stack(images[chunk]).astype(model.dtype), np.asarray(classes[chunk]),
            config, jax.random.fold_in(key, start),
        )  # fmt: skip
        for i, name in enumerate(names[chunk]):
            save_image(result.images[i], out / f"{name}_{task}.png")
            save_image(result.degraded[i], out / f"{name}_{task}_degraded.png")
            save_image(
                image_sheet([images[start + i], result.degraded[i], result.images[i]]),
                out / f"{name}_{task}_sheet.png",
            )
            summary[name] = {k: float(v[i]) for k, v in (result.metrics or {}).items()}
            summary[name]["class"] = int(result.classes[i])
        print(f"images {min(start + args.batch, len(images))}/{len(images)} "
              f"({time.perf_counter() - t:.1f} s for this batch)")  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"results in {out}")
    if failed:
        print(f"{len(failed)} input(s) could not be read: {failed}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgp-jax", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="released .pth state dicts -> dgp_jax checkpoint folder")
    p.add_argument("generator", help="G_ema_*.pth or G_*.pth")
    p.add_argument("discriminator", nargs="?", help="D_*.pth (DGP needs it)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override an inferred architecture field, e.g. SN_eps=1e-8")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export", help="dgp_jax checkpoint folder -> .pth state dicts")
    p.add_argument("checkpoint")
    p.add_argument("--generator", required=True)
    p.add_argument("--discriminator")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("restore", help="restore images with DGP")
    p.add_argument("inputs", nargs="+", help="image files, folders, or list files (path [class])")
    p.add_argument("--weights", required=True, help="dgp_jax checkpoint folder or G_ema_*.pth")
    p.add_argument("--task", required=True,
                   choices=["colorization", "inpainting", "sr", "SR", "hybrid", "reconstruct",
                            "defense"])  # fmt: skip
    p.add_argument("--out", required=True)
    p.add_argument("--preset", help="a SolverConfig preset (default: the task's 128 px one)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a SolverConfig field; lists comma-separated")  # fmt: skip
    p.add_argument("--class", dest="class_index", type=int, help="class of every input")
    p.add_argument("--factor", type=int, help="super-resolution factor")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_restore)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, FileExistsError) as err:
        print(f"dgp-jax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
