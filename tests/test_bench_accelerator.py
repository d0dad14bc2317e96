"""experiments/bench_accelerator.py: its tiny run end to end on the CPU (real workers), and
its orchestration (plan, budget, largest batch, OOM, timeouts) with stand-in workers.

No GPU and no reference checkout needed; no timing is asserted.
"""

from __future__ import annotations

import json
import math
import sys

import pytest

from tests.conftest import load_experiment


@pytest.fixture(scope="module")
def bench():
    return load_experiment("bench_accelerator")


@pytest.fixture(autouse=True)
def cpu_workers(monkeypatch):
    # Workers are subprocesses: on the CPU, with XLA's cheap optimisation (compiles fast).
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")


def read_rows(out):
    lines = (out / "results.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def key(row):
    return (row["kind"], row.get("lowering"), row.get("batch"), row.get("precision"))


def test_tiny_run_end_to_end(bench, tmp_path, monkeypatch):
    """Real workers: the matmul rates and one solver configuration on a 32 px ch 4 model; a
    second configuration's worker dies like an OOM; 'largest' is skipped (no memory
    statistics on a CPU); the reference is skipped (none given)."""
    real = bench.worker_command

    def command(spec):
        if spec["kind"] == "dgp" and spec["precision"] == "bfloat16":
            code = "import sys; sys.stderr.write('RESOURCE_EXHAUSTED: Out of memory'); sys.exit(1)"
            return [sys.executable, "-c", code]
        return real(spec)

    monkeypatch.setattr(bench, "worker_command", command)
    out = tmp_path / "out"
    argv = ["--tiny", "--out", str(out), "--lowerings", "auto", "--batches", "2,largest",
            "--precisions", "float32,bfloat16", "--steps", "2", "--select", "2"]  # fmt: skip
    assert bench.main(argv) == 0
    rows = read_rows(out)
    planned = [key(s) for s in bench.plan(bench.parse_args(argv))]
    assert [key(r) for r in rows] == planned  # every planned row, in plan order

    by = {key(r): r for r in rows}
    matmul = by[("matmul", None, None, None)]
    assert matmul["status"] == "ok"
    assert set(matmul["tflops"]) == {"float32", "bfloat16"}
    assert all(v > 0 and math.isfinite(v) for v in matmul["tflops"].values())
    assert by[("reference", None, 1, None)]["status"] == "skipped"

    row = by[("dgp", "auto", 2, "float32")]
    assert row["status"] == "ok", row
    for name in ("s_per_step", "s_per_step_per_image", "s_per_select_per_image",
                 "images_per_hour", "flops_per_step", "tflops", "matmul_fraction",
                 "param_bytes_per_image", "adam_bytes_per_image"):  # fmt: skip
        assert row[name] > 0 and math.isfinite(row[name]), name
    assert math.isfinite(row["compile_s"])
    assert row["steps_timed"] == 1
    # Adam's state: a second moment (the presets' beta1 = 0 keep no first one), at most two
    assert 0.5 * row["param_bytes_per_image"] < row["adam_bytes_per_image"]
    assert row["adam_bytes_per_image"] <= 2 * row["param_bytes_per_image"]
    assert row["tfds_imported"] is False  # importing dgp_jax does not import tfds
    # the buffer assignment of the executable the steps ran (compiled ahead, not twice)
    assert "analysis_error" not in row
    assert row["program_bytes"] >= row["program_argument_bytes"] > 0
    assert row["program_argument_bytes"] > row["param_bytes_per_image"] * 2  # G copies, Adam
    assert row["device"].startswith("cpu")

    oom = by[("dgp", "auto", 2, "bfloat16")]
    assert oom["status"] == "oom" and "RESOURCE_EXHAUSTED" in oom["reason"]
    assert by[("dgp", "auto", "largest", "float32")]["status"] == "skipped"
    assert "memory statistics" in by[("dgp", "auto", "largest", "float32")]["reason"]

    table = (out / "table.md").read_text()
    assert "### Accelerator benchmark" in table and "cpu" in table
    assert "| dgp_jax | auto | float32 | 2 |" in table
    assert "Not measured:" in table and "oom" in table
    assert "Measured matmul rate" in table
    log = (out / "log.txt").read_text()
    assert "plan (6 measurements" in log and "RESOURCE_EXHAUSTED" in log
    # every worker's stderr, under its row's header, in the order they ran
    stderr = (out / "stderr.txt").read_text()
    headers = [line for line in stderr.splitlines() if line.startswith("=== ")]
    assert headers == ["=== matmul rates", "=== dgp_jax auto batch 2 float32",
                       "=== dgp_jax auto batch 2 bfloat16"]  # fmt: skip
    oom_part = stderr.split("=== dgp_jax auto batch 2 bfloat16\n")[1]
    assert oom_part == "RESOURCE_EXHAUSTED: Out of memory\n"


# --------------------------------------------------------------------------- stand-ins
FAKE = r"""
import json, os, sys, time
spec = json.loads(sys.argv[1])
behaviour = json.loads(sys.argv[2])
time.sleep(behaviour.get("sleep", 0.0))
b = spec.get("batch", 1)
if spec["kind"] == "dgp" and b >= behaviour.get("oom_from", 10**9):
    sys.stderr.write("jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory")
    sys.exit(1)
if spec["kind"] == "matmul":
    row = {"size": 8, "tflops": {p: 100.0 for p in spec["precisions"]}, "device": "gpu:fake"}
else:
    row = {"device": "gpu:fake", "bytes_limit": 100e9, "s_per_step": 0.01 * b,
           "s_per_step_per_image": 0.01, "s_per_select_per_image": 0.001, "compile_s": 5.0,
           "peak_bytes": 4e9 + 1e9 * b, "peak_bytes_per_image": (4e9 + 1e9 * b) / b,
           "param_bytes_per_image": 0.2e9, "adam_bytes_per_image": 0.4e9,
           "flops_per_step": 1e12 * b, "s_per_step_with_metrics": 0.02, "torch": "fake",
           "cudnn_allow_tf32": True, "xla_flags": os.environ.get("XLA_FLAGS", "")}
if spec["kind"] == "dgp" and b == behaviour.get("hang_at"):
    sys.stderr.write(f"hung at batch {b}\n")
    sys.stderr.flush()
    print("RESULT " + json.dumps({**row, "partial": "steps only"}), flush=True)
    time.sleep(60)
print("RESULT " + json.dumps(row))
"""


def fake_workers(bench, monkeypatch, **behaviour):
    monkeypatch.setattr(
        bench,
        "worker_command",
        lambda spec: [sys.executable, "-c", FAKE, json.dumps(spec), json.dumps(behaviour)],
    )


def test_largest_batch_and_oom_halving(bench, tmp_path, monkeypatch):
    # peak = 4 GB + 1 GB/image, 100 GB usable: 90% fits 86 images; from 60 on, OOM.
    fake_workers(bench, monkeypatch, oom_from=60)
    out = tmp_path / "out"
    argv = ["--out", str(out), "--lowerings", "auto", "--batches", "1,8,32,largest",
            "--precisions", "float32", "--reference", str(tmp_path)]  # fmt: skip
    (tmp_path / "models").mkdir()  # looks like a checkout; the stand-in worker times it
    assert bench.main(argv) == 0
    rows = read_rows(out)
    largest = [r for r in rows if r.get("largest")]
    assert [(r["batch"], r["status"]) for r in largest] == [(86, "oom"), (59, "ok")]
    ref = next(r for r in rows if r["kind"] == "reference")
    ok = next(r for r in rows if r.get("batch") == 59)
    assert ok["x_reference"] == pytest.approx(ok["images_per_hour"] / ref["images_per_hour"])
    assert ok["matmul_fraction"] == pytest.approx(ok["tflops"] / 100.0)
    table = (out / "table.md").read_text()
    assert "| reference | - |" in table
    # the memory section: 1 GB/image above 4 GB fixed; 96 fit in 100 GB
    line = "| auto | float32 | 1, 8, 32, 59 | peak | 4.00 | 1.000 | 0.200 | 0.400 | 0.400 | 96 |"
    assert line in table


def test_budget_skips_and_timeouts_are_rows(bench, tmp_path, monkeypatch):
    fake_workers(bench, monkeypatch, sleep=0.3, hang_at=8)
    out = tmp_path / "out"
    argv = ["--out", str(out), "--lowerings", "auto,im2col", "--batches", "1,8",
            "--precisions", "float32", "--budget-s", "6", "--config-timeout-s", "3",
            "--first-estimate-s", "0.1"]  # fmt: skip
    assert bench.main(argv) == 0
    rows = read_rows(out)
    status = {key(r): r["status"] for r in rows}
    assert status[("dgp", "auto", 1, "float32")] == "ok"
    assert status[("dgp", "auto", 8, "float32")] == "timeout"
    # what the killed worker printed before it hung is kept, and shown
    hung = next(r for r in rows if key(r) == ("dgp", "auto", 8, "float32"))
    assert hung["partial"] == "steps only" and hung["s_per_step_per_image"] > 0
    assert status[("dgp", "im2col", 8, "float32")] == "skipped"  # about 3 s, under 2 left
    skipped = [r for r in rows if r["status"] == "skipped" and r["kind"] == "dgp"]
    assert all(r["reason"].startswith("budget") for r in skipped)
    assert len(rows) == 1 + 1 + 4  # matmul, reference, 2 lowerings x 2 batches
    table = (out / "table.md").read_text()
    assert "| dgp_jax | auto | float32 | 8 (timeout) |" in table and "budget" in table
    # the killed worker's stderr is in the file (it wrote there itself, not through a pipe)
    stderr = (out / "stderr.txt").read_text()
    assert "=== dgp_jax auto batch 8 float32\nhung at batch 8\n" in stderr
    assert "=== dgp_jax auto batch 1 float32\n===" in stderr  # a silent worker adds no line


def test_a_worker_s_stderr_is_kept_to_its_first_and_last_megabyte(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "STDERR_BYTES_PER_WORKER", 1000)
    path = tmp_path / "stderr.txt"
    path.write_text("earlier worker\n")
    for i, size in enumerate((600, 5000)):
        code = f"import sys; sys.stderr.write('a' * 100 + 'b' * ({size} - 200) + 'c' * 100)"
        monkeypatch.setattr(bench, "worker_command", lambda spec, c=code: [sys.executable, "-c", c])
        spec = {"kind": "dgp", "lowering": "auto", "batch": i + 1, "precision": "float32"}
        status, *_ = bench.run_worker(spec, 30, lambda text: None, path)
        assert status == "failed"  # no RESULT line
    text = path.read_text()
    first, second = text.split("=== dgp_jax auto batch 2 float32\n")
    assert first == "earlier worker\n=== dgp_jax auto batch 1 float32\n" + (
        "a" * 100 + "b" * 400 + "c" * 100 + "\n"
    )
    assert second == "a" * 100 + "b" * 400 + "\n[... 4000 bytes left out ...]\n" + (
        "b" * 400 + "c" * 100 + "\n"
    )


def test_time_estimates_come_from_the_most_similar_finished_row(bench):
    def row(lowering, batch, precision, xla, wall):
        return {"kind": "dgp", "lowering": lowering, "batch": batch, "precision": precision,
                "xla": xla, "wall_s": wall}  # fmt: skip

    rows = [
        row("auto", 8, "bfloat16", "cublas", 100.0),
        row("auto", 1, "float32", "default", 200.0),
    ]
    spec = {"kind": "dgp", "lowering": "auto", "batch": 32, "precision": "bfloat16"}
    # batch 32 under XLA's defaults: like the batch-1 row of the same flags, not the nearer batch
    assert bench.estimate({**spec, "xla": "default"}, rows, 7.0) == 200.0
    assert bench.estimate({**spec, "xla": "cublas"}, rows, 7.0) == 100.0
    assert bench.estimate({**spec, "xla": "noautotune"}, rows, 7.0) == 100.0  # nearest batch
    assert bench.estimate({**spec, "lowering": "im2col"}, rows, 7.0) == 100.0
    assert bench.estimate({"kind": "reference", "batch": 1}, rows, 7.0) == 7.0  # none ran


def test_plan_priority(bench):
    args = bench.parse_args(["--out", "x"])
    order = [bench.describe(s) for s in bench.plan(args)]
    assert order[:6] == [
        "matmul rates",
        "reference (PyTorch) batch 1",
        "dgp_jax auto batch 1 float32",
        "dgp_jax auto batch 64 float32",
        "dgp_jax auto batch 64 bfloat16",
        "dgp_jax auto batch largest float32",
    ]
    auto = [i for i, s in enumerate(order) if " auto " in s]
    others = [i for i, s in enumerate(order) if "dgp_jax" in s and " auto " not in s]
    assert len(auto) == 15 and len(others) == 60 and max(auto) < min(others)
    assert order[max(auto) + 1] == "dgp_jax vmap batch 8 float32"


def test_explicit_rows_replace_the_grid(bench):
    args = bench.parse_args(["--out", "x", "--rows", "auto:1:float32,vmap:largest:bfloat16"])
    order = [bench.describe(s) for s in bench.plan(args)]
    assert order == [
        "matmul rates",
        "reference (PyTorch) batch 1",
        "dgp_jax auto batch 1 float32",
        "dgp_jax vmap batch largest bfloat16",
    ]
    assert args.precisions == ["float32", "bfloat16"]  # the matmul rates measured
    # --rows given again: its rows follow (a long list over several lines of a command)
    again = bench.parse_args(["--out", "x", "--rows", "auto:1:float32", "--rows",
                              "vmap:largest:bfloat16"])  # fmt: skip
    assert again.rows == args.rows == [("auto", 1, "float32", "default"),
                                       ("vmap", "largest", "bfloat16", "default")]  # fmt: skip


def test_rows_add_their_xla_flags_to_their_own_worker(bench, tmp_path, monkeypatch):
    """A fourth field names a set of XLA flags for that row's worker alone, after the
    command's own XLA_FLAGS (XLA takes the last value of a flag given twice)."""
    fake_workers(bench, monkeypatch)
    monkeypatch.setenv(
        "XLA_FLAGS", "--xla_gpu_autotune_level=2 --xla_force_host_platform_device_count=8"
    )
    out = tmp_path / "out"
    argv = [
        "--out",
        str(out),
        "--rows",
        "auto:1:float32,auto:1:float32:fastcompile,im2col:2:bfloat16:cublas",
    ]
    args = bench.parse_args(argv)
    assert args.rows == [("auto", 1, "float32", "default"), ("auto", 1, "float32", "fastcompile"),
                         ("im2col", 2, "bfloat16", "cublas")]  # fmt: skip
    assert [bench.describe(s) for s in bench.plan(args)][2:] == [
        "dgp_jax auto batch 1 float32",
        "dgp_jax auto batch 1 float32 [fastcompile]",
        "dgp_jax im2col batch 2 bfloat16 [cublas]",
    ]
    assert bench.main(argv) == 0
    flags = [r["xla_flags"] for r in read_rows(out) if r["kind"] == "dgp"]
    assert flags == [
        "--xla_gpu_autotune_level=2",
        "--xla_gpu_autotune_level=2 --xla_gpu_enable_triton_gemm=false --xla_gpu_autotune_level=0",
        "--xla_gpu_autotune_level=2 --xla_gpu_enable_triton_gemm=false",
    ]
    table = (out / "table.md").read_text()
    assert "| dgp_jax | auto | float32 | 1 |" in table
    assert "| dgp_jax | auto [fastcompile] | float32 | 1 |" in table
    assert "| dgp_jax | im2col [cublas] | bfloat16 | 2 |" in table
    assert (
        "XLA_FLAGS of the dgp_jax rows: [default] `--xla_gpu_autotune_level=2`; [fastcompile] "
        "`--xla_gpu_autotune_level=2 --xla_gpu_enable_triton_gemm=false "
        "--xla_gpu_autotune_level=0`; [cublas] `--xla_gpu_autotune_level=2 "
        "--xla_gpu_enable_triton_gemm=false`." in table
    )


def test_the_table_names_the_flags_of_every_row(bench):
    def row(xla, flags):
        return {"kind": "dgp", "xla": xla, "xla_flags": flags}

    # a row with no flags is said to have none, not left out (as if every row had cublas's)
    rows = [row("cublas", "--xla_gpu_enable_triton_gemm=false"), row("default", "")]
    assert bench.xla_flags_line(rows) == (
        "XLA_FLAGS of the dgp_jax rows: [cublas] `--xla_gpu_enable_triton_gemm=false`; "
        "[default] none."
    )
    assert bench.xla_flags_line([row("default", ""), row("default", "")]) == ""
    assert bench.xla_flags_line(
        [row("default", "--a"), {"kind": "matmul", "xla_flags": "--b"}]
    ) == ("XLA_FLAGS of the dgp_jax rows: `--a`.")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("auto:1", "'auto:1' is not lowering:batch:precision[:xla]"),
        ("auto:1:float32:turbo", "xla 'turbo' is not one of ['default', 'cublas'"),
        ("auto:1:float32:cublas:x", "is not lowering:batch:precision[:xla]"),
        ("fast:1:float32", "lowering 'fast' is not one of"),
        ("auto:1:float16", "precision 'float16' is not one of"),
        ("auto:big:float32", "batch 'big' is neither a number nor largest"),
    ],
)
def test_explicit_rows_refuse_bad_entries(bench, capsys, rows, message):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--out", "x", "--rows", rows])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--rows: " in err and message in err


def test_earlier_matmul_rates_partial_rows_and_given_flops(bench, tmp_path, monkeypatch):
    """--matmul-from reuses an earlier run's rates (no matmul worker), --partial-ok starts a
    row that a similar one's time says will not fit (and keeps what it printed before the
    budget cut it), and --flops-per-image-step fills in FLOPs a worker did not report."""
    fake_workers(bench, monkeypatch, sleep=0.3, hang_at=8)
    earlier = tmp_path / "earlier.jsonl"
    rate = {"kind": "matmul", "status": "ok", "size": 8192, "device": "gpu:fake",
            "tflops": {"float32": 50.0, "bfloat16": 500.0}}  # fmt: skip
    earlier.write_text(json.dumps({"kind": "reference", "status": "failed"}) + "\n"
                       + json.dumps(rate) + "\n")  # fmt: skip
    monkeypatch.setattr(bench, "worker_matmul", lambda spec: pytest.fail("measured again"))
    out = tmp_path / "out"
    argv = ["--out", str(out), "--rows", "auto:1:float32,auto:8:float32",
            "--matmul-from", str(earlier), "--partial-ok", "--budget-s", "4",
            "--config-timeout-s", "30", "--first-estimate-s", "0.1",
            "--flops-per-image-step", "2e12"]  # fmt: skip
    assert bench.main(argv) == 0
    rows = read_rows(out)
    assert rows[0]["tflops"] == rate["tflops"] and rows[0]["from"] == str(earlier)
    hung = next(r for r in rows if key(r) == ("dgp", "auto", 8, "float32"))
    assert hung["status"] == "timeout" and hung["partial"] == "steps only"
    assert hung["reason"].startswith("killed after")  # cut at the budget, not at 30 s
    ok = next(r for r in rows if key(r) == ("dgp", "auto", 1, "float32"))
    # the stand-in reports 1e12 FLOPs per image: a worker's own count is kept
    assert ok["flops_per_step"] == 1e12 and "flops_source" not in ok
    assert ok["matmul_fraction"] == pytest.approx(ok["tflops"] / 50.0)


def test_given_flops_fill_in_what_the_device_did_not_count(bench):
    row = {"kind": "dgp", "batch": 4, "precision": "bfloat16", "s_per_step": 0.5,
           "s_per_step_per_image": 0.125, "s_per_select_per_image": 0.01}  # fmt: skip
    schedule = {"select_num": 500, "total_steps": 1400}
    bench.add_derived(row, schedule, {"tflops": {"bfloat16": 400.0}}, None, 3e12)
    assert row["flops_per_step"] == 12e12 and row["flops_source"] == "--flops-per-image-step"
    assert row["tflops"] == pytest.approx(24.0)
    assert row["matmul_fraction"] == pytest.approx(0.06)
    assert row["images_per_hour"] == pytest.approx(3600 / (500 * 0.01 + 1400 * 0.125))


def test_memory_fit_prefers_the_compiled_steps_buffers(bench):
    # The peak includes the autotuner's scratch; XLA's buffer assignment of the step does not.
    rows = [
        {"batch": 1, "peak_bytes": 8e9, "program_bytes": 1.5e9},
        {"batch": 4, "peak_bytes": 9e9, "program_bytes": 3.0e9},
    ]
    assert bench.memory_key(rows) == "program_bytes"
    assert bench.fit_memory(rows) == pytest.approx((1.0e9, 0.5e9))
    rows[0].pop("program_bytes")  # one row without it: the peak, for every row
    assert bench.memory_key(rows) == "peak_bytes"
    fixed, per = bench.fit_memory(rows)
    assert (fixed, per) == pytest.approx((8e9 - 1e9 / 3, 1e9 / 3))


def test_rows_of_one_batch_under_other_xla_flags_are_fitted_apart(bench, tmp_path, monkeypatch):
    """The next lease's command runs batch 32 with cublas and with XLA's defaults: each
    gets its own memory line and largest batch, and two rows of one batch make one point."""
    fake_workers(bench, monkeypatch)
    out = tmp_path / "out"
    argv = ["--out", str(out), "--rows",
            "auto:8:float32:cublas,auto:8:float32,auto:largest:float32:cublas"]  # fmt: skip
    assert bench.main(argv) == 0
    table = (out / "table.md").read_text()
    assert "| auto [cublas] | float32 | 8, 60 | peak |" in table
    assert "| auto | float32 | 8 | peak |" in table
    largest = [r for r in read_rows(out) if r.get("largest")]
    assert [bench.setting(r) for r in largest] == [("auto", "float32", "cublas")]
    # 4 GB + 1 GB/image at batch 8 alone: 1.5 GB per image; 90 GB of 100 fits 60
    assert largest[0]["batch"] == 60
    two = [{"batch": 8, "peak_bytes": 12e9}, {"batch": 8, "peak_bytes": 13e9}]
    assert bench.fit_memory(two) == pytest.approx((0.0, 13e9 / 8))  # the larger one


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not a readable results.jsonl"),
        ("{not json\n", "not a readable results.jsonl"),
        ('{"kind": "matmul", "status": "failed"}\n', "no measured matmul row"),
    ],
)
def test_earlier_matmul_rates_must_be_there(bench, tmp_path, capsys, content, message):
    path = tmp_path / "earlier.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--out", str(tmp_path / "out"), "--matmul-from", str(path)])
    assert exit_info.value.code == 2
    assert f"--matmul-from {path}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_the_next_lease_command_in_the_docstring_parses(bench, monkeypatch):
    """The one command a GPU session is told to run is accepted as written (its
    --matmul-from file is in the repository), with the rows in the order it promises."""
    import shlex

    doc = bench.__doc__
    start = doc.index("PYTHONUNBUFFERED=1 PYTHONPATH=. python3 experiments/bench_accelerator.py")
    words = shlex.split(doc[start : doc.index("``$OUT``", start)])
    assert words[:4] == ["PYTHONUNBUFFERED=1", "PYTHONPATH=.", "python3",
                         "experiments/bench_accelerator.py"]  # fmt: skip
    monkeypatch.chdir(bench.REPO)
    args = bench.parse_args([w.replace("$OUT", "out") for w in words[4:]])
    assert args.earlier_matmul["tflops"]["bfloat16"] > 0
    assert [bench.describe(s) for s in bench.plan(args)][2:] == [
        "dgp_jax auto batch 32 bfloat16 [fastcompile]",
        "dgp_jax auto batch 32 float32 [fastcompile]",
        "dgp_jax auto batch 32 bfloat16 [cublas]",
        "dgp_jax auto batch 32 bfloat16",
    ]
