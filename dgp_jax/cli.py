"""``dgp-jax``: convert checkpoints, restore and edit images from the command line.

dgp-jax convert G_ema_128.pth D_128.pth --out biggan128
dgp-jax export biggan128 --generator G_out.pth --discriminator D_out.pth
dgp-jax restore --weights biggan128 --task colorization photos/ --out results/
dgp-jax restore --task SR photos/ --out results/     # the shipped 64 px model
dgp-jax jitter|morph|transfer --weights biggan128 photos/ --out edits/
dgp-jax compare --task SR --methods dgp,latent-only,mse-only,dip,bicubic photos/ --out cmp/
dgp-jax evaluate results/ --reference photos/ --metrics psnr,ssim,niqe --nets nets/
dgp-jax masks --size 64 --buckets aot-gan --per-bucket 6 --seed 0 --out masks/

The batch commands are resumable: rerun the same command after an interruption and
finished images are skipped. Exit codes: 0 all done, 1 some inputs failed (listed in the
summary), 2 a setup error before any work, 130 interrupted. The logic lives in
``dgp_jax.runner``; this module only parses arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# dgp_jax.nets.per_image.CHOICES, spelled out so that --help does not import JAX (tested).
LOWERINGS = ["auto", "vmap", "im2col", "shifted", "unrolled"]

DESCRIPTION = (
    "dgp-jax: convert checkpoints, restore and edit images with Deep Generative Prior "
    "(a pretrained BigGAN as the prior)."
)


def cmd_convert(args) -> int:
    from dgp_jax import checkpoint
    from dgp_jax.runner import RunError

    overrides = _parse_set_model(args.set)
    if Path(args.out).exists() and not args.force:
        raise RunError(f"{args.out} exists; pass --force to replace it")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise RunError(f"--out {args.out} is a file; --force replaces a checkpoint folder only")
    from dgp_jax.run.folder import OutputDir

    # The folder the checkpoint goes into, before the weights are read (under a file it
    # failed after them with a bare "[Errno 17] File exists").
    OutputDir.check_writable(Path(args.out).absolute().parent, keep=False)
    t = time.perf_counter()
    out = checkpoint.convert(
        args.generator, args.discriminator, args.out, overrides=overrides, overwrite=args.force
    )
    meta = checkpoint.read_meta(out)
    print(f"converted in {time.perf_counter() - t:.1f} s -> {out}")
    print(json.dumps(meta["config"], sort_keys=True))
    return 0


def _parse_set_model(items: list[str]) -> dict:
    """``--set field=value`` for BigGANConfig, each value checked against its field's type
    (text fields such as G_attn=64 stay text; unknown fields are named by the conversion)."""
    import dataclasses

    from dgp_jax.checks import fits_field_type
    from dgp_jax.nets.biggan import BigGANConfig
    from dgp_jax.runner import RunError, parse_value

    types = {f.name: f.type for f in dataclasses.fields(BigGANConfig)}
    takes = {"int": "an integer", "float": "a number", "bool": "true or false"}
    out = {}
    for item in items:
        if "=" not in item:
            raise RunError(f"--set expects field=value, got {item!r}")
        name, text = item.split("=", 1)
        kind = types.get(name)
        value = text if kind == "str" else parse_value(text)
        if kind is not None and not fits_field_type(kind, value):
            raise RunError(f"--set {item}: {name} takes {takes[kind]}, got {text!r}")
        out[name] = value
    return out


def cmd_export(args) -> int:
    from dgp_jax import checkpoint
    from dgp_jax.runner import RunError

    try:
        checkpoint.export_pth(args.checkpoint, args.generator, args.discriminator,
                              dtype=args.dtype, overwrite=args.force)  # fmt: skip
    except FileExistsError as err:
        raise RunError(str(err).replace("overwrite=True", "--force")) from None
    print(f"wrote {args.generator}" + (f" and {args.discriminator}" if args.discriminator else ""))
    return 0


def cmd_attack(args) -> int:
    from dgp_jax.run.attack import AttackOptions, parse_eps, run_attack

    step_size = None if args.step_size is None else parse_eps(args.step_size, "--step-size")
    options = AttackOptions(inputs=args.inputs, out=args.out, nets=args.nets,
                            resolution=args.resolution, method=args.method,
                            eps=parse_eps(args.eps), steps=args.steps, step_size=step_size,
                            seed=args.seed, batch=args.batch)  # fmt: skip
    record = run_attack(options)
    print(f"{record['images']} images -> {args.out}: ResNet-50 top-1 "
          f"{record['top1_clean']:.3f} clean, {record['top1_attacked']:.3f} attacked "
          f"(labels: {args.out}/labels.lst)")  # fmt: skip
    return 0


def cmd_evaluate(args) -> int:
    from dgp_jax.evaluate import evaluate

    scores, paths = evaluate(args.results, args.reference, args.metrics, nets=args.nets,
                             labels=args.labels, out=args.out, mode=args.mode,
                             masks=args.masks, mask_keep=args.mask_keep)  # fmt: skip
    print(paths["markdown"].read_text(), end="")
    print(f"per image: {paths['per_image']}; table: {paths['markdown']}, {paths['csv']}, "
          f"{paths['json']}")  # fmt: skip
    return 0


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _classes(text: str) -> list[int]:
    """``151,207,281`` or ranges ``151-160``."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, dash, hi = part.partition("-")
        if dash and lo and int(hi) < int(lo):  # it was an empty list, refused as "[]"
            raise argparse.ArgumentTypeError(f"range {part} is reversed: write {hi}-{lo}")
        out += range(int(lo), int(hi) + 1) if dash and lo else [int(part)]
    if not out:
        raise argparse.ArgumentTypeError(f"no class in {text!r}")
    return out


def cmd_run(args) -> int:
    """restore / jitter / morph / transfer: set up JAX, then dgp_jax.runner.execute."""
    from dgp_jax import runner

    # Before anything else: a bad --out must fail before JAX starts or processes wait.
    runner.OutputDir.check_writable(args.out, keep=False)
    runner.configure_compilation_cache(args.cache_dir)
    index, count = runner.init_distributed(args.coordinator, args.num_processes,
                                           args.process_id)  # fmt: skip
    if args.precision == "bfloat16":  # after init_distributed: this starts JAX's backend
        import jax

        if jax.default_backend() == "cpu":
            print("dgp-jax: note: --precision bfloat16 is slower than float32 on a CPU "
                  "(see BENCHMARKS.md); it is a speed mode for accelerators",
                  file=sys.stderr)  # fmt: skip
    manipulation = {}
    if args.command == "jitter":
        manipulation = {"stds": args.stds, "samples": args.samples}
    elif args.command == "morph":
        manipulation = {"frames": args.frames}
    elif args.command == "transfer":
        manipulation = {"classes": args.classes}
    options = runner.RunOptions(
        kind=args.command, inputs=args.inputs, weights=args.weights or "", out=args.out,
        task=args.task, preset=args.preset, sets=args.set, class_index=args.class_index,
        mask=args.mask, mask_keep=args.mask_keep, factor=args.factor, observed=args.observed,
        batch=args.batch, precision=args.precision, lowering=args.lowering, seed=args.seed,
        force=args.force,
        progress=not args.quiet,
        process_index=index, process_count=count, manipulation=manipulation,
        metrics=getattr(args, "metrics", None), nets=getattr(args, "nets", None),
    )  # fmt: skip
    report = runner.execute(options)
    what = "images" if args.command != "morph" else "pairs"
    print(
        f"{args.command}: {len(report.done)} {what} done now, {len(report.skipped)} already "
        f"done, {len(report.failed)} failed, of {report.total} (process {index + 1}/{count})"
    )
    print(f"results in {Path(args.out).resolve()} (summary: {report.summary.with_suffix('.csv')})")
    if report.interrupted:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    if report.failed:
        print(f"{len(report.failed)} failed:", file=sys.stderr)
        for name, message in report.failed.items():
            print(f"  {name}: {message}", file=sys.stderr)
        return 1
    return 0


def cmd_masks(args) -> int:
    from dgp_jax import masks

    try:
        buckets = masks.parse_buckets(args.buckets)
    except ValueError as err:
        raise ValueError(f"--buckets: {err}") from None
    if args.size < 8:
        raise ValueError(f"--size must be at least 8 pixels, got {args.size}")
    if args.per_bucket < 1:
        raise ValueError(f"--per-bucket must be at least 1, got {args.per_bucket}")
    from dgp_jax.run.folder import OutputDir
    from dgp_jax.runner import RunError

    # another run's masks.json and buckets would be overwritten or mixed with these
    if Path(args.out).is_dir() and any(Path(args.out).iterdir()):
        raise RunError(f"--out {args.out} is not empty: choose a new folder")
    OutputDir.check_writable(args.out, keep=False)
    from dgp_jax.checkpoint import atomic_directory

    try:
        # into a temp folder renamed at the end: a set that cannot be drawn, or a stopped
        # run, leaves no partial set (which a rerun would refuse as "not empty")
        with atomic_directory(Path(args.out).absolute()) as tmp:
            record = masks.write_bucket_masks(tmp, args.size, buckets, args.per_bucket,
                                              args.seed)  # fmt: skip
    except RuntimeError as err:  # a bucket missed in masks.MAX_DRAWS draws
        raise RunError(f"--buckets: {err}") from None
    for name, entry in record["buckets"].items():
        ratios = [m["hole_ratio"] for m in entry["masks"]]
        print(f"{name}: {len(ratios)} masks, hole ratio {min(ratios):.3f} to {max(ratios):.3f}")
    print(f"masks in {Path(args.out).resolve()} (white = keep; list: masks.json)")
    return 0


def _add_run_options(p: argparse.ArgumentParser, *, task_default: str | None) -> None:
    p.add_argument(
        "inputs", nargs="+", help="image files, folders, or list files (path [class] per line)"
    )
    p.add_argument(
        "--weights",
        help="dgp_jax checkpoint folder, or G_ema_*.pth with D_*.pth beside it (default: the "
        "64 px model shipped with dgp_jax, classes 0 flora, 1 landscape, 2 objects)",
    )
    p.add_argument("--out", required=True, help="output folder (created; reruns resume)")
    p.add_argument(
        "--task",
        required=task_default is None,
        default=task_default,
        choices=["colorization", "inpainting", "sr", "SR", "hybrid", "reconstruct", "defense"],
        help="degradation to undo" + (f" (default {task_default})" if task_default else ""),
    )
    p.add_argument(
        "--preset",
        help="SolverConfig preset (default: the task's published one for the "
        "model's resolution; for jitter, morph and transfer the reference's manipulation "
        "schedule, e.g. wallpapers_64/jitter; see dgp_jax.preset_names())",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a SolverConfig field; per-stage lists comma-separated "
        "(one value = every stage), e.g. --set iterations=200,200,300",
    )
    p.add_argument(
        "--class",
        dest="class_index",
        type=int,
        help="class of every input (default: from the list file, else unknown)",
    )
    p.add_argument(
        "--mask", help="inpainting mask PNG, exactly the model's resolution (not resized)"
    )
    p.add_argument(
        "--mask-keep",
        choices=["white", "black"],
        default="white",
        help="which mask pixels are kept (default white)",
    )
    p.add_argument("--factor", type=int, help="super-resolution factor (SR, hybrid)")
    p.add_argument(
        "--observed",
        action="store_true",
        help="inputs are already degraded (no metrics); default: originals",
    )
    p.add_argument(
        "--batch", type=int, default=None,
        help="images solved together (default: 8 per device)",
    )  # fmt: skip
    p.add_argument(
        "--precision", choices=["float32", "tf32", "bfloat16"], default="float32",
        help="float32 (default, the reference's numbers); tf32 / bfloat16: opt-in faster "
        "modes on GPUs/TPUs that change results (see BENCHMARKS.md)",
    )  # fmt: skip
    p.add_argument(
        "--lowering", choices=LOWERINGS, default="auto",
        help="how the per-image generators' convolutions are batched: auto (default: per "
        "layer, by backend and shape), vmap, im2col, shifted or unrolled; all give the same "
        "results up to float rounding, only speed differs (BENCHMARKS.md)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the start latents (default 0); each image's key also "
                        "depends on its name, not its position")  # fmt: skip
    p.add_argument(
        "--force",
        action="store_true",
        help="redo everything in --out even if it holds other settings' results",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--cache-dir",
        help="JAX compilation cache (default $DGP_JAX_CACHE or ~/.cache/dgp_jax/"
        "jax; 'none' disables)",
    )
    p.add_argument("--coordinator",
                   help="HOST:PORT of process 0: join with jax.distributed (without it, the "
                        "processes only split the inputs)")  # fmt: skip
    p.add_argument("--num-processes", type=int, help="processes in a multi-process run")
    p.add_argument("--process-id", type=int, help="this process's index")
    p.set_defaults(func=cmd_run)


def cmd_compare(args) -> int:
    from dgp_jax import compare, runner

    # the same persistent cache as restore's: a rerun or another --out skips the compiles
    runner.configure_compilation_cache(args.cache_dir)

    options = compare.CompareOptions(
        task=args.task, methods=[m for m in args.methods.split(",") if m], inputs=args.inputs,
        out=args.out, resolution=args.resolution, factor=args.factor, mask=args.mask,
        mask_keep=args.mask_keep, sets=args.set, metrics=[m for m in args.metrics.split(",") if m],
        nets=args.nets, seed=args.seed, batch=args.batch, progress=not args.no_progress,
    )  # fmt: skip
    report = compare.execute(options)
    print(Path(report.table).with_suffix(".md").read_text(), end="")
    print(f"table: {report.table}")
    if report.interrupted:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    return 1 if any(report.failed.values()) else 0


def build_parser() -> argparse.ArgumentParser:
    from dgp_jax import __version__

    parser = argparse.ArgumentParser(prog="dgp-jax", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"dgp-jax {__version__}")
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
    p.add_argument("checkpoint", help="dgp_jax checkpoint folder (from convert or training)")
    p.add_argument("--generator", required=True, metavar="G.pth",
                   help="where to write the generator's state dict")  # fmt: skip
    p.add_argument("--discriminator", metavar="D.pth",
                   help="where to write the discriminator's state dict (optional)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace existing .pth files")
    p.add_argument(
        "--dtype", choices=["float32", "float16"], help="store floating tensors in this type"
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("restore", help="restore images with DGP (resumable batch run)")
    _add_run_options(p, task_default=None)
    p.add_argument("--metrics", metavar="A,B",
                   help="more metrics of each result as summary.csv columns, e.g. "
                        "niqe,lpips (see dgp-jax evaluate; psnr, ssim, mse, l1 are always "
                        "there)")  # fmt: skip
    p.add_argument("--nets", help="folder of the --metrics' weight files, and of VGG16's "
                   "(vgg16-397923af.pth) for --set ftr_type=VGG or johnson")  # fmt: skip

    p = sub.add_parser("attack", help="adversarial copies of images against ResNet-50, for "
                       "--task defense")  # fmt: skip
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="images, folders or list files ('path [class]' per line), as restore "
                        "reads them")  # fmt: skip
    p.add_argument("--out", required=True, help="new folder: <name>.png, labels.lst, attack.json")
    p.add_argument("--nets", required=True, help="folder holding resnet50-0676ba61.pth")
    p.add_argument(
        "--resolution",
        type=int,
        required=True,
        help="the model's resolution: images are attacked as the solver reads them",
    )
    p.add_argument("--method", default="pgd", help="pgd (default) or fgsm")
    p.add_argument("--eps", default="8/255", help="L-infinity budget in [0, 1] pixel units "
                   "(default 8/255)")  # fmt: skip
    p.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
    p.add_argument("--step-size", help="PGD step, pixel units (default 2.5 * eps / steps)")
    p.add_argument("--seed", type=int, default=0, help="PGD's random start (default 0)")
    p.add_argument("--batch", type=int, default=8, help="images per attack batch (default 8)")
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("evaluate", help="score result images: per-image CSV and a table")
    p.add_argument("results", help="folder of result images, or a dgp-jax restore --out folder")
    p.add_argument("--reference", help="folder of the original images (matched by file name; "
                   "default for a restore folder: its inputs)")  # fmt: skip
    p.add_argument("--metrics", default="psnr,ssim",
                   help="comma-separated: psnr, ssim, mse, l1 and every registered "
                        "metric (niqe, resnet50, lpips, fid, kid, is, ids ...); "
                        "default psnr,ssim")  # fmt: skip
    p.add_argument("--nets", help="folder holding the metrics' weight files (README: Metrics)")
    p.add_argument("--labels", help="ImageNet class per image: 'file class' per line "
                   "(resnet50; a restore folder's own classes otherwise)")  # fmt: skip
    p.add_argument("--mode", default="reconstruct",
                   help="DGP mode psnr/ssim score as: reconstruct (whole image, default) or "
                        "inpainting (the centre hole)")  # fmt: skip
    p.add_argument("--masks", help="folder of inpainting masks, one per result (matched by "
                   "file name): psnr/ssim score each mask's hole, and the mask metrics "
                   "(inpainting_hole, aot_gan) can run")  # fmt: skip
    p.add_argument("--mask-keep", default="white", choices=["white", "black"],
                   help="which mask colour marks kept pixels")  # fmt: skip
    p.add_argument("--out", help="output folder (default RESULTS/evaluation)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("jitter", help="solve, then random jitters of each image's latent")
    _add_run_options(p, task_default="reconstruct")
    p.add_argument("--stds", type=_floats, default=[0.3, 0.5, 0.7],
                   help="noise scales, comma-separated (default 0.3,0.5,0.7)")  # fmt: skip
    p.add_argument("--samples", type=int, default=30, help="jitters per scale (default 30)")

    p = sub.add_parser("morph", help="solve, then morph each input into the next")
    _add_run_options(p, task_default="reconstruct")
    p.add_argument("--frames", type=int, default=11, help="frames per pair (default 11)")

    p = sub.add_parser("transfer", help="solve, then re-render each image as other classes")
    _add_run_options(p, task_default="reconstruct")
    p.add_argument("--classes", type=_classes, required=True,
                   help="target classes, e.g. 151,207,281 or 151-160")  # fmt: skip

    p = sub.add_parser("compare", help="several methods on the same observations, one table")
    p.add_argument("inputs", nargs="+", help="images, folders or list files (path [class])")
    p.add_argument("--task", required=True,
                   help="reconstruct, colorization, inpainting, SR, hybrid or defense")  # fmt: skip
    p.add_argument("--methods", default="dgp,latent-only,mse-only,dip,bicubic",
                   help="comma-separated, of dgp_jax.baselines.METHODS")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder (rerun to resume)")
    p.add_argument("--resolution", type=int, default=64,
                   help="image size (the DGP model's; default 64, the shipped model)")  # fmt: skip
    p.add_argument("--factor", type=int, help="SR factor (default 4; hybrid 2)")
    p.add_argument("--mask", help="inpainting mask image (default: the centre hole)")
    p.add_argument("--mask-keep", default="white", choices=["white", "black"],
                   help="which mask colour marks kept pixels")  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="a setting, e.g. dip.iterations=500, dgp.weights=biggan128")  # fmt: skip
    p.add_argument("--metrics", default="",
                   help="extra registered metrics, comma-separated (set metrics: one value "
                        "per method)")  # fmt: skip
    p.add_argument("--nets", help="folder of the metrics' weight files (as evaluate's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1, help="images per method call (default 1)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--cache-dir", help="JAX compilation cache (as restore's)")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser(
        "masks",
        help="free-form masks by hole ratio (Co-Mod-GAN's generator), as PNGs (white = keep)",
    )
    p.add_argument("--size", type=int, required=True, help="mask height and width in pixels")
    p.add_argument(
        "--buckets", default="aot-gan",
        help="hole-ratio buckets in percent, e.g. 0-10,10-20, or a set: aot-gan (= pconv: "
        "0-10 ... 50-60, the default) or co-mod-gan (0-20 ... 80-100)",
    )  # fmt: skip
    p.add_argument("--per-bucket", type=int, required=True, help="masks per bucket")
    p.add_argument("--seed", type=int, default=0, help="same seed, same masks (default 0)")
    p.add_argument("--out", required=True, help="output folder: OUT/<bucket>/NNNN.png")
    p.set_defaults(func=cmd_masks)
    return parser


def main(argv: list[str] | None = None) -> int:
    from dgp_jax.runner import RunError, sigterm_as_interrupt

    args = build_parser().parse_args(argv)
    try:
        # SIGTERM as Ctrl-C for every command: temp files and folders are removed on the
        # way out (convert, export, masks) instead of being left beside --out
        with sigterm_as_interrupt():
            return args.func(args)
    except RunError as err:
        print(f"dgp-jax {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, FileExistsError) as err:
        print(f"dgp-jax {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dgp-jax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
