"""Where the solver step's time goes: XLA ops of the compiled step, by kind and one by one.

    python experiments/profile_step.py --resolution 128 --ch 96 --batch 1 --steps 3 --top 20

Solves random images with a random BigGAN (the colorization preset's last stage, like
bench_solver.py) under ``jax.profiler``, dumps the step's optimised HLO, and prints the
op time per step summed by op kind (``ynn_fusion`` = matrix products and convolutions,
``transpose_copy_fusion`` = layout copies, ...) and the slowest ops with their shape and
the JAX operation they come from. Op times are summed over threads, so on a CPU their
total can exceed the step's wall time. This is how the weight-sized copies behind
BENCHMARKS.md's 2026-11-29 evening rows were found.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--ch", type=int, default=96)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--lowering", default="auto")
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="profile_step_")
    dump = os.path.join(work, "hlo")
    # Must be set before XLA starts: dump only the step's module, as text.
    flags = f" --xla_dump_to={dump} --xla_dump_hlo_module_re=jit_step --xla_dump_hlo_as_text"
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + flags

    import jax
    import numpy as np

    import dgp_jax
    from dgp_jax.nets.biggan import BigGANConfig

    config = BigGANConfig(resolution=args.resolution, G_ch=args.ch, D_ch=args.ch)
    model = dgp_jax.random_biggan(config, jax.random.PRNGKey(0), init="N02")
    full = dgp_jax.SolverConfig.preset("colorization", resolution=None)
    n = full.num_stages
    solver = full.replace(iterations=(0,) * (n - 1) + (args.steps,), select_num=0,
                          select_batch=1)  # fmt: skip
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (args.batch, args.resolution, args.resolution, 3))
    images = images.astype(np.float32)
    classes = np.arange(args.batch) % config.n_classes

    def run():
        result = dgp_jax.restore(model, images, classes, solver, jax.random.PRNGKey(1),
                                 lowering=args.lowering)  # fmt: skip
        jax.block_until_ready(result.params)

    run()  # compile
    start = time.perf_counter()
    run()
    warm = time.perf_counter() - start
    trace = os.path.join(work, "trace")
    jax.profiler.start_trace(trace, create_perfetto_trace=True)
    run()
    jax.profiler.stop_trace()

    events = json.load(gzip.open(glob.glob(f"{trace}/**/*.trace.json.gz", recursive=True)[0]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("args", {}).get("hlo_module") == "jit_step":
            per_op[e["name"]] += e.get("dur", 0) / 1e3 / args.steps  # ms per step
    hlo_files = glob.glob(f"{dump}/*jit_step*after_optimizations.txt")
    lines = {}
    for line in open(hlo_files[0]).read().splitlines() if hlo_files else []:
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+)", line)
        if m:
            meta = re.search(r'op_name="([^"]+)"', line)
            lines.setdefault(m.group(1), (m.group(2), meta.group(1) if meta else ""))
    kinds: collections.Counter = collections.Counter()
    for name, ms in per_op.items():
        kinds[re.sub(r"\.\d+$", "", name)] += ms
    print(f"{args.resolution} px, ch {args.ch}, batch {args.batch}, lowering {args.lowering}, "
          f"{jax.devices()[0].platform}: warm run of {args.steps} steps {warm:.2f} s (with "
          f"setup); step op time {sum(per_op.values()):.0f} ms")  # fmt: skip
    print("\nms/step  op kind")
    for kind, ms in kinds.most_common(12):
        print(f"{ms:7.1f}  {kind}")
    print("\nms/step  op  shape  from")
    for name, ms in per_op.most_common(args.top):
        shape, origin = lines.get(name, ("", ""))
        print(f"{ms:7.1f}  {name}  {shape}  {origin[-100:]}")
    print(f"\n(trace and HLO in {work})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
