"""Per-image solver speed by lowering and batch size, side by side in one process.

    python experiments/bench_batching.py --resolution 64 --ch 16 \
        --preset wallpapers_64/colorization --batches 1,4,8 --lowerings auto,vmap [--json]

Builds the random-weight model once, compiles one solver step per (lowering, batch), then
times warm steps in rotation over all combinations (a machine whose load drifts affects
each alike) and reports the median seconds per step per image, and for each lowering the
per-image ratio batch 1 / batch B (> 1: batching pays). Float32 at full precision, one
device (the CPU's default: every image of the batch in one program).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np
from jax.sharding import Mesh

import dgp_jax
from dgp_jax.nets.biggan import BigGANConfig


def random_setup(resolution: int, ch: int, batches):
    """The random-weight model (G_ch = D_ch = ``ch``), a one-device mesh, and uniform random
    float32 images for each batch size."""
    cfg = BigGANConfig(resolution=resolution, G_ch=ch, D_ch=ch)
    model = dgp_jax.random_biggan(cfg, jax.random.PRNGKey(0), init="N02")
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    rng = np.random.default_rng(0)
    images = {b: rng.uniform(-1, 1, (b, resolution, resolution, 3)).astype(np.float32)
              for b in batches}  # fmt: skip
    return cfg, model, mesh, images


def add_common_arguments(p: argparse.ArgumentParser, preset: str) -> None:
    """The model, preset, batch sizes, rounds and output flags of the rotation benchmarks."""
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--ch", type=int, default=16)
    p.add_argument("--preset", default=preset)
    p.add_argument("--batches", default="1,4,8")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(p, preset="wallpapers_64/colorization")
    p.add_argument("--lowerings", default="auto,vmap,im2col,shifted,unrolled")
    p.add_argument("--steps", type=int, default=3, help="timed steps per solve")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    lowerings = args.lowerings.split(",")
    cfg, model, mesh, images = random_setup(args.resolution, args.ch, batches)
    full = dgp_jax.SolverConfig.preset(args.preset, resolution=None)
    # The last stage's settings (every group fine-tuned): the costliest steps.
    config = full.replace(iterations=(0,) * (full.num_stages - 1) + (args.steps + 1,), select_num=0)

    def solve(lowering, batch):
        stamps = []

        def callback(step, total, info):
            jax.block_until_ready(info["record"])
            stamps.append(time.perf_counter())

        dgp_jax.restore(model, images[batch], np.arange(batch) % cfg.n_classes, config,
                        jax.random.PRNGKey(1), mesh=mesh, callback=callback,
                        lowering=lowering)  # fmt: skip
        return np.diff(stamps)  # the first step (possibly compiling) is not timed

    combos = [(lowering, b) for lowering in lowerings for b in batches]
    compile_s = {}
    for combo in combos:
        start = time.perf_counter()
        solve(*combo)
        compile_s[combo] = time.perf_counter() - start
    times = {combo: [] for combo in combos}
    for _ in range(args.rounds):
        for combo in combos:
            times[combo].extend(solve(*combo))
    per_image = {c: float(np.median(t)) / c[1] for c, t in times.items()}
    rows = []
    for lowering in lowerings:
        base = per_image[(lowering, batches[0])]
        for b in batches:
            rows.append({"lowering": lowering, "batch": b,
                         "s_per_step_per_image": per_image[(lowering, b)],
                         "ratio_vs_first_batch": base / per_image[(lowering, b)],
                         "first_solve_s": compile_s[(lowering, b)]})  # fmt: skip
    device = jax.devices()[0]
    if args.json:
        print(
            json.dumps(
                {
                    "device": f"{device.platform}:{device.device_kind}",
                    "resolution": args.resolution,
                    "ch": args.ch,
                    "rows": rows,
                }
            )
        )
        return
    print(
        f"{device.platform} {args.resolution} px ch {args.ch}, s/step/image "
        f"(ratio: batch {batches[0]} / batch B per image)"
    )
    for r in rows:
        print(
            f"{r['lowering']:<9} batch {r['batch']:>3}: {r['s_per_step_per_image']:.4f} "
            f"(ratio {r['ratio_vs_first_batch']:.2f}, first solve {r['first_solve_s']:.1f} s)"
        )


if __name__ == "__main__":
    main()
