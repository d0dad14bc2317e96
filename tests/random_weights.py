"""Random weights drawn from a numpy seed by key table, so that a test rebuilds exactly the
weights a fixture script fed the reference, without torch.

Keys are drawn in the table's order: conv/linear weights ~ N(0, 2 / fan_in) (He, so that
activations keep their scale through deep ReLU stacks), biases and 1-d vectors ~ N(0, 0.1²).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np


def random_state(shapes: Mapping[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in shapes.items():
        if len(shape) >= 2:
            std = math.sqrt(2.0 / math.prod(shape[1:]))
        else:
            std = 0.1
        state[key] = (rng.standard_normal(shape) * std).astype(np.float32)
    return state
