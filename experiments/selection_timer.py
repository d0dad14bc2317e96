"""Wall seconds of ``dgp_jax.restore``'s start-candidate search, timed where it runs.

Subtracting a run without candidates from a run with them would also time the setup
around the search, and a busy machine can turn that difference negative (CI did, with two
candidates). ``experiments/bench_accelerator.py``'s workers use this timer too.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from dgp_jax import solve


@contextlib.contextmanager
def selection_seconds() -> Iterator[list[float]]:
    """Inside, each candidate search ``restore`` runs appends its seconds to the list given.

    The search returns host arrays (the chosen latents and every score), so its time
    includes the device's work, not only the dispatch. A run with fewer than two candidates
    searches nothing and appends nothing.
    """
    times: list[float] = []
    select = solve._select

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = select(*args, **kwargs)
        if out[2].shape[1]:  # scores: candidates were rendered and scored
            times.append(time.perf_counter() - start)
        return out

    solve._select = timed
    try:
        yield times
    finally:
        solve._select = select
