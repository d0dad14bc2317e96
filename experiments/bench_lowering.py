"""Time each lowering of the generator's per-image convolutions, layer by layer.

    python experiments/bench_lowering.py --resolution 64 --ch 16 --batch 4 [--json]

For every convolution shape of the generator at this size (3x3 and 1x1, at each block's
resolution and channels) and every lowering in ``dgp_jax.nets.per_image.LOWERINGS``, it
times one vmapped forward pass plus both gradients (what a solver step does with each
layer) for ``--batch`` images with their own kernels, and prints milliseconds per layer,
the fastest lowering, and what ``auto`` picks on this backend. The lowerings are timed in
rotation (a, b, c, d, a, b, ...), so a machine whose load drifts affects each of them
alike; the median of ``--repeats`` rounds is reported.

``--precision`` is the solver's (float32: full precision, the default; tf32: float32
arrays, TensorFloat-32 products; bfloat16: bfloat16 arrays). ``--batch`` takes several
batches (``8,32``) and ``--precision`` several precisions, measured in that order in one
process; ``--out FILE`` writes one JSON line per layer as it is measured (with its batch,
precision and device: a run cut short keeps what it measured); ``--budget-s`` starts no new
(batch, precision) table after that many seconds (for a leased accelerator)::

    python experiments/bench_lowering.py --resolution 128 --ch 96 --batch 32 \
        --precision float32,bfloat16 --out lowering.jsonl --budget-s 120
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from dgp_jax.nets.biggan import BigGANConfig
from dgp_jax.nets.per_image import LOWERINGS, auto_lowering, conv2d, per_image_lowering
from dgp_jax.solve import PRECISIONS as SOLVER_PRECISIONS


def generator_conv_shapes(config: BigGANConfig) -> list[tuple[int, int, int, int]]:
    """(spatial size, in channels, out channels, kernel) of every conv of G, deduplicated,
    in forward order."""
    shapes = []
    size = config.bottom_width
    for cin, cout in zip(config.g_in_channels, config.g_out_channels, strict=True):
        size *= 2
        shapes += [(size, cin, cout, 3), (size, cout, cout, 3), (size, cin, cout, 1)]
    shapes.append((size, config.g_out_channels[-1], 3, 3))
    return list(dict.fromkeys(shapes))


# The solver's precisions: matmul precision and array dtype (None: float32 arrays).
PRECISIONS = {
    name: (matmul, dtype or jnp.float32) for name, (matmul, dtype) in SOLVER_PRECISIONS.items()
}


def layer_program(lowering: str, size: int, cin: int, cout: int, k: int, batch: int,
                  dtype=jnp.float32):  # fmt: skip
    """A compiled forward + input and kernel gradient for ``batch`` per-image kernels."""

    def loss(x, w, ct):
        return jnp.sum(conv2d(x, w) * ct)

    def step(x, w, ct):
        with per_image_lowering(lowering):
            return jax.vmap(jax.value_and_grad(loss, argnums=(0, 1)))(x, w, ct)

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, 1, size, size, cin)), dtype)
    w = jnp.asarray(rng.standard_normal((batch, cout, cin, k, k)), dtype)
    ct = jnp.asarray(rng.standard_normal((batch, 1, size, size, cout)), dtype)
    compiled = jax.jit(step)
    jax.block_until_ready(compiled(x, w, ct))
    return lambda: jax.block_until_ready(compiled(x, w, ct))


def measure(config: BigGANConfig, batch: int, precision: str, lowerings, repeats: int,
            on_row=None) -> dict:  # fmt: skip
    """One table: ms per layer for each lowering, at one batch and precision (``on_row``
    is called with each layer's row as it is measured)."""
    backend = jax.default_backend()
    matmul_precision, dtype = PRECISIONS[precision]
    rows = []
    with jax.default_matmul_precision(matmul_precision):
        for size, cin, cout, k in generator_conv_shapes(config):
            programs = {name: layer_program(name, size, cin, cout, k, batch, dtype)
                        for name in lowerings}  # fmt: skip
            times = {name: [] for name in lowerings}
            for _ in range(repeats):
                for name, run in programs.items():
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
            ms = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
            rows.append({
                "shape": f"{size}x{size} {cin}->{cout} k{k}", "ms": ms,
                "fastest": min(ms, key=ms.get),
                "auto": auto_lowering(backend, size, size, cin, cout, k),
            })  # fmt: skip
            if on_row:
                on_row(rows[-1])
    return {**run_context(config), "batch": batch, "precision": precision, "rows": rows}


def run_context(config: BigGANConfig) -> dict:
    """What every row of a run shares: where it ran and the model's size."""
    return {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "resolution": config.resolution, "ch": config.G_ch}  # fmt: skip


def print_header(batch: int, precision: str, lowerings) -> None:
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), batch {batch}, "
          f"{precision}, ms per layer (forward + both gradients)")  # fmt: skip
    print(f"{'layer':<24}" + "".join(f"{n:>10}" for n in lowerings) + "   fastest    auto")


def print_row(row: dict) -> None:
    cells = "".join(f"{v:>10.2f}" for v in row["ms"].values())
    print(f"{row['shape']:<24}{cells}   {row['fastest']:<10} {row['auto']}", flush=True)


def print_totals(table: dict) -> None:
    names = list(table["rows"][0]["ms"])
    totals = {n: sum(r["ms"][n] for r in table["rows"]) for n in names}
    best = sum(min(r["ms"].values()) for r in table["rows"])
    auto = [r["ms"].get(r["auto"]) for r in table["rows"]]
    auto_text = f"{sum(auto):.1f}" if None not in auto else "- (not all its lowerings timed)"
    print("total: " + ", ".join(f"{n} {v:.1f}" for n, v in totals.items())
          + f", per-layer best {best:.1f}, auto {auto_text} ms", flush=True)  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--ch", type=int, default=16)
    parser.add_argument("--batch", default="4", help="images, or several: 8,32")
    parser.add_argument("--precision", default="float32",
                        help=f"of {','.join(PRECISIONS)}, or several")  # fmt: skip
    parser.add_argument("--lowerings", default=",".join(LOWERINGS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON lines, no tables")
    parser.add_argument("--out", help="also write each layer here as it is measured (JSON lines)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new table after this many seconds")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        parser.error(f"--batch: expected integers like 8,32, got {args.batch!r}")
    precisions = args.precision.split(",")
    lowerings = args.lowerings.split(",")
    for flag, values, allowed in (("--precision", precisions, PRECISIONS),
                                  ("--lowerings", lowerings, LOWERINGS)):  # fmt: skip
        bad = [v for v in values if v not in allowed]
        if bad:
            parser.error(f"{flag}: unknown {bad}; choose from {list(allowed)}")
    config = BigGANConfig(resolution=args.resolution, G_ch=args.ch, D_ch=args.ch)
    start = time.perf_counter()
    out = open(args.out, "w") if args.out else None  # noqa: SIM115 - written row by row
    context = run_context(config)
    for batch in batches:
        for precision in precisions:
            if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
                print(f"budget: batch {batch} {precision} not measured", file=sys.stderr)
                continue
            if not args.json:
                print_header(batch, precision, lowerings)

            def on_row(row, batch=batch, precision=precision):
                if out:
                    line = {**context, "batch": batch, "precision": precision, **row}
                    out.write(json.dumps(line) + "\n")
                    out.flush()
                if not args.json:
                    print_row(row)

            table = measure(config, batch, precision, lowerings, args.repeats, on_row)
            if args.json:
                print(json.dumps(table), flush=True)
            else:
                print_totals(table)
    if out:
        out.close()


if __name__ == "__main__":
    main()
