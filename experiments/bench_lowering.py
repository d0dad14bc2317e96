"""Time each lowering of the generator's per-image convolutions, layer by layer.

    python experiments/bench_lowering.py --resolution 64 --ch 16 --batch 4 [--json]

For every convolution shape of the generator at this size (3x3 and 1x1, at each block's
resolution and channels) and every lowering in ``dgp_jax.nets.per_image.LOWERINGS``, it
times one vmapped forward pass plus both gradients (what a solver step does with each
layer) for ``--batch`` images with their own kernels, float32 at full precision, and
prints milliseconds per layer, the fastest lowering, and what ``auto`` picks on this
backend. The lowerings are timed in rotation (a, b, c, d, a, b, ...), so a machine whose
load drifts affects each of them alike; the median of ``--repeats`` rounds is reported.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from dgp_jax.nets.biggan import BigGANConfig
from dgp_jax.nets.per_image import LOWERINGS, auto_lowering, conv2d, per_image_lowering


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


def layer_program(lowering: str, size: int, cin: int, cout: int, k: int, batch: int):
    """A compiled forward + input and kernel gradient for ``batch`` per-image kernels."""

    def loss(x, w, ct):
        return jnp.sum(conv2d(x, w) * ct)

    def step(x, w, ct):
        with per_image_lowering(lowering):
            return jax.vmap(jax.value_and_grad(loss, argnums=(0, 1)))(x, w, ct)

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, 1, size, size, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((batch, cout, cin, k, k)), jnp.float32)
    ct = jnp.asarray(rng.standard_normal((batch, 1, size, size, cout)), jnp.float32)
    compiled = jax.jit(step)
    jax.block_until_ready(compiled(x, w, ct))
    return lambda: jax.block_until_ready(compiled(x, w, ct))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--ch", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    config = BigGANConfig(resolution=args.resolution, G_ch=args.ch, D_ch=args.ch)
    backend = jax.default_backend()
    rows = []
    with jax.default_matmul_precision("float32"):
        for size, cin, cout, k in generator_conv_shapes(config):
            programs = {name: layer_program(name, size, cin, cout, k, args.batch)
                        for name in LOWERINGS}  # fmt: skip
            times = {name: [] for name in LOWERINGS}
            for _ in range(args.repeats):
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
    if args.json:
        print(json.dumps({"backend": backend, "batch": args.batch, "rows": rows}))
        return
    print(f"backend {backend}, batch {args.batch}, ms per layer (forward + both gradients)")
    print(f"{'layer':<24}" + "".join(f"{n:>10}" for n in LOWERINGS) + "   fastest    auto")
    for row in rows:
        cells = "".join(f"{row['ms'][n]:>10.2f}" for n in LOWERINGS)
        print(f"{row['shape']:<24}{cells}   {row['fastest']:<10} {row['auto']}")
    totals = {n: sum(r["ms"][n] for r in rows) for n in LOWERINGS}
    best = sum(min(r["ms"].values()) for r in rows)
    auto = sum(r["ms"][r["auto"]] for r in rows)
    print("total: " + ", ".join(f"{n} {v:.1f}" for n, v in totals.items())
          + f", per-layer best {best:.1f}, auto {auto:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
