r"""Deep Image Prior's speed on this machine: images per hour, one at a time and batched.

    PYTHONPATH=$PWD python experiments/bench_dip.py --preset super-resolution \
        --batches 1,4 --steps 5 [--lowerings auto,xla,im2col]

For each batch size: compile (not timed), one warm-up step, then ``--steps`` timed steps of
the vmapped, sharded DIP step (dgp_jax.baselines.dip) on 64 px images, with each
convolution lowering of ``--lowerings`` (``auto`` resolves per batch: ``dip.conv_lowering``).
Images per hour are extrapolated to the notebook's full schedule
(SCHEDULES[preset].iterations steps): a short measured run, not a full one.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dgp_jax import degradations
from dgp_jax.baselines import dip
from dgp_jax.nets import dip_skip


def bench(preset: str, batch: int, steps: int, lowering: str = "auto", size: int = 64) -> dict:
    schedule = dip.SCHEDULES[preset]
    spec = dip_skip.PRESETS[schedule.network]
    factor = 4 if preset.startswith("super-resolution") else None
    phi = (degradations.for_mode("SR", size, factor=4) if factor
           else degradations.for_mode("inpainting", size))  # fmt: skip
    mesh = dip._mesh(batch)
    resolved = dip.conv_lowering(lowering, batch // mesh.devices.size)
    init, stepper, _ = dip._programs(spec, schedule, phi, factor, mesh, (size, size), "float32",
                                     resolved)  # fmt: skip
    keys = np.stack([np.asarray(jax.random.PRNGKey(i)) for i in range(batch)])
    low = size // factor if factor else size
    target = jnp.zeros((batch, 1, low, low, 3), jnp.float32)
    hp = {"lr": jnp.float32(0.01), "reg_noise_std": jnp.float32(schedule.reg_noise_std)}
    state = init(keys)
    t0 = time.perf_counter()
    state, loss = stepper(state, target, jnp.int32(0), hp)
    jax.block_until_ready(loss)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for t in range(1, steps + 1):
        state, loss = stepper(state, target, jnp.int32(t), hp)
    jax.block_until_ready(loss)
    per_step = (time.perf_counter() - t0) / steps
    per_image_step = per_step / batch
    return {"preset": preset, "batch": batch, "lowering": lowering, "resolved": resolved,
            "steps_timed": steps,
            "compile_and_first_step_s": round(first, 1), "seconds_per_step": round(per_step, 3),
            "iterations": schedule.iterations,
            "images_per_hour": round(3600 / (per_image_step * schedule.iterations), 3),
            "load_average": os.getloadavg()[0], "devices": len(jax.local_devices())}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="super-resolution", choices=list(dip.SCHEDULES))
    p.add_argument("--batches", default="1,4")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--lowerings", default="auto", help="comma-separated: auto, xla, im2col")
    args = p.parse_args()
    for b in [int(v) for v in args.batches.split(",")]:
        for lowering in args.lowerings.split(","):
            print(json.dumps(bench(args.preset, b, args.steps, lowering)), flush=True)


if __name__ == "__main__":
    main()
