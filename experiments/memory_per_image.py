"""Device memory of the solver step per image, from XLA's buffer assignment (no run).

    python experiments/memory_per_image.py --resolution 128 --ch 96 --batches 1,2

Compiles the fine-tuning step of the colorization preset's last stage (every group of G
trained) for each batch size and prints XLA's memory analysis: arguments (per-image G
copies, Adam state, targets and their features, D), temporaries (activations and
gradients) and the per-image growth between two batch sizes, then how many images fit in
a given device memory (``--device-gib``, default the H200's 141 GB less 10 %). On a CPU
this is XLA:CPU's assignment; a GPU's differs somewhat (bench_accelerator.py measures
the real peak there).
"""

from __future__ import annotations

import argparse
import functools

import jax

# This script's folder is on sys.path when it runs as `python experiments/...`.
from bench_accelerator import capturing_make_step, solve_with_step

import dgp_jax
from dgp_jax.nets.biggan import BigGANConfig


def step_memory(model, config, batch: int, lowering: str) -> dict:
    """XLA's memory analysis of the compiled step for ``batch`` images."""
    captured = {}
    # compiled ahead from the step's arguments: the analysis needs no second compile
    wrap = functools.partial(capturing_make_step, captured=captured, compile_ahead=True)
    solve_with_step(wrap, model, config, batch, lowering)
    analysis = captured["compiled"].memory_analysis()
    return {
        "arguments": analysis.argument_size_in_bytes,
        "outputs": analysis.output_size_in_bytes,
        "temporaries": analysis.temp_size_in_bytes,
        "aliased": analysis.alias_size_in_bytes,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--ch", type=int, default=96)
    p.add_argument("--batches", default="1,2")
    p.add_argument("--lowering", default="auto")
    p.add_argument("--device-gib", type=float, default=141e9 * 0.9 / 2**30)
    args = p.parse_args(argv)
    cfg = BigGANConfig(resolution=args.resolution, G_ch=args.ch, D_ch=args.ch)
    model = dgp_jax.random_biggan(cfg, jax.random.PRNGKey(0), init="N02")
    full = dgp_jax.SolverConfig.preset("colorization", resolution=None)
    config = full.replace(iterations=(0,) * (full.num_stages - 1) + (1,), select_num=0)
    batches = [int(b) for b in args.batches.split(",")]
    rows = {}
    for b in batches:
        rows[b] = step_memory(model, config, b, args.lowering)
        total = rows[b]["arguments"] + rows[b]["outputs"] - rows[b]["aliased"]
        total += rows[b]["temporaries"]
        print(f"batch {b}: " + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in rows[b].items())
              + f", in use {total / 2**30:.2f} GiB")  # fmt: skip
    lo, hi = batches[0], batches[-1]
    used = {b: r["arguments"] + r["outputs"] - r["aliased"] + r["temporaries"]
            for b, r in rows.items()}  # fmt: skip
    per_image = (used[hi] - used[lo]) / (hi - lo)
    fixed = used[lo] - lo * per_image
    for key in ("arguments", "temporaries"):
        growth = (rows[hi][key] - rows[lo][key]) / (hi - lo)
        print(f"per image, {key}: {growth / 2**30:.3f} GiB")
    fits = int((args.device_gib * 2**30 - fixed) // per_image)
    print(f"per image {per_image / 2**30:.3f} GiB, shared {fixed / 2**30:.3f} GiB: "
          f"{fits} images fit in {args.device_gib:.0f} GiB")  # fmt: skip


if __name__ == "__main__":
    main()
