"""What a GPU compile has to tune: the solver step's matrix products and convolutions.

    python experiments/step_ops.py --resolution 128 --ch 96 --lowering im2col --batches 1,32

XLA:GPU autotunes every matrix product (cuBLAS algorithms and, by default, Triton tilings)
and every convolution (cuDNN algorithms) of a program when it compiles it, so the number of
distinct ones bounds how long a first compile takes there. This script lowers the
fine-tuning step of the colorization preset's last stage (every group of G trained; nothing
is compiled or run, so any batch is cheap) and counts the ``dot_general`` and
``convolution`` operations of its StableHLO, and how many distinct (operation, operand
shapes, result shape) there are. A GPU's ``auto`` runs every per-image layer as ``im2col``
(dgp_jax.nets.per_image), hence that default here.
"""

from __future__ import annotations

import argparse
import collections
import re

import jax

# This script's folder is on sys.path when it runs as `python experiments/...`.
from bench_accelerator import solve_with_step

import dgp_jax
from dgp_jax.nets.biggan import BigGANConfig

OPS = ("dot_general", "convolution")
_OP_LINE = re.compile(r"stablehlo\.(dot_general|convolution)\b.*?: \((.*?)\) -> (.*)$")


class _Lowered(Exception):
    """Stops the solve once its step is lowered (nothing is compiled or run)."""


def lowered_step_text(model, config, batch: int, lowering: str) -> str:
    """The StableHLO text of the solver's step for ``batch`` images."""
    captured = {}

    def lowering_only(make_step):
        def make(prog, tx, mesh):
            fn = make_step(prog, tx, mesh)

            def step(*args):
                captured["text"] = fn.lower(*args).as_text()
                raise _Lowered

            return step

        return make

    try:
        solve_with_step(lowering_only, model, config, batch, lowering)
    except _Lowered:
        pass
    return captured["text"]


def count_ops(text: str) -> dict:
    """{op: count} and {op: distinct (operands, result) signatures} of a StableHLO text."""
    counts, signatures = collections.Counter(), collections.defaultdict(set)
    for line in text.splitlines():
        match = _OP_LINE.search(line)
        if match:
            op, operands, result = match.groups()
            counts[op] += 1
            signatures[op].add((operands, result.strip()))
    return {op: {"count": counts[op], "distinct": len(signatures[op])} for op in OPS}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--ch", type=int, default=96)
    p.add_argument("--batches", default="1,32")
    p.add_argument("--lowering", default="im2col")
    args = p.parse_args(argv)
    cfg = BigGANConfig(resolution=args.resolution, G_ch=args.ch, D_ch=args.ch)
    model = dgp_jax.random_biggan(cfg, jax.random.PRNGKey(0), init="N02")
    full = dgp_jax.SolverConfig.preset("colorization", resolution=None)
    config = full.replace(iterations=(0,) * (full.num_stages - 1) + (1,), select_num=0)
    rows = {}
    for batch in (int(b) for b in args.batches.split(",")):
        rows[batch] = count_ops(lowered_step_text(model, config, batch, args.lowering))
        print(f"{args.resolution} px ch {args.ch}, {args.lowering}, batch {batch}: "
              + ", ".join(f"{op} {c['count']} ({c['distinct']} distinct)"
                          for op, c in rows[batch].items()))  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
