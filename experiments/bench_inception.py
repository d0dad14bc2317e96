"""Inception feature extraction (pool3) in images/s: dgp_jax against pytorch-fid, same run.

Both run the FID Inception on the same random weights (``random_state_dict(0)``, float32;
the speed does not depend on the values) and the same images, with pytorch-fid's
preprocessing (bilinear resize to 299), batch ``--batch``. dgp_jax runs on one device
(a ('data',) mesh of this process's first device; on a CPU host that is all its cores);
pytorch-fid runs ``InceptionV3([3])`` under ``torch.no_grad()`` with torch's default
threads. Each timing is the best of ``--repeats`` passes over ``--images`` images, after a
warm-up batch (dgp_jax's warm-up includes its compilation, reported apart); the two
frameworks alternate within each repeat so a change in machine load hits both. The load
average before and after is printed: on a shared machine the absolute numbers move with
it, their ratio much less.

Command (repository root; /work/.tv holds torchvision and pytorch-fid)::

    PYTHONPATH=/work/.tv:$PWD python experiments/bench_inception.py

Prints one markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import numpy as np


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sizes", default="64,299", help="input sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import jax
    import torch
    import tv_shim  # noqa: F401  (torchvision's CUDA wheel on CPU torch)
    from jax.sharding import Mesh
    from pytorch_fid import inception as fid_inception

    from dgp_jax.nets import inception

    state = {k: v.astype(np.float32) for k, v in inception.random_state_dict(0).items()}
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    ours = inception.InceptionV3(inception.params_from_state_dict(state), batch_size=args.batch,
                                 mesh=mesh)  # fmt: skip
    torch_state = {k: torch.from_numpy(v) for k, v in state.items()}
    fid_inception.load_state_dict_from_url = lambda *a, **k: torch_state
    reference = fid_inception.InceptionV3([3]).eval()

    def run_reference(x: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for start in range(0, len(x), args.batch):
                batch = torch.from_numpy((x[start : start + args.batch] + 1) / 2)
                out.append(reference(batch.permute(0, 3, 1, 2).contiguous())[0][:, :, 0, 0])
        return torch.cat(out).numpy()

    load_before = load_average()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        rng = np.random.default_rng(size)
        x = rng.uniform(-1, 1, (args.images, size, size, 3)).astype(np.float32)
        start = time.perf_counter()
        ours.features(x[: args.batch])
        first = time.perf_counter() - start
        start = time.perf_counter()
        ours.features(x[: args.batch])
        warm_batch = time.perf_counter() - start
        run_reference(x[: args.batch])
        best = {"dgp_jax": np.inf, "pytorch-fid": np.inf}
        for _ in range(args.repeats):
            start = time.perf_counter()
            mine = ours.features(x)
            best["dgp_jax"] = min(best["dgp_jax"], time.perf_counter() - start)
            start = time.perf_counter()
            theirs = run_reference(x)
            best["pytorch-fid"] = min(best["pytorch-fid"], time.perf_counter() - start)
        error = float(np.abs(mine - theirs).max() / np.abs(theirs).max())
        rows.append((size, args.images / best["dgp_jax"], args.images / best["pytorch-fid"],
                     first - warm_batch, error))  # fmt: skip
        print(f"size {size}: done", flush=True)

    print()
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), batch {args.batch}, {args.images} images, "
          f"best of {args.repeats}; load average {load_before} before, "
          f"{load_average()} after")  # fmt: skip
    print()
    print("| input | dgp_jax images/s | pytorch-fid images/s | ratio | dgp_jax compile s "
          "| max rel. diff |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for size, jax_rate, torch_rate, compile_s, error in rows:
        print(f"| {size} px | {jax_rate:.2f} | {torch_rate:.2f} | {jax_rate / torch_rate:.2f} "
              f"| {compile_s:.1f} | {error:.1e} |")  # fmt: skip


if __name__ == "__main__":
    main()
