"""Would cheaper XLA:CPU compiles make the test suite quicker, and what would they change?

Compiling is most of the suite's time (tests/conftest.py). This solves every float64
reference trajectory of ../shared/fixtures/biggan_pytorch (five tasks at 128 px,
colorization at 256 px) once per compile setting, each in a fresh process, and compares the
results with XLA's default compile (what users run): the images, z, every step's losses and
every weight of the fine-tuned G, and the seconds. Settings: LLVM without its expensive
passes; LLVM -O1 as well; ``cheap_compiles`` (``jax_disable_most_optimizations``, the
tests' mark for compile-bound tests, tests/_compiling.py).

Command (about 11 minutes on the project's 2-core CPU):

    python experiments/compile_levels.py

Measured (2026-12-01, AMD EPYC, 2 cores; BENCHMARKS.md, "What was tried"): without the
expensive passes, bitwise equal on all six runs and no quicker (the six restores 144 s
against 139 s); -O1 within 1.8e-14 relative but 1.0e-10 on the instance-norm-fed biases of
the inpainting run, 6 % quicker; ``cheap_compiles`` compiles in 40 % less time and runs 2-5x
slower. So the suite keeps XLA's default.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "biggan_pytorch"
RUNS = ("128:colorization", "128:inpainting", "128:SR", "128:hybrid", "128:reconstruct",
        "256:colorization")  # fmt: skip
# name -> (XLA_FLAGS added, environment added)
SETTINGS = {
    "default": ("", {}),
    "default_again": ("", {}),  # the default's own run-to-run agreement
    "no_expensive_passes": ("--xla_llvm_disable_expensive_passes=true", {}),
    "level_1": ("--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true", {}),
    "cheap_compiles": ("", {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}),  # tests/_compiling.py
}
STAGE_KEYS = ("iterations", "ft_num", "lr_ratio", "G_lrs", "z_lrs", "w_D_loss", "w_mse",
              "w_nll", "ftr_num", "use_in", "update_embed", "select_num", "sample_std")  # fmt: skip


def solve_fixture(run: str, dtype: str, out: Path) -> None:
    """(worker) Solve one fixture run from the reference's start latent; save what it gives."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import monitoring

    import dgp_jax

    compile_s = []
    monitoring.register_event_duration_secs_listener(
        lambda name, seconds, **_: (
            compile_s.append(seconds)
            if name == "/jax/core/compile/backend_compile_duration"
            else None
        )
    )
    res, name = run.split(":")
    traj = np.load(FIXTURES / f"traj_{res}_ch8_f64_{name}.npz")
    meta = json.loads((FIXTURES / f"traj_{res}_ch8_f64_{name}.json").read_text())
    config = dgp_jax.SolverConfig(dgp_mode=meta["mode"], **{k: meta[k] for k in STAGE_KEYS})
    files = (FIXTURES / f"G_ema_{res}_ch8_f64.pth", FIXTURES / f"D_{res}_ch8_f64.pth")
    model = dgp_jax.load_biggan(*files, dtype=jnp.dtype(dtype))
    mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))
    start = time.perf_counter()
    result = dgp_jax.restore(model, traj["target"].transpose(0, 2, 3, 1), traj["class_index"],
                             config, z_init=traj["z0"], mesh=mesh)  # fmt: skip
    seconds = time.perf_counter() - start
    leaves = jax.tree.leaves(result.generator(model, 0).generator)
    np.savez(out, images=result.images, z=result.z, ftr=result.history["ftr"],
             mse=result.history["mse"], **{f"G{i}": leaf for i, leaf in enumerate(leaves)},
             seconds=[seconds, sum(compile_s)])  # fmt: skip


def run_worker(run: str, dtype: str, setting: str, folder: Path) -> Path:
    flags, extra = SETTINGS[setting]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
    env.update(JAX_PLATFORMS="cpu", JAX_ENABLE_X64=str(int(dtype == "float64")),
               PYTHONPATH=str(REPO), **extra)  # fmt: skip
    if flags:
        env["XLA_FLAGS"] = flags
    out = folder / f"{run.replace(':', '_')}_{dtype}_{setting}.npz"
    subprocess.run([sys.executable, __file__, "--worker", run, dtype, str(out)], env=env,
                   check=True)  # fmt: skip
    return out


def compare(a: Path, b: Path) -> tuple[bool, float, str]:
    """(bitwise equal, largest relative difference over the arrays, the array that has it)."""
    import numpy as np

    x, y = np.load(a), np.load(b)
    keys = [k for k in x.files if k != "seconds"]
    assert sorted(keys) == sorted(k for k in y.files if k != "seconds")
    same, worst, where = True, 0.0, ""
    for k in keys:
        same &= np.array_equal(x[k], y[k])
        scale = max(float(np.abs(x[k]).max()), 1e-300)
        difference = float(np.abs(x[k] - y[k]).max()) / scale
        if difference > worst:
            worst, where = difference, k
    return bool(same), worst, where


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=",".join(RUNS), help="res:task,... (default: all six)")
    parser.add_argument("--settings", default="no_expensive_passes,level_1,cheap_compiles",
                        help=f"compared with 'default': any of {', '.join(SETTINGS)}")  # fmt: skip
    parser.add_argument("--dtypes", default="float64", help="float64,float32 (default: float64)")
    parser.add_argument("--worker", nargs=3, metavar=("RUN", "DTYPE", "OUT"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args(argv)
    if args.worker:
        solve_fixture(*args.worker)
        return 0
    import numpy as np

    runs = [r for r in args.runs.split(",") if r]
    settings = [s for s in args.settings.split(",") if s]
    dtypes = [d for d in args.dtypes.split(",") if d]
    unknown = [r for r in runs if r not in RUNS] + [s for s in settings if s not in SETTINGS]
    unknown += [d for d in dtypes if d not in ("float64", "float32")]
    if unknown:
        parser.error(f"unknown runs, settings or dtypes {unknown}; runs: {', '.join(RUNS)}")
    print("| run | dtype | setting | bitwise | largest relative difference | compile s | "
          "restore s (compiles included) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        for run in runs:
            for dtype in dtypes:
                base = run_worker(run, dtype, "default", Path(folder))
                seconds = np.load(base)["seconds"]
                print(f"| {run} | {dtype} | default | | | {seconds[1]:.1f} | {seconds[0]:.1f} |",
                      flush=True)  # fmt: skip
                for setting in settings:
                    other = run_worker(run, dtype, setting, Path(folder))
                    same, worst, where = compare(base, other)
                    seconds = np.load(other)["seconds"]
                    print(f"| {run} | {dtype} | {setting} | {'yes' if same else 'no'} | "
                          f"{worst:.1e} ({where}) | {seconds[1]:.1f} | {seconds[0]:.1f} |",
                          flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
