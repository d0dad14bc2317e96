"""Optional torch for the interop tests.

torch is a development tool here, never a dependency of ``dgp_jax``: tests that compare with
real torch skip without it, unless ``DGP_JAX_REQUIRE_TORCH=1`` says the run must include them
(then a missing torch is a failure, so a CI that promised torch cannot silently skip).
"""

from __future__ import annotations

import os
from types import ModuleType

import pytest

# Imported once at collection so the ~2 s import is not billed to whichever test runs first.
try:
    import torch as _torch
except ImportError:
    _torch = None


def require_torch() -> ModuleType:
    """Return the torch module, or skip (fail under DGP_JAX_REQUIRE_TORCH=1) without it."""
    if _torch is None:
        if os.environ.get("DGP_JAX_REQUIRE_TORCH") == "1":
            pytest.fail("DGP_JAX_REQUIRE_TORCH=1 but torch is not importable", pytrace=False)
        pytest.skip("torch not installed")
    return _torch
