"""DGP against its two ablations on held-out photos, with the model shipped in dgp_jax.

    python experiments/default_model_table.py --out results/default_model

For each task (colorization, inpainting, x4 super-resolution) it restores the held-out
photos of ``examples/heldout.txt`` three ways, from the same start (same seed, so the same
start candidates):

* **DGP**: the task's ``wallpapers_64/*`` preset: z and G fine-tuned, stage by stage, on
  the discriminator-feature loss (+ MSE where the preset has it) and the latent prior;
* **latent only**: the same with the generator frozen (``update_G=False``): GAN inversion;
* **MSE only**: the same with G fine-tuned on MSE alone (``w_D_loss = 0`` in every stage,
  ``w_mse`` = the preset's, or 1 where the preset has 0).

(and with ``--methods dgp,dgp_bf16``, DGP with bfloat16 compute, to measure that mode)
and reports PSNR / SSIM against the originals as the reference computes them (colorization
on the Lab merge, inpainting on the centre hole, SR on the whole image). It writes
``table.md`` (the README's table), ``table.json`` (per image too), and ``sheet.png``: per
task the observation, the three results and the original, one column per photo.

``--batch`` images are solved together (default 1, as the published table was made);
image i always uses the key ``fold_in(PRNGKey(seed), i)``, so the numbers do not depend on
it beyond float rounding. ``--limit`` takes the first N photos.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np

import dgp_jax
from dgp_jax.images import image_grid, load_image, read_inputs, save_image

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"colorization": "wallpapers_64/colorization", "inpainting": "wallpapers_64/inpainting",
         "SR": "wallpapers_64/SR"}  # fmt: skip
METHODS = {"dgp": "DGP", "latent": "latent only", "mse": "MSE only",
           "dgp_bf16": "DGP, bfloat16"}  # fmt: skip


def method_config(preset: str, method: str, **overrides) -> dgp_jax.SolverConfig:
    from dgp_jax.baselines.dgp import ablation_config

    base = dgp_jax.SolverConfig.preset(preset, **overrides)
    names = {"DGP": "dgp", "DGP, bfloat16": "dgp", "latent only": "latent-only",
             "MSE only": "mse-only"}  # fmt: skip
    if method not in names:
        raise ValueError(method)
    return ablation_config(base, names[method])


def restore_in_batches(model, images, classes, config, seed: int, batch: int,
                       precision: str = "float32"):  # fmt: skip
    """restore() on ``batch`` images at a time; image i's key is fold_in(seed key, i), so the
    results do not depend on the batch size."""
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(
        np.arange(len(images))
    )
    parts = [
        dgp_jax.restore(
            model,
            images[i : i + batch],
            classes[i : i + batch],
            config,
            keys[i : i + batch],
            precision=precision,
        )  # fmt: skip
        for i in range(0, len(images), batch)
    ]
    return SimpleNamespace(
        images=np.concatenate([np.asarray(r.images) for r in parts]),
        degraded=np.concatenate([np.asarray(r.degraded) for r in parts]),
        metrics={k: np.concatenate([r.metrics[k] for r in parts]) for k in parts[0].metrics},
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--list", default=str(ROOT / "examples" / "heldout.txt"))
    p.add_argument("--weights", default=None, help="default: the shipped model")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--methods", default="dgp,latent,mse",
        help=f"comma-separated, of {', '.join(METHODS)} (dgp_bf16: DGP with "
        "precision='bfloat16', to measure that mode's effect)",
    )  # fmt: skip
    p.add_argument(
        "--batch", type=int, default=1,
        help="images per solve (1 is fastest on a CPU, see BENCHMARKS.md; more on a GPU)",
    )  # fmt: skip
    p.add_argument("--iterations", type=int, help="every stage's steps (quick look)")
    p.add_argument("--select_num", type=int, help="start candidates (quick look)")
    args = p.parse_args(argv)
    unknown = [k for k in args.methods.split(",") if k not in METHODS]
    if unknown:
        p.error(f"--methods: unknown {', '.join(unknown)} (known: {', '.join(METHODS)})")
    unknown = [t for t in args.tasks.split(",") if t not in TASKS]
    if unknown:
        p.error(f"--tasks: unknown {', '.join(unknown)} (known: {', '.join(TASKS)})")
    overrides = {}
    if args.iterations is not None:
        overrides["iterations"] = (args.iterations,) * 5
    if args.select_num is not None:
        overrides["select_num"] = args.select_num

    model = dgp_jax.load_biggan(args.weights) if args.weights else dgp_jax.load_default_biggan()
    res = model.config.resolution
    entries = read_inputs([args.list])
    if args.limit:
        entries = entries[: args.limit]
    images = np.stack([load_image(path, res) for path, _ in entries])
    classes = np.asarray([cls for _, cls in entries])
    names = [path.stem for path, _ in entries]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    table, sheet_rows = {}, []
    for task in args.tasks.split(","):
        table[task] = {}
        results = {}
        methods = [METHODS[k] for k in args.methods.split(",")]
        for method in methods:
            config = method_config(TASKS[task], method, **overrides)
            start = time.perf_counter()
            precision = "bfloat16" if method == "DGP, bfloat16" else "float32"
            result = restore_in_batches(model, images, classes, config, args.seed, args.batch,
                                        precision)  # fmt: skip
            seconds = time.perf_counter() - start
            m = result.metrics
            table[task][method] = {
                "psnr": float(np.mean(m["psnr"])), "ssim": float(np.mean(m["ssim"])),
                "psnr_per_image": dict(zip(names, map(float, m["psnr"]), strict=True)),
                "ssim_per_image": dict(zip(names, map(float, m["ssim"]), strict=True)),
                "seconds": seconds, "steps": config.total_steps,
            }  # fmt: skip
            results[method] = result
            row = table[task][method]
            print(f"{task:12s} {method:12s} PSNR {row['psnr']:.2f} SSIM {row['ssim']:.4f} "
                  f"({seconds:.0f} s)", flush=True)  # fmt: skip
        # The observation as the loss sees it (for SR: x4 down, then bilinearly back up).
        observation = np.asarray(results[methods[0]].degraded)
        sheet_rows += [list(observation)] + [
            list(np.asarray(results[m].images)) for m in methods
        ] + [list(images)]  # fmt: skip

    save_image(image_grid(sheet_rows), out / "sheet.png")
    lines = [
        "| task | method | PSNR | SSIM |",
        "| --- | --- | --- | --- |",
    ]
    for task, rows in table.items():
        for method, row in rows.items():
            lines.append(f"| {task} | {method} | {row['psnr']:.2f} | {row['ssim']:.4f} |")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    record = {"model": str(args.weights or dgp_jax.DEFAULT_MODEL), "images": names,
              "classes": classes.tolist(), "seed": args.seed, "table": table}  # fmt: skip
    (out / "table.json").write_text(json.dumps(record, indent=1))
    print(text + f"sheet: {out / 'sheet.png'} (rows per task: observation, "
          "the methods in table order, original)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
