"""Seeded random weights for torchvision's resnet50, drawn by key table (no torch needed).

Used by tests/fixtures/make_resnet50.py (which runs torchvision on them once) and by
tests/test_resnet50.py (which rebuilds them and compares with the committed outputs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dgp_jax.nets.resnet import resnet50_shapes

SEED = 20261129


def random_resnet50_state(seed: int = SEED) -> dict[str, np.ndarray]:
    """float32 weights and BN statistics for every key, in key-table order.

    Scales keep activations O(1) through the 16 residual blocks: He-normal convs, the last
    BN of each block damped, random running means and variances.
    """
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in resnet50_shapes().items():
        if key.endswith("conv1.weight") or ".conv" in key or "downsample.0" in key:
            fan_in = int(np.prod(shape[1:]))
            value = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        elif key.endswith(".weight") and key != "fc.weight":  # BN scale
            low, high = (0.1, 0.3) if ".bn3." in key else (0.5, 1.5)
            value = rng.uniform(low, high, shape)
        elif key.endswith("running_mean") or key.endswith(".bias"):
            value = rng.standard_normal(shape) * 0.1
        elif key.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        else:  # fc.weight
            value = rng.standard_normal(shape, np.float32) / np.float32(np.sqrt(shape[1]))
        state[key] = value.astype(np.float32)
    return state


_WRITTEN: dict[str, Path] = {}


def resnet50_weights_folder(tmp_path_factory) -> Path:
    """A folder holding the seeded weights as ``resnet50-0676ba61.pth`` (with the
    ``num_batches_tracked`` buffers torchvision files have), written once per session."""
    from dgp_jax import pth

    key = str(tmp_path_factory.getbasetemp())
    if key not in _WRITTEN:
        folder = tmp_path_factory.mktemp("resnet50_nets")
        state = random_resnet50_state(SEED)
        state["bn1.num_batches_tracked"] = np.array(0, np.int64)
        pth.write_state_dict(folder / "resnet50-0676ba61.pth", state)
        _WRITTEN[key] = folder
    return _WRITTEN[key]
