"""Start-candidate scoring speed by batch and ``select_batch``, side by side in one process.

    python experiments/bench_selection.py --resolution 64 --ch 16 --batches 1,4,8 \
        --select-batches 8,16,per-image-16 [--candidates 32] [--rounds 3] [--json]

The candidate search (``SolverConfig.select_num`` candidates per image, each rendered by G,
degraded by φ and scored on D's last three features) runs as passes of ``select_batch``
candidate images per device. ``per-image-16`` is the rule before 2026-11-30: 16 candidates
per image in every pass, so a batch of B images scores 16 B images at once (here:
``select_batch = 16 B``). For each (batch, select_batch) the random-weight model solves a
batch with no fine-tuning steps, with and without candidates, once each per round; the
fastest with minus the fastest without, over candidates x images, is the selection's
seconds per candidate per image. Every combination is compiled first, then timed in
rotation (drift affects each alike). (Before 2026-12-01 it was the median over rounds of
each round's difference, which a busy machine could turn negative.) One device (the CPU's
default), float32, the colorization preset's φ.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

# This script's folder is on sys.path when it runs as `python experiments/...`.
from bench_batching import add_common_arguments, random_setup

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

    combos = [(b, s) for b in batches for s in specs]
    for b, s in combos:  # compile
        solve(b, select_batch_for(s, b), args.candidates), solve(b, select_batch_for(s, b), 0)
    # The fastest of the rounds with candidates minus the fastest without: a run slowed by a
    # busy machine would otherwise skew (even flip the sign of) the difference.
    with_candidates = {c: [] for c in combos}
    without = {c: [] for c in combos}
    for _ in range(args.rounds):
        for b, s in combos:
            with_candidates[(b, s)].append(solve(b, select_batch_for(s, b), args.candidates))
            without[(b, s)].append(solve(b, select_batch_for(s, b), 0))
    rows = []
    for b, s in combos:
        sb = select_batch_for(s, b)
        seconds = min(with_candidates[(b, s)]) - min(without[(b, s)])
        ms = 1e3 * seconds / args.candidates / b
        rows.append({"batch": b, "select_batch": s, "ms_per_candidate_per_image": ms,
                     "images_per_pass": b * select_chunk(sb, b, args.candidates)})  # fmt: skip
    if args.json:
        print(json.dumps({"resolution": args.resolution, "ch": args.ch, "rows": rows,
                          "device": str(jax.devices()[0])}))  # fmt: skip
        return
    print(
        f"{args.resolution} px, ch {args.ch}, {args.candidates} candidates, "
        f"{jax.devices()[0].platform}; ms per candidate per image (fastest of {args.rounds} rounds)"
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
