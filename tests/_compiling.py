"""Cheaper XLA compiles for tests that compile much and run little.

``jax_disable_most_optimizations`` lowers XLA's backend optimisation (LLVM) for the
programs compiled while it is on: they compile about twice as fast and run slower. The
HLO passes are unchanged, so the values are the same up to rounding. It is a per-compile
option, so a test can take it (``@pytest.mark.cheap_compiles``, see conftest.py) without
the rest of the session: the tests that run many steps (the 256 px trajectory took 3.4x as
long with it) keep the full optimisation.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import jax

from dgp_jax import runner

# The JAX settings fast_compiles changes (configure_compilation_cache sets the first two).
FAST_COMPILE_SETTINGS = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_disable_most_optimizations",
)


def setting(name: str):
    # Flags with a context manager are attributes; the others are read with config.read.
    try:
        return getattr(jax.config, name)
    except AttributeError:
        return jax.config.read(name)


@contextlib.contextmanager
def fast_compiles(cache: Path | None, *, cheap: bool = True):
    """The persistent cache at ``cache`` (None: unchanged) and, with ``cheap``, cheap XLA
    optimisation, for the duration; all three settings as they were after."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    before = {name: setting(name) for name in FAST_COMPILE_SETTINGS}
    if cheap:
        jax.config.update("jax_disable_most_optimizations", True)
    if cache is not None:
        runner.configure_compilation_cache(str(cache))
    try:
        yield
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
        cc.reset_cache()


def shared_root(tmp_path_factory) -> Path:
    """A folder shared by every xdist worker of this session (their common basetemp)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def session_cache_dir(tmp_path_factory) -> Path:
    """This session's persistent compilation cache: one folder for every xdist worker and
    every CLI subprocess, so each program compiles once per session."""
    path = shared_root(tmp_path_factory) / "dgp_jax_cache"
    path.mkdir(exist_ok=True)
    return path
