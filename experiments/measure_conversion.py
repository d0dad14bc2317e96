"""Time and size the .pth -> dgp_jax conversion on a full-size public-architecture BigGAN.

Command (from the repository root)::

    python experiments/measure_conversion.py [--workdir DIR] [--seed N]

It builds a random BigGAN with the released 128 px architecture (G_ch = D_ch = 96, dim_z 120,
shared_dim 128, 1000 classes, attention at 64, float32; x64 stays off), writes it as
``G_ema.pth`` / ``D.pth`` in the released state-dict format, converts that pair with
``dgp_jax.checkpoint.convert`` and loads the folder with ``load_biggan``. It prints:

* parameter counts of G and D (trainable ``params``; ``buffers`` -- spectral-norm vectors
  and BN statistics -- separately), and the sizes of the .pth files and the folder;
* conversion seconds (``convert``: read both .pth, infer the architecture, check every key
  and shape, write the orbax folder);
* load seconds (``load_biggan(folder)``, arrays ready);
* first-forward seconds: one ``generate`` of a batch of 1 and one ``discriminate`` of that
  image, each the first call (so including tracing and XLA compilation), then a second call
  of each for comparison;
* peak resident memory (``resource.getrusage().ru_maxrss``) of each step.

Each step runs in its own fresh Python process, started by this one, which itself never
imports JAX: a process's ru_maxrss only grows, and on Linux a child even inherits the
parent's high-water mark across fork/exec, so measuring conversion in the process that built
the model (or in a child of it) would report the model building's peak instead. The steps
can be run by hand too::

    python experiments/measure_conversion.py --write-pth DIR        # build + write the .pth
    python experiments/measure_conversion.py --convert-only G D OUT  # time convert()
    python experiments/measure_conversion.py --load-only OUT         # time load + forwards
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "RESULT "
# The released BigGAN 128 (BigGAN-PyTorch's pretrained G_ema / D) architecture.
FULL_SIZE = dict(
    resolution=128,
    G_ch=96,
    D_ch=96,
    dim_z=120,
    shared_dim=128,
    n_classes=1000,
    hier=True,
    G_attn="64",
    D_attn="64",
)


def peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def folder_mib(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def _init_jax() -> None:
    """Import JAX with x64 off and start its backend, so no step's timing includes that."""
    import jax

    # Released checkpoints are float32; x64 on would change what convert stores.
    jax.config.update("jax_enable_x64", False)
    jax.devices()


def report(result: dict[str, Any]) -> None:
    """The machine-readable last line the driver reads back."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- steps
def write_pth(directory: Path, seed: int) -> dict[str, Any]:
    _init_jax()
    import jax
    import numpy as np

    from dgp_jax.checkpoint import state_dict_from_variables
    from dgp_jax.model import random_biggan
    from dgp_jax.nets.biggan import BigGANConfig
    from dgp_jax.nets.layers import BUFFERS, PARAMS
    from dgp_jax.pth import write_state_dict

    config = BigGANConfig(**FULL_SIZE)
    t0 = time.perf_counter()
    model = random_biggan(config, jax.random.PRNGKey(seed), init="N02")  # values do not matter here
    jax.block_until_ready(model)
    build_s = time.perf_counter() - t0

    def count(variables: dict, collection: str) -> int:
        return int(sum(np.size(a) for a in jax.tree.leaves(variables[collection])))

    directory.mkdir(parents=True, exist_ok=True)
    g_path, d_path = directory / "G_ema.pth", directory / "D.pth"
    t0 = time.perf_counter()
    write_state_dict(g_path, state_dict_from_variables(model.generator))
    write_state_dict(d_path, state_dict_from_variables(model.discriminator))
    write_s = time.perf_counter() - t0
    result = dict(
        G_params=count(model.generator, PARAMS),
        G_buffers=count(model.generator, BUFFERS),
        D_params=count(model.discriminator, PARAMS),
        D_buffers=count(model.discriminator, BUFFERS),
        dtype=str(model.dtype),
        build_s=build_s,
        write_s=write_s,
        G_pth_mib=folder_mib(g_path),
        D_pth_mib=folder_mib(d_path),
        peak_rss_mib=peak_rss_mib(),
    )
    print(f"built in {build_s:.1f} s, wrote {g_path} and {d_path} in {write_s:.1f} s")
    return result


def convert_only(g_path: Path, d_path: Path, out: Path) -> dict[str, Any]:
    _init_jax()
    from dgp_jax import checkpoint

    baseline = peak_rss_mib()  # interpreter + jax + dgp_jax, before any weights are read
    t0 = time.perf_counter()
    checkpoint.convert(g_path, d_path, out)
    convert_s = time.perf_counter() - t0
    result = dict(
        convert_s=convert_s,
        folder_mib=folder_mib(out),
        baseline_rss_mib=baseline,
        peak_rss_mib=peak_rss_mib(),
    )
    print(f"converted {g_path} + {d_path} -> {out} in {convert_s:.2f} s")
    return result


def load_only(folder: Path, seed: int) -> dict[str, Any]:
    _init_jax()
    import jax
    import jax.numpy as jnp

    from dgp_jax.model import load_biggan

    baseline = peak_rss_mib()
    t0 = time.perf_counter()
    model = load_biggan(folder)
    jax.block_until_ready(model)
    load_s = time.perf_counter() - t0
    load_peak = peak_rss_mib()

    z = jax.random.normal(jax.random.PRNGKey(seed), (1, model.config.effective_dim_z))
    y = jnp.array([207])  # any class

    def timed(fn: Any) -> tuple[float, Any]:
        t = time.perf_counter()
        out = jax.block_until_ready(fn())
        return time.perf_counter() - t, out

    gen_first_s, image = timed(lambda: model.generate(z, y))
    disc_first_s, (logits, _) = timed(lambda: model.discriminate(image, y))
    gen_second_s, _ = timed(lambda: model.generate(z, y))
    disc_second_s, _ = timed(lambda: model.discriminate(image, y))
    result = dict(
        load_s=load_s,
        generate_first_s=gen_first_s,
        discriminate_first_s=disc_first_s,
        generate_second_s=gen_second_s,
        discriminate_second_s=disc_second_s,
        image_shape=list(image.shape),
        image_dtype=str(image.dtype),
        logit=float(logits[0, 0]),
        baseline_rss_mib=baseline,
        load_peak_rss_mib=load_peak,
        peak_rss_mib=peak_rss_mib(),
    )
    print(f"loaded {folder} in {load_s:.2f} s; image {tuple(image.shape)} {image.dtype}")
    return result


# --------------------------------------------------------------------------- driver
def run_step(*args: str) -> dict[str, Any]:
    """One step in a fresh interpreter; its RESULT line, its other output passed through."""
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"step {args[0]} failed with exit status {proc.returncode}")
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
        else:
            print(f"  [{args[0]}] {line}")
    if result is None:
        raise SystemExit(f"step {args[0]} printed no {RESULT_PREFIX.strip()} line")
    return result


def drive(workdir: Path | None, seed: int) -> None:
    print(f"architecture: {FULL_SIZE}, float32, jax_enable_x64 off")
    print(f"host: {os.cpu_count()} CPU cores visible to Python, {_total_mem_gib():.1f} GiB RAM")
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)  # a new --workdir was a FileNotFoundError
    with tempfile.TemporaryDirectory(dir=workdir, prefix="measure_conversion.") as tmp:
        tmp_path = Path(tmp)
        g_path, d_path, out = tmp_path / "G_ema.pth", tmp_path / "D.pth", tmp_path / "converted"
        w = run_step("--write-pth", str(tmp_path), "--seed", str(seed))
        c = run_step("--convert-only", str(g_path), str(d_path), str(out))
        ld = run_step("--load-only", str(out), "--seed", str(seed))
    first_forward = ld["generate_first_s"] + ld["discriminate_first_s"]
    rows = [
        ("G parameters", f"{w['G_params']:,} (+ {w['G_buffers']:,} buffer values)"),
        ("D parameters", f"{w['D_params']:,} (+ {w['D_buffers']:,} buffer values)"),
        (
            "files",
            f"G_ema.pth {w['G_pth_mib']:.1f} MiB, D.pth {w['D_pth_mib']:.1f} MiB, "
            f"converted folder {c['folder_mib']:.1f} MiB",
        ),
        (
            "build random model",
            f"{w['build_s']:.2f} s, write .pth {w['write_s']:.2f} s, "
            f"peak RSS {w['peak_rss_mib']:.0f} MiB",
        ),
        ("conversion", f"{c['convert_s']:.2f} s"),
        (
            "conversion peak RSS",
            f"{c['peak_rss_mib']:.0f} MiB "
            f"(before reading weights: {c['baseline_rss_mib']:.0f} MiB)",
        ),
        (
            "load_biggan(folder)",
            f"{ld['load_s']:.2f} s, peak RSS {ld['load_peak_rss_mib']:.0f} MiB "
            f"(before: {ld['baseline_rss_mib']:.0f} MiB)",
        ),
        (
            "first generate (B=1)",
            f"{ld['generate_first_s']:.2f} s incl. compile (second call "
            f"{ld['generate_second_s']:.3f} s), image {ld['image_shape']} {ld['image_dtype']}",
        ),
        (
            "first discriminate",
            f"{ld['discriminate_first_s']:.2f} s incl. compile (second call "
            f"{ld['discriminate_second_s']:.3f} s)",
        ),
        ("first forward total", f"{first_forward:.2f} s"),
        ("load + forward peak RSS", f"{ld['peak_rss_mib']:.0f} MiB"),
    ]
    print()
    for label, text in rows:
        print(f"{label + ':':<25}{text}")


def _total_mem_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step = parser.add_mutually_exclusive_group()
    step.add_argument("--write-pth", metavar="DIR", type=Path, help="build + write the .pth pair")
    step.add_argument("--convert-only", nargs=3, metavar=("G", "D", "OUT"), type=Path)
    step.add_argument("--load-only", metavar="FOLDER", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="where the temporary files go")
    args = parser.parse_args(argv)
    # Run as a script, sys.path[0] is experiments/; dgp_jax need not be installed.
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if args.write_pth is not None:
        report(write_pth(args.write_pth, args.seed))
    elif args.convert_only is not None:
        report(convert_only(*args.convert_only))
    elif args.load_only is not None:
        report(load_only(args.load_only, args.seed))
    else:
        drive(args.workdir, args.seed)


if __name__ == "__main__":
    main()
