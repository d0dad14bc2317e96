"""The CPU benchmark scripts BENCHMARKS.md quotes run as documented, on a tiny model.

Each runs as users run it (a subprocess, ``python experiments/<name>.py ... --json``), with
XLA's cheap optimisation so that it compiles fast; only the shape and sense of its output
are checked, no timing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_json(script: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
           "JAX_DISABLE_MOST_OPTIMIZATIONS": "true"}  # fmt: skip
    command = [sys.executable, str(REPO / "experiments" / script), *args, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_bench_solver_reports_a_timed_step_and_the_schedule():
    # the command of BENCHMARKS.md's CPU table, at 32 px ch 4, two steps (the first compiles)
    row = run_json("bench_solver.py", "--resolution", "32", "--ch", "4", "--batch", "2",
                   "--steps", "2", "--select", "2")  # fmt: skip
    assert (row["impl"], row["resolution"], row["ch"], row["batch"]) == ("dgp_jax", 32, 4, 2)
    assert (row["preset"], row["precision"], row["lowering"]) == ("colorization", "float32", "auto")
    assert row["steps_timed"] == 1
    for name in ("seconds_per_step", "seconds_per_step_per_image", "seconds_per_select_forward",
                 "compile_s", "images_per_hour_full_schedule"):  # fmt: skip
        assert positive(row[name]), name
    assert math.isclose(row["seconds_per_step_per_image"], row["seconds_per_step"] / 2)
    assert (row["full_schedule_steps"], row["full_schedule_select_num"]) == (1400, 500)


def test_bench_batching_times_every_batch_in_one_process():
    out = run_json("bench_batching.py", "--resolution", "32", "--ch", "4", "--batches", "1,2",
                   "--lowerings", "auto", "--steps", "1", "--rounds", "1")  # fmt: skip
    assert (out["resolution"], out["ch"]) == (32, 4)
    rows = out["rows"]
    assert [(r["lowering"], r["batch"]) for r in rows] == [("auto", 1), ("auto", 2)]
    assert all(positive(r["s_per_step_per_image"]) for r in rows)
    # the per-image ratio is the first batch's time over each batch's
    first = rows[0]["s_per_step_per_image"]
    for r in rows:
        assert math.isclose(r["ratio_vs_first_batch"], first / r["s_per_step_per_image"])
