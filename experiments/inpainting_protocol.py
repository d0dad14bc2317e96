"""Inpainting by hole ratio: images x mask buckets x methods, one table like AOT-GAN's.

Command for the held-out photos (the shipped 64 px model, AOT-GAN's buckets, DGP and its
MSE-only ablation, the ``wallpapers_64/inpainting`` schedule)::

    python experiments/inpainting_protocol.py --out results/inpainting_protocol

Each image of ``--list`` (default ``examples/heldout.txt``) gets, in every bucket of
``--buckets`` (default ``aot-gan``: hole ratios 0-10 % ... 50-60 %; ``co-mod-gan``:
[0, .2) ... [.8, 1); or a list like ``0-10,40-60``), its own free-form mask from
Co-Mod-GAN's generator (``dgp_jax.masks.bucket_masks(resolution, bucket, n_images,
--mask-seed)``: image i takes the bucket's mask i; the masks are written to
``OUT/masks/``, the same files ``dgp-jax masks`` writes). Every method restores every
(image, mask):

* ``dgp``: DGP with the preset (default the model size's inpainting preset), the
  list's classes, image keys from ``--seed`` and the image's name (as ``dgp-jax restore``);
* ``mse-only``: the same with the discriminator-feature loss off (``w_D_loss = 0``,
  ``w_mse`` = the preset's, 1 where it is 0), the ablation of the README's table;
* any other name registered in ``dgp_jax.baselines.METHODS`` (``restore(observed,
  degradation, *, seed, config)``), given the masked images and the per-image-mask φ.

A bucket's images are solved together, one mask per image (``degradations.inpainting``
with (B, H, W, 1) masks: the masks are data, so every bucket reuses one compiled program).
Per (method, bucket) the folder ``OUT/<method>/<bucket>/`` holds per image the composite
``<name>.png`` (the result in the hole, the original elsewhere, 8-bit), the raw result
``<name>.npy`` and a done marker; ``config.json`` holds the settings. Resumable: rerun the
command and finished (method, bucket, image) are skipped; other settings in an existing
folder are refused (``--force`` redoes them), as ``dgp-jax restore`` does.

The metrics (``--metrics``, names of ``dgp_jax.metrics.registry``; default
``inpainting_hole,aot_gan``) are computed at the end from the saved results, on the
composites, with the masks for those that take them: ``hole_psnr`` / ``hole_ssim`` (the
reference's hole metrics for any mask) and AOT-GAN's ``aot_l1`` / ``aot_psnr`` /
``aot_ssim`` on the 8-bit composite. A set metric (one value per set, FID and the like)
is reported per (method, bucket). ``--metric-option name.key=value`` passes settings to
a metric's factory (a weight file, say).

Outputs: ``OUT/table.md`` (one row per metric and method, one column per bucket, as
AOT-GAN's Table 1; L1 in percent), ``table.csv`` (one row per method and bucket),
``table.json`` (the table, every image's values and the settings) and
``OUT/sheet_<bucket>.png`` (one row per image: masked input, each method's composite,
original).

Expected result. The full command above (6 photos x 6 buckets x 2 methods, 200 steps and
100 start candidates per solve, a bucket's photos in one solve) ran in 19 minutes on
2026-11-29 on this project's 2-core CPU, about 15 s per image, and printed the README's
table, whose first rows are::

    | metric | method | 0-10 | 10-20 | 20-30 | 30-40 | 40-50 | 50-60 |
    | --- | --- | --- | --- | --- | --- | --- | --- |
    | hole PSNR | dgp | 19.77 | 15.06 | 17.38 | 14.97 | 15.11 | 14.90 |
    | hole PSNR | mse-only | 19.81 | 15.09 | 17.41 | 15.17 | 15.09 | 14.79 |

(DGP and MSE-only within 0.2 dB on this small model; the composite metrics fall as the
holes grow, while the hole metrics depend on which pixels the masks cover.)
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LIST = REPO / "examples" / "heldout.txt"
BUILTIN_METHODS = ("dgp", "mse-only")
LABEL = "inpainting"
# Metric names as the table heads them; AOT-GAN gives L1 in percent.
HEADS = {"hole_psnr": "hole PSNR", "hole_ssim": "hole SSIM", "aot_l1": "L1 (%)",
         "aot_psnr": "PSNR", "aot_ssim": "SSIM"}  # fmt: skip
PERCENT = {"aot_l1"}


# --------------------------------------------------------------------------- methods
def method_config(method: str, preset: str, sets: list[str]):
    """SolverConfig of a built-in method: the preset with ``--set``, then the ablation."""
    from dgp_jax.config import SolverConfig
    from dgp_jax.run.settings import parse_sets

    base = SolverConfig.preset(preset)
    base = base.replace(**parse_sets(sets, base))
    if base.dgp_mode != "inpainting":
        raise SystemExit(f"--preset {preset} is for {base.dgp_mode}, not inpainting")
    if method == "dgp":
        return base
    if method == "mse-only":
        return base.replace(
            w_D_loss=(0.0,) * base.num_stages,
            w_mse=tuple(float(w) if w > 0 else 1.0 for w in base.w_mse),
        )
    raise ValueError(method)


def check_methods(methods: list[str]) -> None:
    from dgp_jax import baselines

    known = sorted(set(BUILTIN_METHODS) | set(baselines.METHODS))
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(known)}")


def solve(method: str, model, images, classes, masks, names, args) -> np.ndarray:
    """(B, R, R, 3) results in [-1, 1] of one method on images with one mask per image."""
    from dgp_jax import degradations
    from dgp_jax.run.plan import image_key

    degradation = degradations.inpainting(masks[..., None])
    if method in BUILTIN_METHODS:
        import dgp_jax

        config = method_config(method, args.preset, args.set)
        keys = np.stack([image_key(args.seed, name) for name in names])
        result = dgp_jax.restore(model, images.astype(model.dtype), classes, config, keys,
                                 degradation=degradation, mesh=args.mesh)  # fmt: skip
        return np.asarray(result.images)
    from dgp_jax import baselines

    observed = np.asarray(degradation.target_fn(images))
    restore = baselines.get(method)
    options = args.method_options.get(method, {})
    return np.asarray(restore(observed, degradation, seed=args.seed, config=options))


def settings_of(method: str, args, model) -> dict:
    """What a (method, bucket) folder's results depend on, besides its masks."""
    from dgp_jax.run.markers import weights_id

    out = {"method": method, "seed": args.seed, "mask_seed": args.mask_seed,
           "weights_id": weights_id(model)}  # fmt: skip
    if method in BUILTIN_METHODS:
        out["config"] = method_config(method, args.preset, args.set).to_dict()
    else:
        out["config"] = args.method_options.get(method, {})
    return out


def fingerprint(settings: dict, masks: np.ndarray) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(masks, np.uint8).tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- one unit
def run_unit(folder, method, bucket, model, images, classes, names, masks, args) -> int:
    """Solve the (method, bucket) images not done yet; returns how many were solved."""
    from dgp_jax.images import encode_uint8
    from dgp_jax.metrics.inpainting import composite_uint8
    from dgp_jax.run.markers import done_marker, is_done
    from dgp_jax.run.settings import RunError

    settings = settings_of(method, args, model)
    fp = fingerprint(settings, masks)
    config_path = folder.path("config.json")
    if config_path.is_file() and not args.force:
        old = json.loads(config_path.read_text()).get("fingerprint")
        if old not in (None, fp):
            raise RunError(
                f"{folder.root} holds results of other settings; rerun with the same "
                "settings to resume, choose another --out, or pass --force"
            )
    folder.write_json("config.json", {**settings, "bucket": bucket.name, "fingerprint": fp})
    todo = [i for i, n in enumerate(names) if args.force or not is_done(folder, n, LABEL, fp)]
    for start in range(0, len(todo), args.batch):
        part = todo[start : start + args.batch]
        t = time.perf_counter()
        results = solve(method, model, images[part], classes[part], masks[part],
                        [names[i] for i in part], args)  # fmt: skip
        seconds = (time.perf_counter() - t) / len(part)
        for k, i in enumerate(part):
            raw = np.asarray(results[k], np.float32)
            composite = composite_uint8(raw, images[i], masks[i])
            buffer = io.BytesIO()
            np.save(buffer, raw)
            files = [f"{names[i]}.npy", f"{names[i]}.png"]
            folder.write_bytes(files[0], buffer.getvalue())
            folder.write_bytes(files[1], encode_uint8(composite))
            folder.write_json(done_marker(names[i], LABEL),
                              {"fingerprint": fp, "files": files, "seconds": seconds})  # fmt: skip
        if not args.quiet:
            print(f"  {method} {bucket.name}: {len(part)} images, {seconds:.1f} s per image",
                  flush=True)  # fmt: skip
    return len(todo)


# --------------------------------------------------------------------------- metrics
def evaluate(evaluators, composites, originals, masks) -> tuple[dict, dict]:
    """(per-image values {name: (B,)}, set values {name: float}) of every evaluator."""
    from dgp_jax.metrics import registry

    per_image, per_set = {}, {}
    for evaluator in evaluators:
        kwargs = {"masks": masks} if registry.takes_masks(evaluator) else {}
        for name, value in evaluator(composites, originals, **kwargs).items():
            value = np.asarray(value, np.float64)
            if value.ndim == 0:
                per_set[name] = float(value)
            else:
                per_image[name] = value.reshape(-1)
    return per_image, per_set


def parse_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """``name.key=value`` -> {name: {key: value}}."""
    from dgp_jax.run.settings import parse_value

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        head, eq, value = item.partition("=")
        name, dot, key = head.partition(".")
        if not (eq and dot and name and key):
            raise SystemExit(f"expected name.key=value, got {item!r}")
        out.setdefault(name, {})[key] = parse_value(value)
    return out


def mean(values) -> float:
    """Mean over the images that have a value: hole SSIM is NaN for holes thinner than its
    7x7 window (dgp_jax.metrics.inpainting), which small-hole buckets can hold."""
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    return float(np.mean(values)) if values.size else float("nan")


def write_tables(out: Path, rows: list[dict], bucket_names: list[str], methods: list[str],
                 metric_names: list[str]) -> str:  # fmt: skip
    """table.md (metric x method rows, bucket columns) and table.csv; returns the markdown."""
    by_key = {(r["method"], r["bucket"]): r for r in rows}
    lines = ["| metric | method | " + " | ".join(bucket_names) + " |",
             "| --- | --- | " + " | ".join("---" for _ in bucket_names) + " |"]  # fmt: skip
    for metric in metric_names:
        for method in methods:
            cells = []
            for bucket in bucket_names:
                value = by_key.get((method, bucket), {}).get("mean", {}).get(metric)
                if value is None or not np.isfinite(value):
                    cells.append("-")
                else:
                    scale = 100 if metric in PERCENT else 1
                    # dB, percent and FID to 2 decimals; SSIM, LPIPS, P-IDS and the like to 4
                    digits = 2 if "psnr" in metric or metric in PERCENT or metric == "fid" else 4
                    cells.append(f"{value * scale:.{digits}f}")
            lines.append(f"| {HEADS.get(metric, metric)} | {method} | " + " | ".join(cells) + " |")
    markdown = "\n".join(lines) + "\n"
    (out / "table.md").write_text(markdown)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "bucket", "images", "mean_hole_ratio", "seconds_per_image",
                     *metric_names])  # fmt: skip
    for r in rows:
        writer.writerow([r["method"], r["bucket"], r["images"], r["mean_hole_ratio"],
                         r["seconds_per_image"],
                         *(r["mean"].get(m) for m in metric_names)])  # fmt: skip
    (out / "table.csv").write_text(buffer.getvalue())
    return markdown


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--list", default=str(DEFAULT_LIST), help="images: 'path class' per line")
    p.add_argument("--weights", help="dgp_jax checkpoint or G_ema .pth (default: shipped model)")
    p.add_argument(
        "--buckets",
        default="aot-gan",
        help="aot-gan, co-mod-gan or a list in percent, e.g. 0-10,40-60",
    )
    p.add_argument(
        "--methods",
        default="dgp,mse-only",
        help="dgp, mse-only and the names of dgp_jax.baselines.METHODS",
    )
    p.add_argument(
        "--metrics", default="inpainting_hole,aot_gan", help="names of dgp_jax.metrics.registry"
    )
    p.add_argument(
        "--metric-option",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="a setting for a metric's factory",
    )
    p.add_argument(
        "--method-option",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="a setting of a registered method (its config mapping)",
    )
    p.add_argument("--preset", help="inpainting preset (default: the model size's)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="SolverConfig override for dgp and mse-only (see dgp-jax restore)",
    )
    p.add_argument("--limit", type=int, help="only the first N images of the list")
    p.add_argument("--seed", type=int, default=0, help="start latents (default 0)")
    p.add_argument("--mask-seed", type=int, default=0, help="masks (default 0)")
    p.add_argument("--batch", type=int, default=8, help="images solved together (default 8)")
    p.add_argument("--force", action="store_true", help="redo folders of other settings")
    p.add_argument("--cache-dir", help="JAX compilation cache (see dgp-jax restore)")
    p.add_argument("--quiet", action="store_true")
    return p  # fmt: skip


def main(argv: list[str] | None = None, *, model=None, mesh=None) -> int:
    args = build_parser().parse_args(argv)
    args.mesh = mesh
    from dgp_jax import masks as masks_lib
    from dgp_jax.images import image_grid, load_image, read_inputs, save_image
    from dgp_jax.metrics import registry
    from dgp_jax.metrics.inpainting import composite_uint8
    from dgp_jax.run.folder import OutputDir
    from dgp_jax.run.markers import is_done
    from dgp_jax.run.settings import RunError, default_preset

    methods = [m for m in args.methods.split(",") if m]
    check_methods(methods)
    try:
        buckets = masks_lib.parse_buckets(args.buckets)
    except ValueError as err:
        raise SystemExit(f"--buckets: {err}") from None
    metric_names = [m for m in args.metrics.split(",") if m]
    options = parse_options(args.metric_option)
    args.method_options = parse_options(args.method_option)
    try:
        evaluators = [registry.build(name, **options.get(name, {})) for name in metric_names]
    except ValueError as err:
        raise SystemExit(f"--metrics: {err}") from None
    entries = read_inputs([args.list])[: args.limit or None]
    if not entries:
        raise SystemExit(f"no images in {args.list}")
    names = [path.stem for path, _ in entries]
    if len(set(names)) != len(names):
        raise SystemExit(f"{args.list}: image names must be distinct")

    if model is None:  # a run from the command line (tests pass their model)
        import dgp_jax
        from dgp_jax.run.setup import configure_compilation_cache

        configure_compilation_cache(args.cache_dir)
        model = dgp_jax.load_biggan(args.weights) if args.weights else dgp_jax.load_default_biggan()
    res = model.config.resolution
    args.preset = args.preset or default_preset("inpainting", res)
    images = np.stack([load_image(path, res) for path, _ in entries])
    classes = np.asarray([max(cls, -1) for _, cls in entries])
    out = OutputDir.check_writable(args.out)
    record = masks_lib.write_bucket_masks(out / "masks", res, buckets, len(names), args.mask_seed)
    bucket_masks = {b.name: masks_lib.bucket_masks(res, b, len(names), args.mask_seed)
                    for b in buckets}  # fmt: skip

    rows, per_image_rows = [], []
    for bucket in buckets:
        keep = bucket_masks[bucket.name]
        ratios = masks_lib.hole_ratio(keep)
        for method in methods:
            if not args.quiet:
                print(f"== {method}, holes {bucket.name} %: {len(names)} images", flush=True)
            try:
                with OutputDir(out / method / bucket.name) as folder:
                    run_unit(folder, method, bucket, model, images, classes, names, keep, args)
                    fp = json.loads(folder.path("config.json").read_text())["fingerprint"]
                    done = [is_done(folder, n, LABEL, fp) for n in names]
            except RunError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
            if not all(done):
                raise SystemExit(f"{out / method / bucket.name}: not every image was solved")
            folder_path = out / method / bucket.name
            raw = np.stack([np.load(folder_path / f"{n}.npy") for n in names]).astype(np.float64)
            markers = [json.loads((folder_path / f"{n}_{LABEL}.done.json").read_text())
                       for n in names]  # fmt: skip
            composites = np.where(keep[..., None] == 1, images, raw)
            values, set_values = evaluate(evaluators, composites, images, keep)
            means = {k: mean(v) for k, v in values.items()} | set_values
            rows.append({"method": method, "bucket": bucket.name, "images": len(names),
                         "mean_hole_ratio": mean(ratios),
                         "seconds_per_image": mean([m["seconds"] for m in markers]),
                         "mean": means})  # fmt: skip
            for i, name in enumerate(names):
                per_image_rows.append({"method": method, "bucket": bucket.name, "image": name,
                                       "hole_ratio": float(ratios[i]),
                                       **{k: float(v[i]) for k, v in values.items()}})  # fmt: skip
        # The bucket's sheet: masked input | each method's composite | original, per image.
        observed = images * keep[..., None]
        tiles = [[observed[i]] + [
            composite_uint8(np.load(out / m / bucket.name / f"{n}.npy"), images[i], keep[i])
            / 127.5 - 1 for m in methods] + [images[i]] for i, n in enumerate(names)]  # fmt: skip
        save_image(image_grid(tiles), out / f"sheet_{bucket.name}.png")

    metric_keys = list(dict.fromkeys(k for r in rows for k in r["mean"]))
    markdown = write_tables(out, rows, [b.name for b in buckets], methods, metric_keys)
    (out / "table.json").write_text(json.dumps({
        "model": args.weights or "shipped 64 px model", "images": names,
        "preset": args.preset, "set": args.set, "seed": args.seed, "masks": record,
        "metrics": metric_names, "table": rows, "per_image": per_image_rows,
    }, indent=1) + "\n")  # fmt: skip
    print(markdown, end="")
    print(f"table: {out / 'table.md'}, table.csv, table.json; sheets: {out}/sheet_<bucket>.png "
          "(rows: masked input, " + ", ".join(methods) + ", original)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
