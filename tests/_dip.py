"""Seeded DIP skip-network weights and inputs, shared by tests/fixtures/make_dip.py (which runs
the official code on them) and tests/test_dip.py (which rebuilds them without torch)."""

from __future__ import annotations

import numpy as np

from dgp_jax.nets import dip_skip

SIZE = 64
SEED = 1234


def seeded_params(spec: dip_skip.SkipSpec, seed: int = SEED) -> dict[str, np.ndarray]:
    """float64 weights by key, in layer_table order: convs uniform in ±1/sqrt(fan_in) (torch's
    init range), batch-norm scales 1 ± 0.2 and shifts ± 0.1 (so that the affine is tested)."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, kind, shape in dip_skip.layer_table(spec):
        if kind == "bn":
            params[f"{name}.weight"] = 1 + rng.uniform(-0.2, 0.2, shape)
            params[f"{name}.bias"] = rng.uniform(-0.1, 0.1, shape)
        else:
            bound = 1 / np.sqrt(np.prod(shape[1:]))
            params[f"{name}.weight"] = rng.uniform(-bound, bound, shape)
            params[f"{name}.bias"] = rng.uniform(-bound, bound, (shape[0],))
    return params


def size_for(spec: dip_skip.SkipSpec) -> int:
    """64 px, or 256 for the six-level library network (its 5x5 reflection padding needs
    more than 2 px at the deepest level, 256 / 2**6 = 4)."""
    return 256 if spec.scales > 5 else SIZE


def seeded_arrays(spec: dip_skip.SkipSpec, seed: int = SEED) -> dict[str, np.ndarray]:
    """NHWC float64: the network input (uniform * 0.1, or the meshgrid), a standard-normal
    draw for the input noise, an image in [0, 1], the inpainting keep-mask and a x4
    low-resolution target."""
    rng = np.random.default_rng(seed + 1)
    size = size_for(spec)
    if spec.input_depth == 2 and not any(spec.channels_skip):
        xs = np.arange(size) / float(size - 1)
        gx, gy = np.meshgrid(xs, xs)
        net_input = np.stack([gx, gy], -1)[None]
    else:
        net_input = rng.uniform(size=(1, size, size, spec.input_depth)) * 0.1
    noise = rng.standard_normal((1, size, size, spec.input_depth))
    image = rng.uniform(size=(1, size, size, 3))
    mask = np.ones((1, size, size, 1))
    mask[:, 20:44, 20:44] = 0
    low = rng.uniform(size=(1, size // 4, size // 4, 3))
    return {"input": net_input, "noise": noise, "image": image, "mask": mask, "low": low}
