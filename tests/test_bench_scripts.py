"""The CPU benchmark scripts BENCHMARKS.md quotes run as documented, on a tiny model.

Each runs as users run it (a subprocess, ``python experiments/<name>.py ... --json``), with
XLA's cheap optimisation so that it compiles fast; only the shape and sense of its output
are checked, no timing. compile_levels.py solves every 128 and 256 px reference trajectory
in a fresh process per setting (11 minutes), so its verdict (``compare``) and its refusals
are tested without a solve.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import load_experiment

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


def run_text(script: str, *args: str) -> list[str]:
    """``run_json``'s run for the scripts that print text: their stdout's lines."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
           "JAX_DISABLE_MOST_OPTIMIZATIONS": "true"}  # fmt: skip
    command = [sys.executable, str(REPO / "experiments" / script), *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def test_bench_selection_reports_each_batch():
    out = run_json("bench_selection.py", "--resolution", "32", "--ch", "4", "--batches", "1,2",
                   "--rounds", "1", "--candidates", "4", "--select-batches", "2")  # fmt: skip
    assert (out["resolution"], out["ch"]) == (32, 4)
    assert [(r["batch"], r["select_batch"]) for r in out["rows"]] == [(1, "2"), (2, "2")]
    assert all(positive(r["ms_per_candidate_per_image"]) for r in out["rows"])


def test_bench_lowering_times_every_lowering_of_every_layer_shape():
    out = run_json("bench_lowering.py", "--resolution", "32", "--ch", "4", "--batch", "2",
                   "--repeats", "1")  # fmt: skip
    assert (out["backend"], out["resolution"], out["batch"], out["precision"]) == (
        "cpu", 32, 2, "float32")  # fmt: skip
    # G at 32 px ch 4: three blocks (8, 16, 32 px), each a 3x3 and a 1x1 shape; the output layer
    assert [r["shape"] for r in out["rows"]] == [
        "8x8 16->16 k3", "8x8 16->16 k1", "16x16 16->16 k3", "16x16 16->16 k1",
        "32x32 16->16 k3", "32x32 16->16 k1", "32x32 16->3 k3"]  # fmt: skip
    for row in out["rows"]:
        assert set(row["ms"]) == {"vmap", "im2col", "shifted", "unrolled"}, row
        assert all(positive(ms) for ms in row["ms"].values()), row
        assert row["fastest"] == min(row["ms"], key=row["ms"].get), row
        # auto is the CPU's rule (per_image.auto_lowering), not the fastest of this run: a
        # 1x1 is a matrix product, a 3x3 with 16 input channels has too many pixels for im2col
        assert row["auto"] == ("im2col" if row["shape"].endswith("k1") else "unrolled"), row


def test_step_ops_counts_the_same_products_at_every_batch():
    """BENCHMARKS.md's claim: with im2col the lowered step holds the same products and
    convolutions at any batch (what grows is only their batch dimension)."""
    lines = run_text("step_ops.py", "--resolution", "32", "--ch", "4", "--batches", "1,2",
                     "--lowering", "im2col")  # fmt: skip
    assert len(lines) == 2
    counts = [line.split(": ", 1) for line in lines]
    assert [head for head, _ in counts] == ["32 px ch 4, im2col, batch 1",
                                            "32 px ch 4, im2col, batch 2"]  # fmt: skip
    assert counts[0][1] == counts[1][1] and counts[0][1].startswith("dot_general ")


def test_profile_step_lists_the_step_s_ops():
    lines = run_text("profile_step.py", "--resolution", "32", "--ch", "4", "--batch", "2",
                     "--steps", "1", "--top", "3")  # fmt: skip
    assert lines[0].startswith("32 px, ch 4, batch 2, lowering auto, cpu: warm run of 1 steps")
    kinds = lines[lines.index("ms/step  op kind") + 1 :]
    kinds = kinds[: kinds.index("")]
    assert len(kinds) >= 3 and all(float(line.split()[0]) >= 0 for line in kinds)
    assert "convolution" in {line.split()[1] for line in kinds}
    top = lines[lines.index("ms/step  op  shape  from") + 1 :]
    assert len(top) == 3
    for line in top:  # time, the op, its shape (and the JAX code it came from, when known)
        ms, op, shape = line.split()[:3]
        # an HLO instruction name: "convolution.12", or (the first of its kind) a fusion's
        # bare name such as "bitcast_copy_fusion"; which ops are slowest varies run to run
        assert float(ms) >= 0 and re.fullmatch(r"[a-z][\w\-]*(\.\d+)?", op), line
        assert "[" in shape, line


def test_memory_per_image_fits_a_positive_number_of_images():
    lines = run_text("memory_per_image.py", "--resolution", "32", "--ch", "4", "--batches", "1,2",
                     "--device-gib", "1")  # fmt: skip
    assert [line.split(":")[0] for line in lines[:2]] == ["batch 1", "batch 2"]
    assert lines[2].startswith("per image, arguments: ")
    assert lines[3].startswith("per image, temporaries: ")
    head, fits = lines[4].split(": ")
    assert head.startswith("per image ") and ", shared " in head
    count, rest = fits.split(" ", 1)
    assert int(count) > 0 and rest == "images fit in 1 GiB"


def test_compile_levels_compares_every_array_but_the_seconds(tmp_path):
    """compile_levels.py's verdict (BENCHMARKS.md, "What was tried": "bitwise equal", "within
    1.8e-14 relative") is ``compare`` over every saved array except the timings."""
    compile_levels = load_experiment("compile_levels")
    base = {"images": np.array([1.0, -2.0]), "z": np.array([4.0, 0.5]), "G0": np.zeros(3)}
    np.savez(tmp_path / "a.npz", seconds=[10.0, 5.0], **base)
    np.savez(tmp_path / "b.npz", seconds=[99.0, 1.0], **base)
    assert compile_levels.compare(tmp_path / "a.npz", tmp_path / "b.npz") == (True, 0.0, "")
    moved = {**base, "z": np.array([4.0, 0.5 + 4e-12]), "images": np.array([1.0, -2.0 + 2e-13])}
    np.savez(tmp_path / "c.npz", seconds=[10.0, 5.0], **moved)
    same, worst, where = compile_levels.compare(tmp_path / "a.npz", tmp_path / "c.npz")
    # relative to each array's largest magnitude: z 4e-12 / 4, images 2e-13 / 2
    assert (same, where) == (False, "z") and math.isclose(worst, 1e-12, rel_tol=1e-3)
    # an all-zero array that moves is measured against 1e-300, not divided by zero
    np.savez(tmp_path / "d.npz", seconds=[0.0, 0.0], **{**base, "G0": np.array([0, 0, 1e-310])})
    assert compile_levels.compare(tmp_path / "a.npz", tmp_path / "d.npz")[1:] == (
        1e-310 / 1e-300,
        "G0",
    )


def test_compile_levels_refuses_unknown_runs_settings_and_dtypes():
    done = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "compile_levels.py"), "--runs", "64:SR",
         "--settings", "level_1,level_9", "--dtypes", "float16"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert "unknown runs, settings or dtypes ['64:SR', 'level_9', 'float16']" in done.stderr
