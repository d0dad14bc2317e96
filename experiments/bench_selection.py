"""Start-candidate scoring speed by batch and ``select_batch``, side by side in one process.

    python experiments/bench_selection.py --resolution 64 --ch 16 --batches 1,4,8 \
        --select-batches 8,16,per-image-16 [--candidates 32] [--rounds 3] [--json]

The candidate search (``SolverConfig.select_num`` candidates per image, each rendered by G,
degraded by φ and scored on D's last three features) runs as passes of ``select_batch``
candidate images per device. ``per-image-16`` is the rule before 2026-11-30: 16 candidates
per image in every pass, so a batch of B images scores 16 B images at once (here:
``select_batch = 16 B``). For each (batch, select_batch) the random-weight model solves a
batch with no fine-tuning steps; the candidate search's own time (``selection_timer.py``)
over candidates x images is the selection's seconds per candidate per image. (Before
2026-12-01 it was a run with candidates minus one without, which a busy machine could turn
negative.) Every combination is compiled first, then timed in rotation (drift affects each
alike); medians over the rounds. One device (the CPU's default), float32, the colorization
preset's φ.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

# This script's folder is on sys.path when it runs as `python experiments/...`.
from bench_batching import add_common_arguments, random_setup
from selection_timer import selection_seconds

import dgp_jax
from dgp_jax.solve import select_chunk


def select_batch_for(spec: str, batch: int) -> int:
    if spec.startswith("per-image-"):
        return int(spec.removeprefix("per-image-")) * batch
    return int(spec)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(p, preset="colorization")
    p.add_argument("--select-batches", default="8,16,per-image-16",
                   help="candidate images per pass, or per-image-N: N per image")  # fmt: skip
    p.add_argument("--candidates", type=int, default=32, help="select_num")
    args = p.parse_args(argv)
    if args.candidates < 2:
        p.error("--candidates must be at least 2 (one candidate is taken as it is, unscored)")
    batches = [int(b) for b in args.batches.split(",")]
    specs = args.select_batches.split(",")
    cfg, model, mesh, images = random_setup(args.resolution, args.ch, batches)
    full = dgp_jax.SolverConfig.preset(args.preset, resolution=None)
    no_steps = full.replace(iterations=(0,) * full.num_stages)

    def solve(batch, select_batch, num):
        config = no_steps.replace(select_num=num, select_batch=select_batch)
        start = time.perf_counter()
        dgp_jax.restore(model, images[batch], np.arange(batch) % cfg.n_classes, config,
                        jax.random.PRNGKey(1), mesh=mesh)  # fmt: skip
        return time.perf_counter() - start

    def per_candidate(batch, select_batch):
        with selection_seconds() as seconds:
            solve(batch, select_batch, args.candidates)
        return seconds[0] / args.candidates / batch

    combos = [(b, s) for b in batches for s in specs]
    for b, s in combos:  # compile
        per_candidate(b, select_batch_for(s, b))
    times = {c: [] for c in combos}
    for _ in range(args.rounds):
        for b, s in combos:
            times[(b, s)].append(per_candidate(b, select_batch_for(s, b)))
    rows = []
    for b, s in combos:
        sb = select_batch_for(s, b)
        ms = 1e3 * float(np.median(times[(b, s)]))
        rows.append({"batch": b, "select_batch": s, "ms_per_candidate_per_image": ms,
                     "images_per_pass": b * select_chunk(sb, b, args.candidates)})  # fmt: skip
    if args.json:
        print(json.dumps({"resolution": args.resolution, "ch": args.ch, "rows": rows,
                          "device": str(jax.devices()[0])}))  # fmt: skip
        return
    print(
        f"{args.resolution} px, ch {args.ch}, {args.candidates} candidates, "
        f"{jax.devices()[0].platform}; ms per candidate per image (median of {args.rounds})"
    )
    print("| batch | select_batch | images per pass | ms |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['batch']} | {r['select_batch']} | {r['images_per_pass']} | "
            f"{r['ms_per_candidate_per_image']:.1f} |"
        )


if __name__ == "__main__":
    main()
