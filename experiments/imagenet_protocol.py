"""The paper's ImageNet-1k protocol: restore 1,000 validation images per task, report means.

Command (from the repository root; the 128 px BigGAN converted with ``dgp-jax convert``)::

    python experiments/imagenet_protocol.py --weights biggan128 \\
        --imagenet-dir /data/imagenet/val --out protocol/

or, with ImageNet read through tensorflow-datasets (``imagenet2012``, whose manual folder
holds ``ILSVRC2012_img_val.tar`` and the train tar)::

    python experiments/imagenet_protocol.py --weights biggan128 \\
        --tfds-manual-dir /data/imagenet/tars --out protocol/

The images are the 1,000 of ``../shared/data/imagenet_val_1k.txt`` (``file class`` per
line). The validation folder may be flat or split into class folders. Each task runs the
published 128 px schedule (``dgp_jax`` presets ``imagenet1k_128/*``):

    reconstruction  colorization  inpainting  SR_D_biased  SR_MSE_biased

and writes its images to ``OUT/<task>/`` with ``dgp_jax.runner`` (resumable: rerun the
command after an interruption and finished images are skipped). At the end it writes
``OUT/table.md`` and ``OUT/table.csv``: per task, the mean PSNR, SSIM, MSE and L1 over the
images done, as the reference computes them (colorization on the Lab merge, inpainting on
the centre hole, the others on the whole image).

What to expect: the full protocol is 5 tasks x 1,000 images, each a solve of 1,000 to
1,400 steps after scoring 500 start candidates, so it is long (not measured here: time one
batch with ``--limit`` first and scale; run one task per machine with ``--tasks``, or
spread a task with ``dgp-jax restore --num-processes``). A quick look, e.g. ``--limit 8
--set iterations=20 --set select_num=16``, gives numbers far below the paper's, since the
schedule is cut short. The printed table looks like::

    | task | images | PSNR | SSIM | MSE | L1 |
    | --- | --- | --- | --- | --- | --- |
    | reconstruction | 8/8 | ... | ... | ... | ... |
    ...

With ``--nets DIR`` (the metrics' weight files, README "Metrics") the table gains a column
per registered metric (``dgp_jax.metrics.registry``: niqe, resnet50, and lpips, fid, ...
where registered), each run's ``dgp-jax restore --metrics`` over its result files;
``--metrics`` picks some. ResNet-50 accuracy scores against the list's classes.

``--set`` overrides apply to every task. ``--list`` takes another list (``file class``),
e.g. to test on a handful of photos with a small model (classes must fit the model).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LIST = REPO.parent / "shared" / "data" / "imagenet_val_1k.txt"
# Paper task -> (dgp_mode, preset).
TASKS = {
    "reconstruction": ("reconstruct", "imagenet1k_128/reconstruct"),
    "colorization": ("colorization", "imagenet1k_128/colorization"),
    "inpainting": ("inpainting", "imagenet1k_128/inpainting"),
    "SR_D_biased": ("SR", "imagenet1k_128/SR_D_biased"),
    "SR_MSE_biased": ("SR", "imagenet1k_128/SR_MSE_biased"),
}
METRICS = ("psnr", "ssim", "mse", "l1")


def read_list(path: Path, limit: int | None) -> list[tuple[str, int]]:
    """``file class`` lines -> [(file name, class)], the first ``limit`` of them."""
    if not path.is_file():
        raise SystemExit(f"no image list at {path}")
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise SystemExit(f"{path}:{n}: expected 'file class', got {line!r}")
        entries.append((parts[0], int(parts[1])))
    return entries[:limit] if limit else entries


def locate_in_folder(folder: Path, names: list[str]) -> dict[str, Path]:
    """File name -> path in a validation folder, flat or with class subfolders."""
    if not folder.is_dir():
        raise SystemExit(f"--imagenet-dir {folder} is not a folder")
    found = {n: folder / n for n in names if (folder / n).is_file()}
    missing = set(names) - set(found)
    if missing:  # class-folder layout (val/n01440764/ILSVRC2012_val_00000293.JPEG)
        for path in folder.glob("*/*"):
            if path.name in missing:
                found[path.name] = path
    return found


def extract_from_tfds(manual_dir: Path, data_dir: Path | None, names: list[str],
                      dest: Path) -> dict[str, Path]:  # fmt: skip
    """Write the listed validation JPEGs, byte for byte, from tfds ``imagenet2012``.

    The JPEG bytes are kept undecoded (``SkipDecoding``) so the images go through the same
    PIL loader as the folder route; TF's decoder can differ from PIL's in the last bit.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise SystemExit(
            "--tfds-manual-dir needs tensorflow-datasets (and tensorflow), which are not "
            "installed: pip install tensorflow-datasets tensorflow, or extract "
            "ILSVRC2012_img_val.tar and pass --imagenet-dir"
        ) from None
    builder = tfds.builder("imagenet2012", data_dir=None if data_dir is None else str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    dataset = builder.as_dataset(split="validation", decoders={"image": tfds.decode.SkipDecoding()})
    wanted, found = set(names), {}
    dest.mkdir(parents=True, exist_ok=True)
    for example in tfds.as_numpy(dataset):
        name = example["file_name"].decode()
        if name in wanted:
            path = dest / name
            if not path.is_file():
                tmp = dest / f".{name}.tmp"
                tmp.write_bytes(example["image"])
                tmp.replace(path)
            found[name] = path
            if len(found) == len(wanted):
                break
    return found


def write_table(out: Path, rows: list[dict]) -> str:
    """table.md + table.csv; returns the markdown. Metrics beyond the reference's four
    (restore --metrics) come after them, in order of appearance."""
    extra = list(dict.fromkeys(k for r in rows for k in (r["mean"] or {}) if k not in METRICS))
    columns = [*METRICS, *extra]
    headers = ["PSNR", "SSIM", "MSE", "L1", *extra]
    lines = [
        "| task | images | " + " | ".join(headers) + " |",
        "| --- | --- | " + " | ".join("---" for _ in headers) + " |",
    ]
    for r in rows:
        m = r["mean"] or {}
        cells = [f"{m[k]:.4f}" if k in m else "-" for k in columns]
        lines.append(f"| {r['task']} | {r['done']}/{r['total']} | " + " | ".join(cells) + " |")
    markdown = "\n".join(lines) + "\n"
    (out / "table.md").write_text(markdown)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["task", "done", "total", "failed", *columns])
    for r in rows:
        m = r["mean"] or {}
        writer.writerow(
            [r["task"], r["done"], r["total"], r["failed"], *(m.get(k) for k in columns)]
        )
    (out / "table.csv").write_text(buffer.getvalue())
    return markdown


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, help="dgp_jax folder or G_ema_128.pth")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--imagenet-dir", type=Path, help="ImageNet validation image folder")
    src.add_argument(
        "--tfds-manual-dir",
        type=Path,
        help="tfds imagenet2012 manual folder (needs tensorflow-datasets)",
    )
    p.add_argument("--tfds-data-dir", type=Path, help="tfds data_dir (default tfds's)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--list", type=Path, default=DEFAULT_LIST, help="'file class' per line")
    p.add_argument(
        "--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}"
    )
    p.add_argument("--limit", type=int, help="only the first N images of the list")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="SolverConfig override for every task (see dgp-jax restore --set)",
    )
    p.add_argument("--nets", help="folder of the metrics' weight files: adds their columns")
    p.add_argument("--metrics", help="metrics to add (default with --nets: every registered "
                   "one; see dgp-jax evaluate)")  # fmt: skip
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="JAX compilation cache (see dgp-jax restore)")
    p.add_argument("--quiet", action="store_true")
    return p  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dgp_jax import runner

    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"unknown tasks {unknown}; tasks: {', '.join(TASKS)}")
    metrics = args.metrics
    if args.nets and not metrics:
        from dgp_jax.metrics import registry

        # (not the mask metrics: restore --metrics has no masks; the table's PSNR/SSIM
        # already score the centre hole)
        metrics = ",".join(
            n for n in registry.names() if n != "restoration" and n not in registry.MASK_METRICS
        )
    entries = read_list(args.list, args.limit)
    names = [n for n, _ in entries]
    try:
        runner.OutputDir.check_writable(args.out)
    except runner.RunError as err:
        raise SystemExit(str(err)) from None
    if args.imagenet_dir is not None:
        found = locate_in_folder(args.imagenet_dir, names)
    else:
        found = extract_from_tfds(args.tfds_manual_dir, args.tfds_data_dir, names,
                                  args.out / "_imagenet_val")  # fmt: skip
    # Missing files stay in the list: the runner reports each and the table counts them.
    source = args.imagenet_dir or args.out / "_imagenet_val"
    lines = [f"{found.get(n, source / n).resolve()} {c}" for n, c in entries]
    inputs = args.out / "inputs.txt"
    inputs.write_text("\n".join(lines) + "\n")

    runner.configure_compilation_cache(args.cache_dir)
    try:
        model = runner.load_model(args.weights)
    except runner.RunError as err:
        raise SystemExit(str(err)) from None
    rows, interrupted = [], False
    for task in tasks:
        mode, preset = TASKS[task]
        print(f"== {task} ({preset}): {len(entries)} images -> {args.out / task}", flush=True)
        options = runner.RunOptions(
            kind="restore", inputs=[str(inputs)], weights=args.weights, out=str(args.out / task),
            task=mode, preset=preset, sets=args.set, batch=args.batch, seed=args.seed,
            progress=not args.quiet, metrics=metrics, nets=args.nets,
        )  # fmt: skip
        try:
            report = runner.execute(options, model=model)
        except runner.RunError as err:
            print(f"{task}: error: {err}", file=sys.stderr)
            return 2
        summary = json.loads(report.summary.read_text())
        rows.append({"task": task, "done": summary["done"], "total": summary["total"],
                     "failed": summary["failed"], "mean": summary["mean"]})  # fmt: skip
        if report.interrupted:
            interrupted = True
            break
    markdown = write_table(args.out, rows)
    print(markdown, end="")
    print(f"table: {args.out / 'table.md'}, {args.out / 'table.csv'}")
    if interrupted:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    return 1 if any(r["failed"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
