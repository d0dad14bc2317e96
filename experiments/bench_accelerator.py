"""The accelerator benchmark: every lowering x batch x precision, beside the PyTorch reference.

One prepared command for one GPU (issue 10, sections 4 and 5). On the full 128 px BigGAN
(G_ch = D_ch = 96, random N(0, 0.02) weights) it measures, each measurement in a fresh
subprocess (clean peak memory; an OOM or a hang kills only that row):

1. the device's matmul rate (8192^3 in float32 at HIGHEST precision, in tf32, in bfloat16);
2. the PyTorch reference DGP at batch 1 on the same device (``--reference DIR``, a checkout
   of XingangPan/deep-generative-prior; its ``models.biggan`` and ``models.dgp.DGP`` run
   with real CUDA, the colorization preset's last stage, all generator groups trained);
3. dgp_jax for each lowering x batch (1, 8, 32, 64 and the largest that fits) x precision:
   seconds per solver step per image (the colorization preset's last stage, median of
   warm steps), selection seconds per candidate per image, compile seconds (first step
   minus a warm one), peak device memory per image, and, from the executable the steps ran
   (compiled ahead from their arguments, so nothing compiles twice), XLA's buffer
   assignment of the step and its FLOPs (cost analysis), so achieved TFLOP/s and the
   fraction of the measured matmul rate of that precision.

"Largest that fits": from the memory of the batches that ran (XLA's buffer assignment of
the step where every row has it, else the device's peak; a line through fixed + per-image
bytes), the batch that fills ``--fit-fraction`` (0.9) of the memory JAX may use; on OOM
the gap to the largest batch that ran is halved (twice at most).

Priority within ``--budget-s`` (checked before each measurement against the time the most
similar finished one took; a row that does not fit is skipped and listed): the matmul
rates, the reference, ``auto`` at every batch x precision (batch 1 float32 first, then the
largest batches in float32 and bfloat16), the other lowerings at batches 8 and 32 in
float32 and bfloat16, then the rest. Results are written as they come: ``results.jsonl``
(one JSON object per row, skipped rows included), ``log.txt`` (the plan, progress, the
tail of each worker's stderr), ``stderr.txt`` (each worker's stderr, written as it comes,
up to 2 MiB each) and, at the end, ``table.md`` (the markdown for
BENCHMARKS.md, with date and device, images/hour for the preset's whole schedule, the ratio
to the reference, and how many images fit in flight).

For the GPU machine (its python3 has jax[cuda], flax, optax, torch and torchvision, and no
tensorflow-datasets; the project is imported from the working tree): once, on this machine,
in the repository root, put the reference's files into the ignored folder .ref/ (the git
directory comes from fetching github:XingangPan/deep-generative-prior)::

    ../shared/reference_tools/checkout_reference.sh \
        /work/.mirror/XingangPan+deep-generative-prior/repo .ref/dgp

(``/.ref/`` is in .gitignore: nothing of the reference is committed). The grid does not fit
in one lease: on an H200 (2026-11-30, jax 0.11.2; BENCHMARKS.md "GPU") XLA compiled the
128 px step in 126 s at batch 1 and had not finished after 292 s at batch 32 (float32),
mostly autotuning, and each worker also compiles the selection program. What a 15-minute
lease holds is the reference and a few batch rows, an explicit ``--rows`` list, with
the matmul rates of that run (``--matmul-from``; its files are in
experiments/results/h200-2026-11-30/) and, should the GPU's cost analysis again give no
FLOPs, XLA:CPU's count of the same step. A row's optional fourth field adds a set of XLA
flags to its worker (``XLA_PRESETS``): ``cublas`` leaves matrix products to cuBLAS instead
of tuning Triton kernels for each (XLA:GPU compiles and times many tilings per product),
``noautotune`` picks kernels without timing any, ``fastcompile`` does both. None of them is
measured yet. The command below runs batch 32 first with ``fastcompile``, in bfloat16 (the
30x target's setting) and float32 (the 10x target's): the cheapest compile, so the likeliest
batched figures for both targets, and their kernels are what cuBLAS's and cuDNN's
heuristics pick, a floor on what tuning gives. Then batch 32 in bfloat16 with ``cublas``
(cuBLAS's and cuDNN's kernels timed: what tuning buys), and last with XLA's defaults;
batch 1 with the defaults (20.4 ms/step, 126 s to compile) is what they are weighed
against. With ``--partial-ok`` each row starts while 150 s are left, so a row whose
compile runs long takes the rest of the lease, and the rows before it have their figures.
One call with ``carry: [".ref"]`` and
``timeout_s: 560``::

    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 experiments/bench_accelerator.py \
        --reference .ref/dgp --out $OUT --budget-s 540 --config-timeout-s 540 \
        --partial-ok --first-estimate-s 150 --flops-per-image-step 1.678e11 \
        --matmul-from experiments/results/h200-2026-11-30/run1_results.jsonl \
        --rows auto:32:bfloat16:fastcompile,auto:32:float32:fastcompile \
        --rows auto:32:bfloat16:cublas,auto:32:bfloat16

``$OUT`` then holds these four files. A worker killed by its timeout or an OOM
keeps the numbers it had printed (steps first, then FLOPs, then selection), marked
partial. XLA_FLAGS set for the command reach every worker, before the row's own, and each
row records the flags it ran with. ``experiments/accelerator_run.sh`` is the whole first
call of 2026-11-30 (environment, a smoke run, the per-layer lowering table, then this
benchmark).

On a CPU, the same code path with a tiny model::

    PYTHONPATH=. JAX_PLATFORMS=cpu python experiments/bench_accelerator.py --tiny --out /tmp/acc

(``--tiny``: 32 px, ch 4, batches 1,2, lowerings auto,im2col, float32 and bfloat16,
a 512^3 matmul, no reference unless ``--reference`` is given.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dgp_jax.nets import per_image
from dgp_jax.solve import PRECISIONS as SOLVER_PRECISIONS

REPO = Path(__file__).resolve().parents[1]
REF_TOOLS = REPO.parent / "shared" / "reference_tools"
LOWERINGS = ("auto",) + per_image.LOWERINGS
PRECISIONS = tuple(SOLVER_PRECISIONS)
LARGEST = "largest"
RESULT = "RESULT "
STDERR_BYTES_PER_WORKER = 2 * 2**20
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "OutOfMemory", "OOM")
# XLA flag sets a row may add to its worker's XLA_FLAGS (the fourth field of a --rows entry),
# to weigh compile time against kernel speed on a GPU. XLA:GPU tunes each matrix product by
# compiling and timing Triton kernels in many tilings, and on the H200 the batch-32 step had
# not compiled after 292 s; cuBLAS alone (no Triton GEMMs) or no autotuning at all are the
# two cheaper searches. XLA:CPU accepts and ignores these flags.
XLA_PRESETS = {
    "default": (),
    "cublas": ("--xla_gpu_enable_triton_gemm=false",),
    "noautotune": ("--xla_gpu_autotune_level=0",),
    "fastcompile": ("--xla_gpu_enable_triton_gemm=false", "--xla_gpu_autotune_level=0"),
}


# =========================================================================== plan
def parse_batches(text: str) -> list:
    out = []
    for part in text.split(","):
        part = part.strip()
        out.append(LARGEST if part == LARGEST else int(part))
    return out


def parse_rows(text: str) -> list[tuple]:
    """``--rows``: ``lowering:batch:precision[:xla],...`` (batch a number or ``largest``;
    xla one of XLA_PRESETS, default ``default``)."""
    rows = []
    for part in text.split(","):
        fields = part.strip().split(":")
        if len(fields) not in (3, 4):
            raise ValueError(f"{part!r} is not lowering:batch:precision[:xla]")
        lowering, batch, precision, xla = (fields + ["default"])[:4]
        if xla not in XLA_PRESETS:
            raise ValueError(f"{part!r}: xla {xla!r} is not one of {list(XLA_PRESETS)}")
        if lowering not in LOWERINGS:
            raise ValueError(f"{part!r}: lowering {lowering!r} is not one of {list(LOWERINGS)}")
        if precision not in PRECISIONS:
            raise ValueError(f"{part!r}: precision {precision!r} is not one of {list(PRECISIONS)}")
        try:
            batch = parse_batches(batch)[0]
        except ValueError:
            raise ValueError(f"{part!r}: batch {batch!r} is neither a number nor largest") from None
        rows.append((lowering, batch, precision, xla))
    return rows


def plan(args) -> list[dict]:
    """Every measurement, in priority order (the budget cuts from the end)."""
    rows = [{"kind": "matmul"}, {"kind": "reference", "batch": 1}]
    if args.rows:  # an explicit priority list instead of the grid
        rows += [{"kind": "dgp", "lowering": lo, "batch": b, "precision": p, "xla": x}
                 for lo, b, p, x in args.rows]  # fmt: skip
        return rows
    numeric = [b for b in args.batches if b != LARGEST]
    dgp = [
        (lowering, b, p)
        for lowering in args.lowerings
        for b in args.batches
        for p in args.precisions
    ]
    order = []

    def take(items):
        for item in items:
            if item in dgp and item not in order:
                order.append(item)

    if "auto" in args.lowerings:
        main_p = [p for p in ("float32", "bfloat16") if p in args.precisions]
        if numeric:
            take([("auto", numeric[0], "float32")])
            # the largest batches: where the throughput is
            big = [max(numeric)] + ([LARGEST] if LARGEST in args.batches else [])
            take([("auto", b, p) for b in big for p in main_p])
        take([item for item in dgp if item[0] == "auto"])
    focus = [b for b in args.focus_batches if b in args.batches]
    main_p = [p for p in ("float32", "bfloat16") if p in args.precisions]
    take([(lowering, b, p) for lowering in args.lowerings for b in focus for p in main_p])
    take(dgp)
    rows += [{"kind": "dgp", "lowering": lo, "batch": b, "precision": p} for lo, b, p in order]
    return rows


def describe(spec: dict) -> str:
    if spec["kind"] == "matmul":
        return "matmul rates"
    if spec["kind"] == "reference":
        return "reference (PyTorch) batch 1"
    return f"dgp_jax {spec['lowering']} batch {spec['batch']} {spec['precision']}{xla_tag(spec)}"


def xla_tag(row: dict) -> str:
    """`` [cublas]`` for a row run with an XLA flag set, else nothing."""
    xla = row.get("xla", "default")
    return "" if xla == "default" else f" [{xla}]"


def lowering_label(row: dict) -> str:
    """The lowering, with the row's XLA flag set where it has one: ``auto [cublas]``."""
    return row.get("lowering", "-") + xla_tag(row)


# =========================================================================== workers
def _one_device_mesh():
    import jax
    import numpy as np
    from jax.sharding import Mesh

    return Mesh(np.array(jax.devices()[:1]), ("data",))


def _device_info() -> dict:
    import jax

    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    return {
        "device": f"{device.platform}:{device.device_kind}",
        "bytes_limit": stats.get("bytes_limit"),
    }


def worker_matmul(spec: dict) -> dict:
    """TFLOP/s of an n^3 matmul per precision: median of timed runs after warm-up."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    n, reps = spec["size"], spec["reps"]
    out = {"size": n, "tflops": {}}
    for precision in spec["precisions"]:
        dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32
        ka, kb = jax.random.split(jax.random.PRNGKey(0))
        a = jax.random.normal(ka, (n, n), dtype)
        b = jax.random.normal(kb, (n, n), dtype)
        # the solver's matmul precision for this precision (float32: full, HIGHEST)
        with jax.default_matmul_precision(SOLVER_PRECISIONS[precision][0]):
            f = jax.jit(lambda x, y: x @ y)
            for _ in range(2):
                f(a, b).block_until_ready()
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                f(a, b).block_until_ready()
                times.append(time.perf_counter() - t)
        out["tflops"][precision] = 2 * n**3 / float(np.median(times)) / 1e12
    return {**out, **_device_info()}


def _tree_bytes(tree) -> int:
    import jax

    return int(sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def capturing_make_step(make_step, captured: dict, compile_ahead: bool = False):
    """``solve._make_step`` that also records the first step's jitted function and argument
    shapes in ``captured`` ("fn", "shapes"), for XLA's cost and memory analyses (the state
    argument is donated: its shapes are taken before the call).

    ``compile_ahead``: the first call compiles the step ahead of time from its real
    arguments (``fn.lower(*args).compile()``, kept as "compiled") and every call runs that
    executable, so its analyses need no second compile (minutes on a GPU). The compile
    still happens in the first step, as with ``jit``.
    """
    import jax

    def wrapped(prog, tx, mesh):
        fn = make_step(prog, tx, mesh)

        def step(*args):
            if "shapes" not in captured:
                captured["fn"] = fn
                captured["shapes"] = jax.tree.map(
                    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), args
                )
                if compile_ahead:
                    captured["compiled"] = fn.lower(*args).compile()
            if "compiled" in captured:
                return captured["compiled"](*args)
            return fn(*args)

        return step

    return wrapped


def solve_with_step(wrap, model, config, batch: int, lowering: str) -> None:
    """One ``dgp_jax.restore`` of ``batch`` random images on one device, with
    ``solve._make_step`` replaced by ``wrap(solve._make_step)`` (and the step cache cleared
    before and after, so that the wrapper sees a fresh step and leaves none behind)."""
    import numpy as np

    import dgp_jax
    from dgp_jax import solve

    make_step = solve._make_step
    solve._make_step = wrap(make_step)
    solve._cached_step.cache_clear()
    try:
        shape = (batch, model.config.resolution, model.config.resolution, 3)
        images = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
        dgp_jax.restore(model, images, np.arange(batch), config, 0, mesh=_one_device_mesh(),
                        lowering=lowering)  # fmt: skip
    finally:
        solve._make_step = make_step
        solve._cached_step.cache_clear()


def worker_dgp(spec: dict) -> dict:
    """One (lowering, batch, precision): step, selection, compile, memory and FLOPs."""
    import jax
    import numpy as np
    from selection_timer import selection_seconds  # this script's folder is on sys.path

    import dgp_jax
    import dgp_jax.solve as solve
    from dgp_jax.nets.biggan import BigGANConfig

    batch, precision, lowering = spec["batch"], spec["precision"], spec["lowering"]
    cfg = BigGANConfig(resolution=spec["resolution"], G_ch=spec["ch"], D_ch=spec["ch"])
    model = dgp_jax.random_biggan(cfg, jax.random.PRNGKey(0), init="N02")
    full = dgp_jax.SolverConfig.preset(spec["preset"], resolution=None)
    n = full.num_stages
    mesh = _one_device_mesh()
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (batch, cfg.resolution, cfg.resolution, 3)).astype(np.float32)
    classes = np.arange(batch) % cfg.n_classes

    captured: dict = {}
    make_step = solve._make_step

    solve._make_step = capturing_make_step(make_step, captured, compile_ahead=True)

    def run(config):
        stamps = []

        def callback(step, total, info):
            jax.block_until_ready(info["record"])
            stamps.append(time.perf_counter())

        start = time.perf_counter()
        result = dgp_jax.restore(model, images, classes, config, jax.random.PRNGKey(1),
                                 mesh=mesh, callback=callback, precision=precision,
                                 lowering=lowering)  # fmt: skip
        jax.block_until_ready(result.params)
        del result
        return start, stamps

    # The last stage: every group of G fine-tuned (what bench_solver.py times).
    # Two identical runs (the step table's length is part of the compiled shape).
    steps_cfg = full.replace(iterations=(0,) * (n - 1) + (spec["steps"],), select_num=0)
    cold_start, cold = run(steps_cfg)
    warm_start, warm = run(steps_cfg)
    steps = np.diff(warm)
    per_step = float(np.median(steps))
    compile_s = (cold[0] - cold_start) - (warm[0] - warm_start)
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")

    state = captured["shapes"][0]
    padded = jax.tree.leaves(state["trainable"])[0].shape[0]
    row = {
        **_device_info(),
        "resolution": spec["resolution"],
        "ch": spec["ch"],
        "preset": spec["preset"],
        "steps_timed": len(steps),
        "s_per_step": per_step,
        "s_per_step_per_image": per_step / batch,
        "compile_s": compile_s,
        "peak_bytes": peak,
        "peak_bytes_per_image": None if peak is None else peak / batch,
        "param_bytes_per_image": _tree_bytes(state["trainable"]) / padded,
        "adam_bytes_per_image": _tree_bytes(state["opt_state"]) / padded,
        "tfds_imported": "tensorflow_datasets" in sys.modules,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    print(RESULT + json.dumps({**row, "partial": "steps only"}), flush=True)

    # The executable the steps ran (compiled ahead from their arguments): its FLOPs (XLA's
    # cost analysis; a GPU's lowered step gave none, jax 0.11) and its buffer assignment, the
    # device memory the step needs without the autotuner's scratch that the peak includes.
    row["flops_per_step"] = None
    try:
        compiled = captured["compiled"]
        cost = compiled.cost_analysis()
        if isinstance(cost, list | tuple):
            cost = cost[0]
        row["flops_per_step"] = float(cost["flops"]) if cost and "flops" in cost else None
        mem = compiled.memory_analysis()
        row["program_argument_bytes"] = int(mem.argument_size_in_bytes)
        row["program_temp_bytes"] = int(mem.temp_size_in_bytes)
        row["program_bytes"] = int(
            mem.argument_size_in_bytes + mem.temp_size_in_bytes
            + mem.output_size_in_bytes - mem.alias_size_in_bytes
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        row["analysis_error"] = f"{type(e).__name__}: {e}"[:300]
    print(RESULT + json.dumps({**row, "partial": "no selection time"}), flush=True)

    # Selection alone: two runs without steps (the first compiles); select_images candidate
    # images per pass, shared among the batch (at least one each).
    cands = spec["select"]
    sel_cfg = full.replace(iterations=(0,) * n, select_num=cands,
                           select_batch=spec["select_images"])  # fmt: skip
    row["select_chunk"] = solve.select_chunk(spec["select_images"], batch, cands)
    row["s_per_select_per_image"] = None
    try:
        with selection_seconds() as select_times:
            run(sel_cfg)
            run(sel_cfg)
        row["s_per_select_per_image"] = select_times[-1] / cands / batch
    except Exception as e:  # noqa: BLE001 - an OOM here keeps the step's numbers
        row["select_error"] = f"{type(e).__name__}: {e}"[:300]

    return row


def worker_reference(spec: dict) -> dict:
    """The reference DGP (PyTorch) at batch 1: seconds per step and per selection forward.

    Real CUDA where torch has it (the reference's ``.cuda()`` calls as published, times
    with ``torch.cuda.synchronize()``); on a CPU-only machine (a smoke test) the
    ``refgen_stubs`` of ../shared/reference_tools turn ``.cuda()`` into a no-op and stand in
    for torchvision.
    """
    import contextlib
    import io

    import numpy as np
    import torch
    import torch.nn as nn

    ref = str(Path(spec["reference"]).resolve())
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ["DGP_REF"] = ref
        sys.path.insert(0, spec["reference_tools"])
        import refgen_stubs

        refgen_stubs.install()
        torch.UntypedStorage.cuda = lambda self, *a, **k: self
    sys.path.insert(0, ref)
    from PIL import Image

    if not hasattr(Image, "ANTIALIAS"):
        Image.ANTIALIAS = Image.LANCZOS
    import skimage.measure
    import skimage.metrics

    # Names the reference imports that newer scikit-image dropped.
    if not hasattr(skimage.measure, "compare_psnr"):
        skimage.measure.compare_psnr = lambda a, b: skimage.metrics.peak_signal_noise_ratio(
            a, b, data_range=1.0
        )
    if not hasattr(skimage.measure, "compare_ssim"):
        skimage.measure.compare_ssim = lambda a, b, multichannel=True: (
            skimage.metrics.structural_similarity(a, b, channel_axis=2, data_range=1.0)
        )
    from models import biggan
    from models.dgp import DGP

    def sync():
        if cuda:
            torch.cuda.synchronize()

    res, ch = spec["resolution"], spec["ch"]
    torch.manual_seed(0)
    cfg = dict(G_ch=ch, D_ch=ch, resolution=res, G_shared=True, hier=True, dim_z=120,
               shared_dim=128, n_classes=1000, G_attn="64", D_attn="64", BN_eps=1e-5,
               SN_eps=1e-6, G_activation=nn.ReLU(inplace=False),
               D_activation=nn.ReLU(inplace=False), skip_init=True)  # fmt: skip
    # skip_init: PyTorch's default initialisation rather than BigGAN's orthogonal one, which
    # takes tens of seconds on the host at ch 96 (done four times here); the weights are
    # random either way, and the DGP object loads the saved ones.
    wd = tempfile.mkdtemp()
    with contextlib.redirect_stdout(io.StringIO()):
        G = biggan.Generator(**cfg)
        D = biggan.Discriminator(**cfg)
    torch.save(G.state_dict(), f"{wd}/G_ema_x.pth")
    torch.save(D.state_dict(), f"{wd}/D_x.pth")
    del G, D
    warm, steps = spec["warm_steps"], spec["steps"]
    stage = spec["stage"]  # the preset's last stage: all groups trained (ft_num 7)
    config = dict(cfg, dist=False, dgp_mode=spec["mode"], update_G=True, update_embed=False,
                  iterations=[warm + steps], ftr_num=[stage["ftr_num"]], ft_num=[7],
                  lr_ratio=[1.0], G_lrs=[stage["G_lr"]], z_lrs=[stage["z_lr"]], use_in=[False],
                  select_num=spec["select"], sample_std=stage["sample_std"],
                  w_D_loss=[stage["w_D"]], w_mse=[stage["w_mse"]], w_nll=stage["w_nll"],
                  random_G=False, weights_root=wd, load_weights="x", use_ema=True,
                  ftr_type="Discriminator", G_lr=stage["G_lr"], G_B1=0.0, G_B2=0.999,
                  warm_up=0, stop_mse=0.0, stop_ftr=0.0, print_interval=100000, save_G=False,
                  exp_path=wd, no_optim=False, optimizer="Adam", adam_eps=1e-8,
                  G_mixed_precision=False, D_mixed_precision=False, num_G_SVs=1, num_D_SVs=1,
                  num_G_SV_itrs=1, num_D_SV_itrs=1, G_init="ortho", D_init="ortho",
                  norm_style="bn", G_param="SN", D_param="SN", cross_replica=False, mybn=False,
                  bottom_width=4, G_kernel_size=3, D_kernel_size=3, D_wide=True)  # fmt: skip
    for d in ("images", "images_sheet"):
        os.makedirs(f"{wd}/{d}", exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):
        dgp = DGP(config)
    target = torch.rand(1, 3, res, res) * 2 - 1
    dgp.set_target(target.cuda() if cuda else target, torch.tensor([1]), "x.png")

    # Selection: a short warm-up (cuDNN's first calls), then the timed candidates.
    with contextlib.redirect_stdout(io.StringIO()):
        dgp.select_num = 2
        dgp.select_z()
        dgp.select_num = spec["select"]
        sync()
        t = time.perf_counter()
        dgp.select_z()
        sync()
    per_select = (time.perf_counter() - t) / spec["select"]

    def timed_steps() -> float:
        stamps = []
        orig = dgp.z_optim.step

        def stamped(*a, **k):
            out = orig(*a, **k)
            sync()
            stamps.append(time.perf_counter())
            return out

        dgp.z_optim.step = stamped
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                dgp.run()
        finally:
            dgp.z_optim.step = orig
        return float(np.median(np.diff(stamps)[max(0, warm - 1) :]))

    # As published: the loop computes PSNR/SSIM (scikit-image, on the host) every step.
    per_step = timed_steps()
    row = {
        "device": f"cuda:{torch.cuda.get_device_name(0)}" if cuda else "cpu (reference stubs)",
        "torch": torch.__version__,
        "s_per_step_with_metrics": per_step,
        "s_per_select_per_image": per_select,
    }
    print(RESULT + json.dumps({**row, "partial": "with per-step metrics only"}), flush=True)
    # Without those per-step metrics (pure logging): the faster, conservative baseline. The
    # loop still concatenates the colorized image (on the host in the original) to its sheet
    # at the first step: a host placeholder stands in, with no copy or sync per step.
    sheet_image = torch.zeros(1, 3, res, res)
    dgp.get_metrics = lambda x: ({}, sheet_image)
    per_step_bare = timed_steps()
    return {
        **row,
        "resolution": res,
        "ch": ch,
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "s_per_step": per_step_bare,
        "s_per_step_per_image": per_step_bare,
        "steps_timed": steps,
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "threads": torch.get_num_threads(),
    }


WORKERS = {"matmul": worker_matmul, "dgp": worker_dgp, "reference": worker_reference}


def worker_main(text: str) -> int:
    spec = json.loads(text)
    row = WORKERS[spec["kind"]](spec)
    print(RESULT + json.dumps(row), flush=True)
    return 0


# =========================================================================== orchestration
def worker_command(spec: dict) -> list[str]:
    """The command that runs one measurement (a test replaces it to simulate failures)."""
    return [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]


def worker_env(spec: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.97")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # One device, as the benchmark measures (tests set 8 host devices for themselves).
    flags = env.get("XLA_FLAGS", "").split()
    flags = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
    added = XLA_PRESETS[(spec or {}).get("xla", "default")]
    # the row's set last: XLA takes the last value of a flag given twice
    env["XLA_FLAGS"] = " ".join(flags + list(added))
    return env


def run_worker(spec: dict, timeout: float, log, stderr_path: Path) -> tuple[str, dict, float, str]:
    """(status, result, wall seconds, reason): status ok / oom / failed / timeout.

    The worker's stderr is appended straight to ``stderr_path`` under a header naming the row,
    so it is there even when the whole command is killed mid-row (a lease's limit); the log
    gets its tail. One file for all workers: a lease returns at most 8 files."""
    start = time.perf_counter()
    with open(stderr_path, "a") as err_file:
        err_file.write(f"=== {describe(spec)}\n")
        err_file.flush()
        begin = err_file.tell()
        proc = subprocess.Popen(worker_command(spec), stdout=subprocess.PIPE, stderr=err_file,
                                text=True, env=worker_env(spec), cwd=str(REPO),
                                start_new_session=True)  # fmt: skip
        try:
            out, _ = proc.communicate(timeout=max(1.0, timeout))
            timed_out = False
        except subprocess.TimeoutExpired:
            with _suppress():
                os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            timed_out = True
    wall = time.perf_counter() - start
    err = _keep_within(stderr_path, begin, STDERR_BYTES_PER_WORKER)
    _log_tail(log, spec, err, stderr_path)
    result = _last_result(out)
    if timed_out:
        return "timeout", result, wall, f"killed after {timeout:.0f} s"
    if proc.returncode == 0 and result:
        return "ok", result, wall, ""
    text = err + (out or "")
    last = [s for s in text.strip().splitlines() if s.strip()][-1:] or [""]
    if any(m in text for m in OOM_MARKERS):
        return "oom", result, wall, f"out of memory (exit {proc.returncode}): {last[0][:200]}"
    return "failed", result, wall, f"exit {proc.returncode}: {last[0][:200]}"


def _keep_within(path: Path, begin: int, limit: int) -> str:
    """The text a worker wrote to ``path`` from byte ``begin`` on; past ``limit`` bytes only
    its first and last halves stay in the file (a file over 16 MiB would not come back)."""
    with open(path, "rb") as f:
        f.seek(begin)
        data = f.read()
    if len(data) > limit:
        cut = len(data) - limit
        mark = f"\n[... {cut} bytes left out ...]\n".encode()
        data = data[: limit // 2] + mark + data[-(limit // 2) :]
        with open(path, "r+b") as f:
            f.seek(begin)
            f.write(data)
            f.truncate()
    if data and not data.endswith(b"\n"):
        with open(path, "ab") as f:
            f.write(b"\n")
    return data.decode(errors="replace")


def _last_result(out: str | None) -> dict:
    """The worker's last RESULT line (a killed worker may have printed a partial one)."""
    lines = [s for s in (out or "").splitlines() if s.startswith(RESULT)]
    return json.loads(lines[-1][len(RESULT) :]) if lines else {}


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


def _log_tail(log, spec, err, path):
    if err and err.strip():
        log(f"--- stderr of {describe(spec)} (its last 3000 characters; more in {path.name})\n"
            f"{err[-3000:]}")  # fmt: skip


def memory_key(rows: list[dict]) -> str:
    """The memory figure of these rows: XLA's buffer assignment of the compiled step where
    every row has it, else the device's peak (which includes the autotuner's scratch)."""
    if rows and all(r.get("program_bytes") for r in rows):
        return "program_bytes"
    return "peak_bytes"


def fit_memory(rows: list[dict]) -> tuple[float, float] | None:
    """(fixed bytes, bytes per image) through the memory of finished batches."""
    key = memory_key(rows)
    most: dict = {}  # one point per batch (rows of other XLA flags may share one): its most
    for r in rows:
        if r.get(key):
            most[r["batch"]] = max(most.get(r["batch"], 0), r[key])
    points = sorted(most.items())
    if not points:
        return None
    if len(points) == 1:
        b, peak = points[0]
        return 0.0, peak / b  # all of it counted per image: conservative
    (b1, p1), (b2, p2) = points[-2], points[-1]
    per = (p2 - p1) / (b2 - b1)
    if per <= 0:
        return 0.0, p2 / b2
    return max(0.0, p2 - per * b2), per


def setting(row: dict) -> tuple:
    """What a dgp_jax row measures apart from its batch: lowering, precision, XLA flags."""
    return row.get("lowering"), row.get("precision"), row.get("xla", "default")


def ran_like(rows: list[dict], spec: dict) -> list[dict]:
    """The finished dgp_jax rows of ``spec``'s setting."""
    return [r for r in rows if r.get("kind") == "dgp" and r.get("status") == "ok"
            and setting(r) == setting(spec)]  # fmt: skip


def largest_batch(rows: list[dict], spec: dict, fraction: float):
    """(batch to try or None, reason) for the largest batch of ``spec``'s setting that fits."""
    ran = ran_like(rows, spec)
    if not ran:
        return None, "no batch of this lowering, precision and XLA flag set ran"
    limit = max((r.get("bytes_limit") or 0) for r in ran)
    fit = fit_memory(ran)
    if not limit or fit is None:
        return None, "the device reports no memory statistics"
    fixed, per = fit
    batch = int((fraction * limit - fixed) // per)
    done = max(r["batch"] for r in ran)
    if batch <= done:
        return None, f"batch {done} already ran; {fraction:.0%} of memory fits {batch}"
    return batch, f"{fraction:.0%} of {limit / 1e9:.1f} GB at {per / 1e9:.3f} GB/image"


def estimate(spec: dict, rows: list[dict], first: float) -> float:
    """Seconds the measurement should take: the finished row most like it (the same lowering,
    precision and XLA flags if one ran, else the same lowering and flags, else the same
    lowering), at the nearest batch."""
    same = [r for r in rows if r.get("kind") == spec["kind"] and r.get("wall_s")]
    if spec["kind"] != "dgp" or not same:
        return same[-1]["wall_s"] if same else first
    # the most specific rows that ran: the same setting, else lowering and flags, else lowering
    likeness = (setting, lambda r: setting(r)[::2], lambda r: setting(r)[0])
    like = next((m for key in likeness if (m := [r for r in same if key(r) == key(spec)])), same)
    b = spec["batch"] if isinstance(spec["batch"], int) else 10**9
    return min(like, key=lambda r: (abs(math.log(max(r["batch"], 1) / max(b, 1))),
                                    -r["wall_s"]))["wall_s"]  # fmt: skip


def schedule_numbers(preset: str) -> dict:
    from dgp_jax.config import SolverConfig

    full = SolverConfig.preset(preset, resolution=None)
    return {
        "select_num": full.select_num,
        "total_steps": full.total_steps,
        "mode": full.dgp_mode,
        "stage": {
            "ftr_num": full.ftr_num[-1],
            "G_lr": full.G_lrs[-1],
            "z_lr": full.z_lrs[-1],
            "w_D": full.w_D_loss[-1],
            "w_mse": full.w_mse[-1],
            "w_nll": full.w_nll,
            "sample_std": full.sample_std,
        },
    }


def add_derived(row: dict, schedule: dict, matmul: dict | None, reference: dict | None,
                flops_per_image: float | None = None):  # fmt: skip
    if row["kind"] == "matmul" or "s_per_step_per_image" not in row:
        return row  # (a killed worker may have left partial numbers: those are shown)
    row["images_per_hour"] = None
    if row.get("s_per_select_per_image") is not None:
        per_image = (
            schedule["select_num"] * row["s_per_select_per_image"]
            + schedule["total_steps"] * row["s_per_step_per_image"]
        )
        row["images_per_hour"] = 3600 / per_image
    if row["kind"] == "dgp":
        if not row.get("flops_per_step") and flops_per_image:
            row["flops_per_step"] = flops_per_image * row["batch"]
            row["flops_source"] = "--flops-per-image-step"
        if row.get("flops_per_step"):
            row["tflops"] = row["flops_per_step"] / row["s_per_step"] / 1e12
            rate = (matmul or {}).get("tflops", {}).get(row["precision"])
            row["matmul_fraction"] = row["tflops"] / rate if rate else None
        if reference and reference.get("images_per_hour") and row["images_per_hour"]:
            row["x_reference"] = row["images_per_hour"] / reference["images_per_hour"]
        if reference:
            row["x_reference_step"] = reference["s_per_step"] / row["s_per_step_per_image"]
    return row


def _fmt(v, spec="{:.3g}"):
    if v is None:
        return "-"
    return spec.format(v) if isinstance(v, float) else str(v)


def memory_lines(rows: list[dict], args) -> list[str]:
    lines = []
    groups = {}
    for r in rows:
        if (
            r.get("kind") == "dgp"
            and r.get("status") == "ok"
            and (r.get("peak_bytes") or r.get("program_bytes"))
        ):
            groups.setdefault(setting(r), []).append(r)
    for (_, precision, _), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["batch"])
        fixed, per = fit_memory(rs)
        source = "XLA" if memory_key(rs) == "program_bytes" else "peak"
        limit = max(r.get("bytes_limit") or 0 for r in rs)
        big = max(rs, key=lambda r: r["batch"])
        params, adam = big["param_bytes_per_image"], big["adam_bytes_per_image"]
        fits = int((limit - fixed) // per) if limit else None
        lines.append(
            f"| {lowering_label(rs[0])} | {precision} "
            f"| {', '.join(str(r['batch']) for r in rs)} | {source} "
            f"| {fixed / 1e9:.2f} | {per / 1e9:.3f} | {params / 1e9:.3f} | {adam / 1e9:.3f} "
            f"| {max(0.0, per - params - adam) / 1e9:.3f} | {_fmt(fits)} |"
        )
    if not lines:
        return ["No memory statistics (the device reports none, or no row ran)."]
    limit = max(r.get("bytes_limit") or 0 for r in rows if r.get("kind") == "dgp")
    return [
        f"Images in flight in {limit / 1e9:.1f} GB (what JAX may allocate: "
        "XLA_PYTHON_CLIENT_MEM_FRACTION of the device), from a line through the memory of the "
        "largest batches that ran (fixed + per image): XLA's buffer assignment of the compiled "
        "step (source XLA), or else the device's peak, which includes the autotuner's scratch "
        "(source peak). Per image: parameters (the "
        "per-image generator, float32), the optimiser's state (Adam; the presets' beta1 = 0 keeps "
        "no first moment), and the rest (gradients, "
        "activations, workspace).",
        "",
        "| lowering | precision | batches | source | fixed GB | GB/image | params GB | Adam GB "
        "| rest GB | images that fit |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ] + lines


def write_table(path: Path, rows: list[dict], args, schedule: dict, started: str) -> str:
    matmul = next((r for r in rows if r["kind"] == "matmul" and r.get("status") == "ok"), None)
    reference = next((r for r in rows if r["kind"] == "reference"
                      and r.get("status") == "ok"), None)  # fmt: skip
    device = next((r["device"] for r in rows if r.get("device")), "unknown device")
    out = [
        f"### Accelerator benchmark, {started[:10]}, {device}",
        "",
        f"`experiments/bench_accelerator.py` ({started}): {args.resolution} px BigGAN, "
        f"G_ch = D_ch = {args.ch}, random weights; the `{args.preset}` preset's last stage "
        "(every generator group fine-tuned). images/hour: the whole schedule per image, "
        f"{schedule['select_num']} candidates x s/candidate + {schedule['total_steps']} steps "
        "x s/step/image. x ref: images/hour over the reference's (the reference timed "
        "without its per-step PSNR/SSIM logging: the faster baseline). compile: first step "
        "minus a warm one. % matmul: the step's FLOPs (XLA cost analysis, or "
        "--flops-per-image-step) per second over the measured matmul rate of the same "
        "precision.",
        "",
    ]
    flags = xla_flags_line(rows)
    if flags:
        out += [flags, ""]
    if matmul:
        rates = ", ".join(f"{p} {v:.1f}" for p, v in matmul["tflops"].items())
        source = f", from {matmul['from']}" if matmul.get("from") else ""
        out += [f"Measured matmul rate ({matmul['size']}^3{source}), TFLOP/s: {rates}.", ""]
    out += [
        "| impl | lowering | precision | batch | s/step/image | s/candidate | compile s "
        "| peak GB/image | images/hour | x ref | TFLOP/s | % matmul |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    measured = [r for r in rows if r["kind"] != "matmul" and "s_per_step_per_image" in r]
    order = {lo: i for i, lo in enumerate(LOWERINGS)}
    precision_order = {p: i for i, p in enumerate(PRECISIONS)}
    measured.sort(
        key=lambda r: (
            r["kind"] != "reference",
            order.get(r.get("lowering"), -1),
            precision_order.get(r.get("precision"), -1),
            r["batch"],
            r.get("xla", "default"),
        )
    )
    for r in measured:
        peak = r.get("peak_bytes_per_image") or (
            r["peak_bytes"] if r["kind"] == "reference" else None
        )
        frac = r.get("matmul_fraction")
        if r["kind"] == "reference":
            prec = "float32" + (" (cuDNN TF32)" if r.get("cudnn_allow_tf32") else "")
        else:
            prec = r["precision"]
        out.append(
            f"| {'dgp_jax' if r['kind'] == 'dgp' else 'reference'} | {lowering_label(r)} "
            f"| {prec} | {r['batch']}{'' if r['status'] == 'ok' else ' (' + r['status'] + ')'} "
            f"| {r['s_per_step_per_image']:.4g} "
            f"| {_fmt(r.get('s_per_select_per_image'))} | {_fmt(r.get('compile_s'), '{:.1f}')} "
            f"| {_fmt(None if peak is None else peak / 1e9, '{:.3f}')} "
            f"| {_fmt(r.get('images_per_hour'), '{:.4g}')} "
            f"| {_fmt(r.get('x_reference'), '{:.2f}')} "
            f"| {_fmt(r.get('tflops'), '{:.2f}')} "
            f"| {_fmt(None if frac is None else 100 * frac, '{:.1f}')} |"
        )
    if reference:
        out += [
            "",
            "Reference with its per-step metrics, as published: "
            f"{reference['s_per_step_with_metrics']:.4g} s/step (torch {reference.get('torch')}, "
            f"cuDNN TF32 {reference.get('cudnn_allow_tf32')}).",
        ]
    out += ["", "Memory:", ""] + memory_lines(rows, args)
    skipped = [r for r in rows if r.get("status") != "ok"]
    if skipped:
        out += ["", "Not measured:", ""]
        out += [f"- {describe(r)}: {r['status']} ({r.get('reason', '')})" for r in skipped]
    text = "\n".join(out) + "\n"
    path.write_text(text)
    return text


def xla_flags_line(rows: list[dict]) -> str:
    """The XLA_FLAGS the dgp_jax rows ran with, per flag set (``''`` if none had any)."""
    by_set: dict = {}
    for r in rows:
        if r.get("kind") == "dgp" and "xla_flags" in r:
            by_set.setdefault(r.get("xla", "default"), set()).add(r["xla_flags"])
    if not any(f for seen in by_set.values() for f in seen):
        return ""
    named = len(by_set) > 1 or "default" not in by_set
    parts = []
    for name, seen in by_set.items():
        text = " or ".join(f"`{f}`" if f else "none" for f in sorted(seen))
        parts.append(f"[{name}] {text}" if named else text)
    return f"XLA_FLAGS of the dgp_jax rows: {'; '.join(parts)}."


def read_matmul_row(path: str, parser: argparse.ArgumentParser) -> dict:
    """The measured matmul row of an earlier run's results.jsonl (else a usage error)."""
    try:
        lines = Path(path).read_text().splitlines()
        earlier = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as err:
        parser.error(f"--matmul-from {path}: not a readable results.jsonl ({err})")
    found = [r for r in earlier if r.get("kind") == "matmul" and r.get("status") == "ok"]
    if not found:
        parser.error(f"--matmul-from {path}: no measured matmul row")
    return found[0]


def _presets_help() -> str:
    return "; ".join(f"{name} {' '.join(flags) or '(none)'}" for name, flags in XLA_PRESETS.items())


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, with --tiny's and the full run's defaults filled in."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out", default="out/bench_accelerator")
    p.add_argument("--reference", help="reference DGP checkout (e.g. .ref/dgp): time it too")
    p.add_argument("--reference-tools", default=str(REF_TOOLS),
                   help="folder of refgen_stubs.py (used only where CUDA is absent)")  # fmt: skip
    p.add_argument("--tiny", action="store_true", help="a tiny model and grid, for a CPU")
    p.add_argument("--resolution", type=int)
    p.add_argument("--ch", type=int)
    p.add_argument("--preset", default="colorization")
    p.add_argument("--batches", help="e.g. 1,8,32,64,largest")
    p.add_argument("--focus-batches", default="8,32",
                   help="batches at which the other lowerings go first")  # fmt: skip
    p.add_argument("--lowerings", help=f"comma-separated, of {','.join(LOWERINGS)}")
    p.add_argument(
        "--rows",
        action="append",
        help="instead of the grid, these rows in this order: lowering:batch:precision[:xla],"
        "... (e.g. auto:64:bfloat16,vmap:largest:float32:cublas; given again, its rows "
        "follow); xla adds XLA flags to the row's worker: " + _presets_help(),
    )
    p.add_argument("--precisions", help=f"comma-separated, of {','.join(PRECISIONS)}")
    p.add_argument("--steps", type=int, default=4, help="warm steps per row (median of diffs)")
    p.add_argument("--select", type=int, default=4, help="start candidates timed per image")
    p.add_argument("--select-images", type=int, default=None,
                   help="candidate images scored per pass (select_batch; default: the "
                   "solver's default for the backend, dgp_jax.solve.SELECT_BATCH)")  # fmt: skip
    p.add_argument("--ref-steps", type=int, default=10)
    p.add_argument("--ref-select", type=int, default=8)
    p.add_argument("--matmul-size", type=int)
    p.add_argument("--matmul-from", help="take the matmul rates from this results.jsonl of an "
                   "earlier run on the same device instead of measuring them")  # fmt: skip
    p.add_argument("--partial-ok", action="store_true",
                   help="start a row whenever --first-estimate-s is left (not only when a "
                   "similar row's time is); a row cut short keeps what it printed")  # fmt: skip
    p.add_argument("--flops-per-image-step", type=float,
                   help="the step's FLOPs per image, where the device's cost analysis gives "
                   "none (XLA:CPU's of the same step, e.g.)")  # fmt: skip
    p.add_argument("--budget-s", type=float, default=450.0)
    p.add_argument("--config-timeout-s", type=float, default=540.0,
                   help="one measurement's limit (a GPU compiled the 128 px step at batch 32 "
                   "in more than 292 s)")  # fmt: skip
    p.add_argument("--first-estimate-s", type=float, default=20.0,
                   help="assumed duration of a measurement of a kind not yet run")  # fmt: skip
    p.add_argument("--fit-fraction", type=float, default=0.9)
    args = p.parse_args(argv)
    if args.worker:
        return args
    tiny = args.tiny
    args.resolution = args.resolution or (32 if tiny else 128)
    args.ch = args.ch or (4 if tiny else 96)
    args.batches = parse_batches(args.batches or ("1,2" if tiny else "1,8,32,64,largest"))
    args.focus_batches = parse_batches(args.focus_batches)
    args.lowerings = (args.lowerings or ("auto,im2col" if tiny else ",".join(LOWERINGS))).split(",")
    args.precisions = args.precisions or ("float32,bfloat16" if tiny else ",".join(PRECISIONS))
    args.precisions = args.precisions.split(",")
    args.matmul_size = args.matmul_size or (512 if tiny else 8192)
    if args.matmul_from:
        args.earlier_matmul = read_matmul_row(args.matmul_from, p)
    if args.rows:
        try:
            args.rows = parse_rows(",".join(args.rows))
        except ValueError as e:
            p.error(f"--rows: {e}")
        # the matmul rates of the precisions the rows use
        args.precisions = [q for q in PRECISIONS if q in {r[2] for r in args.rows}]
    for name, allowed in (("lowerings", LOWERINGS), ("precisions", PRECISIONS)):
        bad = [v for v in getattr(args, name) if v not in allowed]
        if bad:
            p.error(f"--{name}: unknown {bad}; choose from {list(allowed)}")
    if args.steps < 2 or args.select < 1 or args.ref_steps < 1 or args.ref_select < 1:
        p.error("--steps must be >= 2 (a median of step-to-step times); selects and ref steps >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    results.write_text("")
    (out / "stderr.txt").write_text("")
    log_file = open(out / "log.txt", "w")  # noqa: SIM115 - kept open for the whole run

    def log(text: str):
        print(text, flush=True)
        log_file.write(text + "\n")
        log_file.flush()

    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.perf_counter()
    schedule = schedule_numbers(args.preset)
    from dgp_jax.nets.biggan import BigGANConfig

    num_feats = BigGANConfig(resolution=args.resolution, G_ch=args.ch, D_ch=args.ch)
    schedule["stage"]["ftr_num"] = min(schedule["stage"]["ftr_num"], num_feats.num_d_features)
    specs = plan(args)
    log(
        f"bench_accelerator {started}: {args.resolution} px ch {args.ch}, preset {args.preset}, "
        f"budget {args.budget_s:.0f} s; plan ({len(specs)} measurements, priority order):"
    )
    for i, spec in enumerate(specs):
        log(f"  {i + 1:3d}. {describe(spec)}")

    rows: list[dict] = []
    matmul = reference = None

    def record(row: dict):
        add_derived(row, schedule, matmul, reference, args.flops_per_image_step)
        rows.append(row)
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
        what = describe(row)
        if row["status"] == "ok":
            detail = ""
            if row["kind"] == "matmul":
                detail = ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in row["tflops"].items())
            else:
                detail = (f"{row['s_per_step_per_image']:.4g} s/step/image, "
                          f"{_fmt(row.get('images_per_hour'), '{:.4g}')} images/hour")  # fmt: skip
            log(f"[{time.perf_counter() - t0:6.1f} s] {what}: {detail} ({row['wall_s']:.1f} s)")
        else:
            log(f"[{time.perf_counter() - t0:6.1f} s] {what}: {row['status'].upper()} "
                f"- {row.get('reason', '')}")  # fmt: skip

    def measure(spec: dict) -> dict:
        left = args.budget_s - (time.perf_counter() - t0)
        guess = estimate(spec, rows, args.first_estimate_s)
        if args.partial_ok:
            guess = min(guess, args.first_estimate_s)
        if guess > left:
            return {**spec, "status": "skipped",
                    "reason": f"budget: {left:.0f} s left, about {guess:.0f} s needed"}  # fmt: skip
        work = dict(spec, resolution=args.resolution, ch=args.ch, preset=args.preset)
        if spec["kind"] == "matmul":
            work.update(size=args.matmul_size, reps=5, precisions=args.precisions)
        elif spec["kind"] == "dgp":
            work.update(steps=args.steps, select=args.select, select_images=args.select_images)
        else:
            work.update(reference=str(Path(args.reference).resolve()),
                        reference_tools=args.reference_tools,
                        warm_steps=2, steps=args.ref_steps, select=args.ref_select,
                        mode=schedule["mode"], stage=schedule["stage"])  # fmt: skip
        log(f"[{time.perf_counter() - t0:6.1f} s] {describe(spec)} ...")
        status, result, wall, reason = run_worker(work, min(args.config_timeout_s, left), log,
                                                  out / "stderr.txt")  # fmt: skip
        row = {**spec, **result, "status": status, "wall_s": wall}
        if reason:
            row["reason"] = reason
        return row

    for spec in specs:
        if spec["kind"] == "matmul" and args.matmul_from:
            matmul = {**args.earlier_matmul, "from": args.matmul_from, "wall_s": 0.0}
            record(matmul)
            continue
        if spec["kind"] == "reference" and not args.reference:
            record({**spec, "status": "skipped", "reason": "no --reference given"})
            continue
        if spec["kind"] == "reference" and not (Path(args.reference) / "models").is_dir():
            why = f"{args.reference} is no reference checkout (no models/)"
            record({**spec, "status": "skipped", "reason": why})
            continue
        if spec["kind"] == "dgp" and spec["batch"] == LARGEST:
            batch, why = largest_batch(rows, spec, args.fit_fraction)
            if batch is None:
                record({**spec, "status": "skipped", "reason": f"largest: {why}"})
                continue
            good = max(r["batch"] for r in ran_like(rows, spec))
            log(f"largest batch for {lowering_label(spec)} {spec['precision']}: {batch} ({why})")
            for _attempt in range(3):
                row = measure({**spec, "batch": batch})
                row["largest"] = True
                record(row)
                if row["status"] != "oom":
                    break
                batch = (good + batch) // 2  # halve the gap to the largest batch that ran
                if batch <= good:
                    break
            continue
        row = measure(spec)
        record(row)
        if spec["kind"] == "matmul" and row["status"] == "ok":
            matmul = row
        if spec["kind"] == "reference" and row["status"] == "ok":
            reference = row
            for r in rows:  # (none yet in priority order, but keep the rows consistent)
                add_derived(r, schedule, matmul, reference, args.flops_per_image_step)
    table = write_table(out / "table.md", rows, args, schedule, started)
    log("\n" + table)
    skipped = [r for r in rows if r["status"] != "ok"]
    log(f"done in {time.perf_counter() - t0:.0f} s: {len(rows) - len(skipped)} measured, "
        f"{len(skipped)} not measured; files in {out}")  # fmt: skip
    log_file.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
