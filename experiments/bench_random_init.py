"""Random BigGAN weights: ``dgp_jax.random_biggan`` (numpy draws of torch's ``orthogonal_``
and N(0, 0.02) fills) against Flax's own initialisers (``Generator(cfg).init`` and
``Discriminator(cfg).init``, the same parameter shapes), side by side in one process:

    python experiments/bench_random_init.py --json

Each is timed once per configuration, first call included: a test pays exactly that
(a fresh process, nothing compiled). The configurations are the test suite's small model
(32 px, G_ch = D_ch = 4, float64) and the shipped model's size (64 px, ch 16, float64).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

import dgp_jax
from dgp_jax.nets.biggan import BigGANConfig, Discriminator, Generator

CONFIGS = {
    "32 px, ch 4 (tests)": BigGANConfig(resolution=32, G_ch=4, D_ch=4, n_classes=10,
                                        shared_dim=16, dim_z=20, G_attn="32", D_attn="32"),
    "64 px, ch 16 (shipped)": BigGANConfig(resolution=64, G_ch=16, D_ch=16),
}  # fmt: skip


def flax_init(cfg: BigGANConfig, dtype) -> None:
    z = jnp.zeros((1, cfg.effective_dim_z), dtype)
    x = jnp.zeros((1, cfg.resolution, cfg.resolution, 3), dtype)
    y = jnp.zeros((1,), jnp.int32)
    g = Generator(cfg).init(jax.random.PRNGKey(1), z, y)
    d = Discriminator(cfg).init(jax.random.PRNGKey(2), x, y)
    jax.block_until_ready((g, d))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    jax.config.update("jax_enable_x64", True)
    for name, cfg in CONFIGS.items():
        t = time.perf_counter()
        model = dgp_jax.random_biggan(cfg, jax.random.PRNGKey(0), dtype=jnp.float64)
        jax.block_until_ready((model.generator, model.discriminator))
        ours = time.perf_counter() - t
        t = time.perf_counter()
        flax_init(cfg, jnp.float64)
        theirs = time.perf_counter() - t
        row = {"config": name, "random_biggan_s": round(ours, 2), "flax_init_s": round(theirs, 2),
               "ratio": round(theirs / ours, 1)}  # fmt: skip
        print(json.dumps(row) if args.json else row, flush=True)


if __name__ == "__main__":
    main()
