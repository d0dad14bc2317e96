"""JAX set-up of a batch run: the persistent compilation cache, multi-process runs and
the default batch size."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dgp_jax.run.settings import RunError

DEFAULT_CACHE_DIR = Path("~/.cache/dgp_jax/jax")


# --------------------------------------------------------------------------- jax setup
def configure_compilation_cache(cache_dir: str | None) -> Path | None:
    """Persist compiled programs across runs (JAX's compilation cache).

    ``cache_dir``: a folder, or None for ``$DGP_JAX_CACHE`` or ``~/.cache/dgp_jax/jax``;
    "none"/"off" (or an empty ``DGP_JAX_CACHE``) disables it. Every program is cached
    (min compile time 0), because even the small ones add up to seconds per batch here.
    Must run before JAX compiles anything in this process.
    """
    import jax

    if cache_dir is None:
        cache_dir = os.environ.get("DGP_JAX_CACHE", str(DEFAULT_CACHE_DIR))
    if cache_dir.strip().lower() in ("", "none", "off"):
        return None
    path = Path(cache_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"dgp-jax: compilation cache disabled ({path}: {err})", file=sys.stderr)
        return None
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    # JAX settles whether to use the cache at its first compile; reset so that the new
    # folder applies even when something was compiled already (notebooks, tests).
    compilation_cache.reset_cache()
    return path


# Processes of a batch run finish at different times; the first one done must wait for the
# rest at exit. With JAX's default (300 s) the coordinator gives up and every process still
# working is aborted (seen here: two CPU processes 20 s apart with a 5 s timeout).
SHUTDOWN_WAIT_S = 7 * 24 * 3600


def _environment_int(name: str) -> int | None:
    text = os.environ.get(name)
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise RunError(f"environment variable {name}={text!r} is not an integer") from None


def init_distributed(
    coordinator: str | None, num_processes: int | None, process_id: int | None
) -> tuple[int, int]:
    """Join a multi-process run when asked; returns (process index, process count).

    Explicit values win, then JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    JAX_PROCESS_ID. With a coordinator, ``jax.distributed.initialize`` runs (all processes
    meet before any work; JAX then aborts the others if one dies, after its heartbeat
    timeout of 100 s: finished images are on disk and a rerun resumes). Without one,
    ``num_processes`` > 1 with a ``process_id`` runs independent processes that only
    split the inputs, which is all a batch run needs. One process initialises nothing.
    """
    import jax

    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None:
        num_processes = _environment_int("JAX_NUM_PROCESSES")
    if process_id is None:
        process_id = _environment_int("JAX_PROCESS_ID")
    if (num_processes or 1) <= 1 and coordinator is None:
        return 0, 1
    if num_processes is None or process_id is None:
        raise RunError(
            "a multi-process run needs --num-processes and --process-id (and --coordinator "
            "HOST:PORT for jax.distributed; or JAX_NUM_PROCESSES, JAX_PROCESS_ID, "
            "JAX_COORDINATOR_ADDRESS)"
        )
    if not 0 <= process_id < num_processes:
        raise RunError(f"--process-id {process_id} is not in [0, {num_processes})")
    if coordinator is None:
        return process_id, num_processes
    jax.distributed.initialize(
        coordinator, num_processes, process_id, shutdown_timeout_seconds=SHUTDOWN_WAIT_S
    )
    return jax.process_index(), jax.process_count()


IMAGES_PER_DEVICE = 8


def default_batch() -> int:
    """Images solved together when ``--batch`` is not given: 8 per device. With the
    per-image convolution lowerings (``dgp_jax.nets.per_image``) a batch is faster per
    image than one image at a time on a CPU too (BENCHMARKS.md)."""
    import jax

    return len(jax.local_devices()) * IMAGES_PER_DEVICE
