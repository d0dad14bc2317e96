"""Time the DGP solver (random weights), optionally beside the PyTorch reference.

    python experiments/bench_solver.py --resolution 128 --ch 96 --preset colorization \
        --batch 1 --steps 5 --select 4 [--reference $DGP_REF] [--json]

Prints: compile seconds (first run minus a second, warm run of the same shapes), seconds per
solver step for the batch and per image, seconds per selection forward per candidate,
images per hour at the preset's full schedule (selection included), peak memory, and the
device. With ``--reference DIR`` (a checkout of the reference DGP repository, see
../shared/reference_tools/README.md) it runs ``ref_bench.py`` in a subprocess on the same
machine right after, and prints the ratios. ``--json`` prints one JSON line instead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

# This script's folder is on sys.path when it runs as `python experiments/...`.
from selection_timer import selection_seconds

import dgp_jax
from dgp_jax.nets.biggan import BigGANConfig
from dgp_jax.nets.per_image import CHOICES

# The candidate search is timed as the fastest of this many warm runs.
SELECT_REPEATS = 5
REF_TOOLS = Path(__file__).resolve().parents[1].parent / "shared" / "reference_tools"


def time_dgp_jax(args) -> dict:
    model_config = BigGANConfig(resolution=args.resolution, G_ch=args.ch, D_ch=args.ch)
    model = dgp_jax.random_biggan(model_config, jax.random.PRNGKey(0), init="N02")
    full = dgp_jax.SolverConfig.preset(args.preset, resolution=None)
    n = full.num_stages
    # The last stage: every group of G fine-tuned, as in the reference's ref_bench.py (and
    # what every step of a full schedule computes: Adam's moments run on for groups whose
    # rate is still 0, so their gradients are needed from the first step).
    # Candidates are scored in the product's default passes (select_batch by backend).
    config = full.replace(iterations=(0,) * (n - 1) + (args.steps,), select_num=args.select)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (args.batch, args.resolution, args.resolution, 3)).astype(
        np.float32
    )
    classes = np.arange(args.batch) % 1000

    def run(cfg):
        stamps = []

        def callback(step, total, info):
            jax.block_until_ready(info["record"])
            stamps.append(time.perf_counter())

        start = time.perf_counter()
        result = dgp_jax.restore(model, images, classes, cfg, jax.random.PRNGKey(1),
                                 callback=callback, precision=args.precision,
                                 lowering=args.lowering)  # fmt: skip
        jax.block_until_ready(result.params)
        return start, stamps + [time.perf_counter()]

    with selection_seconds() as select_s:
        cold_start, cold = run(config)
        warm_start, warm = run(config)
        steps = np.diff(warm[:-1])
        per_step = float(np.median(steps)) if len(steps) else float("nan")
        # More searches without steps, so that the fastest is not one slowed by a busy machine.
        no_steps = config.replace(iterations=(0,) * n)
        for _ in range(SELECT_REPEATS - 1):
            run(no_steps)
    per_select = min(select_s[1:], default=0.0) / max(1, args.select) / args.batch  # [0] compiled
    # The one-off setup: target features, per-image G copies, optimiser; no candidates.
    run(no_steps.replace(select_num=0))
    b_start, b = run(no_steps.replace(select_num=0))
    setup_s = b[-1] - b_start
    compile_s = (cold[-1] - cold_start) - (warm[-1] - warm_start)
    schedule = full.total_steps
    per_image_full = full.select_num * per_select + schedule * per_step / args.batch
    device = jax.devices()[0]
    mem = device.memory_stats() or {}
    peak = mem.get("peak_bytes_in_use")
    return {
        "impl": "dgp_jax",
        "device": f"{device.platform}:{device.device_kind}",
        "resolution": args.resolution,
        "ch": args.ch,
        "preset": args.preset,
        "batch": args.batch,
        "precision": args.precision,
        "lowering": args.lowering,
        "steps_timed": len(steps),
        "compile_s": round(compile_s, 2),
        "seconds_per_step": per_step,
        "seconds_per_step_per_image": per_step / args.batch,
        "seconds_per_select_forward": per_select,
        "setup_s": setup_s,
        "images_per_hour_full_schedule": 3600 / per_image_full,
        "full_schedule_steps": schedule,
        "full_schedule_select_num": full.select_num,
        "peak_device_bytes_per_image": None if peak is None else peak / args.batch,
        "peak_host_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def time_reference(args, ref_dir: str) -> dict:
    env = dict(os.environ, DGP_REF=ref_dir)
    mode = dgp_jax.SolverConfig.preset(args.preset, resolution=None).dgp_mode
    script = Path(args.reference_tools) / "ref_bench.py"
    cmd = [sys.executable, str(script), "--res", str(args.resolution), "--ch", str(args.ch),
           "--steps", str(args.steps), "--mode", mode, "--select", str(args.select)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"the reference run failed (exit {done.returncode}): "
                         f"{' '.join(cmd)}\n{tail}")  # fmt: skip
    out = done.stdout
    line = [s for s in out.splitlines() if s.startswith("reference")][-1]
    values = dict(re.findall(r"(\w+)=([\w.]+)", line))
    return {
        "impl": "reference",
        "seconds_per_step": float(values["s_per_step"]),
        "seconds_per_select_forward": float(values["s_per_select_forward"]),
        "threads": int(values["threads"]),
        "command": " ".join(cmd),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--ch", type=int, default=96)
    p.add_argument("--preset", default="colorization")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--select", type=int, default=4)
    p.add_argument("--precision", default="float32", choices=["float32", "tf32", "bfloat16"])
    p.add_argument("--lowering", default="auto", choices=list(CHOICES))
    p.add_argument("--reference", help="reference DGP checkout: time it too, same machine")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--reference_tools", default=str(REF_TOOLS),
        help="folder holding ref_bench.py (default ../shared/reference_tools)",
    )  # fmt: skip
    args = p.parse_args(argv)
    ours = time_dgp_jax(args)
    rows = [ours]
    if args.reference:
        ref = time_reference(args, args.reference)
        full = dgp_jax.SolverConfig.preset(args.preset, resolution=None)
        ref_image_s = (
            full.select_num * ref["seconds_per_select_forward"]
            + full.total_steps * (ref["seconds_per_step"])
        )
        ref["images_per_hour_full_schedule"] = 3600 / ref_image_s
        ours["speedup_per_step_per_image"] = (
            ref["seconds_per_step"] / ours["seconds_per_step_per_image"]
        )
        ours["speedup_images_per_hour"] = (
            ours["images_per_hour_full_schedule"] / ref["images_per_hour_full_schedule"]
        )
        rows.append(ref)
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
    else:
        for row in rows:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in row.items()))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
