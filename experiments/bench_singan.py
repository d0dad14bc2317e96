"""SinGAN training speed: seconds per epoch at every scale of an image's pyramid, and the
images/hour it extrapolates to at the reference's schedule (2000 epochs per scale).

The cost of an epoch does not depend on the weights, so each scale's epoch is timed with
freshly initialised networks (the coarser scales too): compile, one more untimed call
(it compiles again for the sharded outputs), then ``--repeats`` timed epochs.
Extrapolation: hours per batch = 2000 * sum over scales of seconds per epoch / 3600
(compiles, the pyramid and sampling are left out; they are seconds to minutes).
Process CPU seconds per epoch are reported too: on a shared machine they vary less with
the other jobs than wall-clock seconds.

    python experiments/bench_singan.py --size 256 --batch 1 --json
    python experiments/bench_singan.py --size 256 --batch 4 --scales 9 --json
    python experiments/bench_singan.py --size 64 --batch 1 --scales 0 5 --lowering xla --json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dgp_jax.baselines import singan
from dgp_jax.nets import singan as nets


def epoch_seconds(the_plan, n: int, batch: int, settings: singan.Settings, repeats: int):
    shapes, sf = the_plan.shapes, the_plan.scale_factor
    mesh = singan.default_mesh(batch)
    keys = jax.random.split(jax.random.PRNGKey(0), batch)

    def nets_at(k, c, out):
        return jax.vmap(lambda key: nets.init(key, c, out_channels=out))(jax.random.split(k, batch))

    coarser = []
    for k in range(n):
        g, gs = nets_at(jax.random.PRNGKey(k), nets.channels_at(k), 3)
        h, w = shapes[k]
        coarser.append({"g": g, "g_stats": gs, "noise_amp": jnp.full((batch,), 0.1),
                        "z_opt": jnp.zeros((batch, h + 10, w + 10, 3))})  # fmt: skip
    c = nets.channels_at(n)
    g, gs = nets_at(jax.random.PRNGKey(100), c, 3)
    d, ds = nets_at(jax.random.PRNGKey(101), c, 1)
    h, w = shapes[n]
    state = {"g": g, "g_stats": gs, "d": d, "d_stats": ds,
             "g_opt": jax.vmap(singan.adam_init)(g), "d_opt": jax.vmap(singan.adam_init)(d),
             "z_opt": jnp.zeros((batch, h + 10, w + 10, 3), jnp.float32)}  # fmt: skip
    consts = {"real": jnp.zeros((batch, h, w, 3), jnp.float32),
              "z_prev": jnp.zeros((batch, h + 10, w + 10, 3), jnp.float32),
              "noise_amp": jnp.full((batch,), 0.1, jnp.float32), "coarser": coarser}  # fmt: skip
    step = singan._sharded(singan._epoch_fn(n, shapes, settings, sf), mesh, 3, 3)
    args = (jnp.float32(5e-4), jnp.float32(5e-4), jnp.bool_(False))
    t0 = time.perf_counter()
    state, out = step(state, consts, keys, *args)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t0
    # The first call's outputs are sharded where its inputs were not: the second call
    # compiles again for them. Keep both out of the timed epochs.
    state, out = step(state, consts, keys, *args)
    jax.block_until_ready(out)
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        state, out = step(state, consts, keys, *args)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return float(np.median(times)), float(np.median(cpu)), compile_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="square image side")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--scales", type=int, nargs="*", help="only these scales (default: all)")
    p.add_argument("--lowering", default="im2col", choices=nets.LOWERINGS)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    settings = singan.Settings(lowering=args.lowering)
    the_plan = singan.plan(args.size, args.size)
    scales = args.scales if args.scales else range(the_plan.num_scales)
    rows = []
    for n in scales:
        sec, cpu, comp = epoch_seconds(the_plan, n, args.batch, settings, args.repeats)
        rows.append({"scale": n, "shape": the_plan.shapes[n], "channels": nets.channels_at(n),
                     "s_per_epoch": sec, "cpu_s_per_epoch": cpu, "compile_s": comp,
                     "load_average": os.getloadavg()[0]})  # fmt: skip
        print(json.dumps(rows[-1]) if args.json else rows[-1], flush=True)
    total = sum(r["s_per_epoch"] for r in rows) * settings.iterations
    summary = {"size": args.size, "batch": args.batch, "lowering": args.lowering,
               "scales_timed": [r["scale"] for r in rows],
               "num_scales": the_plan.num_scales,
               "hours_per_batch_timed_scales": total / 3600,
               "images_per_hour_timed_scales": args.batch * 3600 / total}  # fmt: skip
    print(json.dumps(summary) if args.json else summary)


if __name__ == "__main__":
    main()
