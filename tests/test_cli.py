"""The dgp-jax command line: convert/export, restore, setup errors, kill-and-resume, and a
two-process run on this machine's CPU."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dgp_jax import cli
from dgp_jax.pth import read_state_dict
from tests.conftest import fixture_path
from tests.test_runner import make_photos, tiny_model_files

REPO = Path(__file__).resolve().parents[1]
FAST = ["--set", "iterations=1", "--set", "select_num=1", "--set", "resolution=none"]


# Compilation dominates, here and in the CLI subprocesses: one cache for the session.
pytestmark = pytest.mark.usefixtures("cheap_compilation_cache")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return tiny_model_files(tmp_path_factory)


def test_convert_export_and_restore(tmp_path, tiny, capsys):
    ckpt = tmp_path / "biggan"
    g, d = fixture_path("G_ema_128_ch8_f64.pth"), fixture_path("D_128_ch8_f64.pth")
    assert cli.main(["convert", str(g), str(d), "--out", str(ckpt)]) == 0
    assert '"G_ch": 8' in capsys.readouterr().out
    # A second convert into the same folder is refused (nothing is overwritten).
    assert cli.main(["convert", str(g), str(d), "--out", str(ckpt)]) == 2
    assert f"{ckpt} exists; pass --force to replace it" in capsys.readouterr().err
    # --force replaces it; --set overrides an inferred field
    assert cli.main(["convert", str(g), str(d), "--out", str(ckpt), "--force",
                     "--set", "SN_eps=1e-8"]) == 0  # fmt: skip
    assert '"SN_eps": 1e-08' in capsys.readouterr().out
    assert cli.main(["convert", str(g), str(d), "--out", str(ckpt), "--force"]) == 0
    assert '"SN_eps": 1e-06' in capsys.readouterr().out
    missing_pth = tmp_path / "G_nowhere.pth"
    assert cli.main(["convert", str(missing_pth), "--out", str(tmp_path / "c2")]) == 2
    assert str(missing_pth) in capsys.readouterr().err and not (tmp_path / "c2").exists()
    # Each refused before anything is written, exit 2, the message naming what is wrong:
    # a folder given as a .pth; --set values of the wrong type or with no value; a file at
    # --out (--force replaces a checkpoint folder, not a file, which is kept).
    regular = tmp_path / "regular"
    regular.write_text("mine")
    for args, says in (
        ([str(tmp_path), "--out", str(tmp_path / "c2")], f"{tmp_path} is a folder, not a PyTorch"),
        ([str(g), str(tmp_path), "--out", str(tmp_path / "c2")], f"{tmp_path} is a folder"),
        ([str(g), "--out", str(tmp_path / "c2"), "--set", "SN_eps=abc"],
         "--set SN_eps=abc: SN_eps takes a number, got 'abc'"),
        ([str(g), "--out", str(tmp_path / "c2"), "--set", "hier=maybe"],
         "--set hier=maybe: hier takes true or false"),
        ([str(g), "--out", str(tmp_path / "c2"), "--set", "SN_eps"],
         "--set expects field=value, got 'SN_eps'"),
        ([str(g), str(d), "--out", str(regular), "--force"],
         f"--out {regular} is a file; --force replaces a checkpoint folder only"),
        ([str(g), str(d), "--out", str(regular / "c2")],
         f"output folder {regular} is not writable (File exists): choose another --out"),
    ):  # fmt: skip
        assert cli.main(["convert", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("dgp-jax convert: error: ") and says in err, (args, err)
        assert "Traceback" not in err and not (tmp_path / "c2").exists()
    assert regular.read_text() == "mine" and not list(tmp_path.glob(".regular*"))

    # export: into a missing folder names the folder; existing files need --force.
    missing = tmp_path / "missing" / "G.pth"
    assert cli.main(["export", str(ckpt), "--generator", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"no folder {missing.parent} to write G.pth into" in err and ".tmp" not in err
    assert cli.main(["export", str(ckpt), "--generator", str(tmp_path / "G.pth")]) == 0
    before = (tmp_path / "G.pth").stat().st_mtime_ns
    assert cli.main(["export", str(ckpt), "--generator", str(tmp_path / "G.pth")]) == 2
    assert "G.pth exists; pass --force to replace it" in capsys.readouterr().err
    assert (tmp_path / "G.pth").stat().st_mtime_ns == before
    assert cli.main(["export", str(ckpt), "--generator", str(tmp_path / "G.pth"), "--force"]) == 0
    # G and D into one file, or a folder as the file, are refused (even with --force)
    folder = tmp_path / "folder"
    folder.mkdir()
    forced = (tmp_path / "G.pth").stat().st_mtime_ns
    for args, says in (
        (["--generator", str(tmp_path / "G.pth"), "--discriminator", str(tmp_path / "G.pth")],
         f"the generator and the discriminator would both be written to {tmp_path / 'G.pth'}"),
        (["--generator", str(folder)], f"{folder} is a folder; name the .pth file to write"),
    ):  # fmt: skip
        assert cli.main(["export", str(ckpt), *args, "--force"]) == 2, args
        assert says in capsys.readouterr().err
    assert (tmp_path / "G.pth").stat().st_mtime_ns == forced and not any(folder.iterdir())
    original, exported = read_state_dict(g), read_state_dict(tmp_path / "G.pth")
    assert list(original) == list(exported)
    assert all(np.array_equal(original[k], exported[k]) for k in original)
    # --discriminator writes D too; --dtype float16 casts the floating-point tensors
    half_pair = ["--generator", str(tmp_path / "G16.pth"), "--discriminator",
                 str(tmp_path / "D16.pth")]  # fmt: skip
    assert cli.main(["export", str(ckpt), *half_pair, "--dtype", "float16"]) == 0
    for ours, theirs in ((tmp_path / "G16.pth", g), (tmp_path / "D16.pth", d)):
        half, full = read_state_dict(ours), read_state_dict(theirs)
        assert list(half) == list(full)
        for k, v in full.items():
            if np.issubdtype(v.dtype, np.floating):
                assert half[k].dtype == np.float16, k
                np.testing.assert_array_equal(half[k], v.astype(np.float16), err_msg=k)
            else:
                np.testing.assert_array_equal(half[k], v, err_msg=k)

    # restore from a converted folder (the tiny model's; the 128 px fixture takes minutes
    # to compile on 2 cores, and the README's quickstart with it was run by hand).
    photos = tmp_path / "photos"
    make_photos(photos, 2)
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(photos / "a.png")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    argv = ["restore", "--weights", str(tiny["folder"]), "--task", "colorization", str(photos),
            "--out", str(out), "--class", "3", "--batch", "2", *FAST]  # fmt: skip
    code = cli.main(argv)
    assert code == 1  # one input failed
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "1 failed" in captured.err
    assert "colorization: images 0/4" in captured.err  # the progress line
    assert f"results in {out.resolve()}" in captured.out
    for suffix in (".png", "_degraded.png", "_sheet.png", "_metrics.json", ".done.json"):
        assert (out / f"a_colorization{suffix}").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"]["a"]["class"] == 3 and summary["done"] == 3
    assert np.isfinite(summary["images"]["a"]["metrics"]["psnr"])
    assert json.loads((out / "config.json").read_text())["iterations"] == [1, 1, 1, 1, 1]


def test_setup_errors_exit_2_before_any_work(tmp_path, tiny, capsys, monkeypatch):
    photos = make_photos(tmp_path / "photos", 2)
    weights = str(tiny["pth"])

    def run(*args: str, out: Path | None = None) -> str:
        out = out or tmp_path / "out"
        existed = os.path.exists(out)
        argv = ["restore", "--weights", weights, "--out", str(out), "--quiet", *FAST, *args]
        assert cli.main(argv) == 2
        assert not os.path.exists(out / "config.json")  # nothing was started
        # os.path.exists: False for a name the OS refuses, where Path.exists raises.
        assert os.path.exists(out) == existed  # and no folder left behind
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.startswith("dgp-jax restore: error: ")
        return err

    # Output folder under a regular file: no folder can be made there.
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = run("--task", "colorization", str(photos[0]), out=blocker / "out")
    assert "not writable" in err and str(blocker / "out") in err
    # A folder name the filesystem refuses (over 255 bytes): fails for root too, as CI runs.
    too_long = tmp_path / ("x" * 300)
    err = run("--task", "colorization", str(photos[0]), out=too_long)
    assert "not writable (File name too long)" in err
    if os.geteuid() != 0:  # root writes through chmod, so only a real user sees this
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "not writable" in run("--task", "colorization", str(photos[0]), out=locked)

    # A class out of range, from a list file: the message names the image.
    listing = tmp_path / "list.txt"
    listing.write_text(f"{photos[0]} 3\n{photos[1]} 12\n")
    err = run("--task", "colorization", str(listing))
    assert f"{photos[1]} (class 12)" in err and "[-1, 10)" in err
    assert "p1.png (class 10)" in run("--task", "colorization", str(photos[1]), "--class", "10")

    # The checkpoint's resolution is not the preset's.
    argv = ["restore", "--weights", weights, "--out", str(tmp_path / "o"), "--task", "SR",
            str(photos[0])]  # fmt: skip
    assert cli.main(argv) == 2
    assert "32 px model but preset 'imagenet1k_128/SR_D_biased' is for 128 px" in (
        capsys.readouterr().err
    )

    # A mask of the wrong size names both sizes.
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(tmp_path / "mask.png")
    err = run("--task", "inpainting", "--mask", str(tmp_path / "mask.png"), str(photos[0]))
    assert "mask.png is 24x20 but the model works at 32x32" in err
    assert "--mask applies" in run("--task", "SR", "--mask", str(tmp_path / "mask.png"),
                                   str(photos[0]))  # fmt: skip

    # No such weights; a factor for a task without one; an unknown --set field.
    assert "no BigGAN weights" in run("--task", "SR", str(photos[0]), "--weights",
                                      str(tmp_path / "none.pth"))  # fmt: skip
    assert "--factor applies" in run("--task", "colorization", "--factor", "2", str(photos[0]))
    assert "unknown field 'itrations'" in run("--task", "SR", "--set", "itrations=2",
                                              str(photos[0]))  # fmt: skip

    # Bad numbers name their flag or field; a missing input names the path.
    for factor in ("0", "-2"):
        err = run("--task", "SR", "--factor", factor, str(photos[0]))
        assert f"--factor must be a positive integer, got {factor}" in err
    assert "--batch must be >= 1, got 0" in run("--task", "SR", "--batch", "0", str(photos[0]))
    err = run("--task", "SR", "--set", "iterations=abc", str(photos[0]))
    assert "--set iterations=abc: iterations must be an integer" in err
    assert "--set expects field=value" in run("--task", "SR", "--set", "iterations",
                                              str(photos[0]))  # fmt: skip
    err = run("--task", "SR", str(photos[0]), str(tmp_path / "nope.png"))
    assert f"no input file or folder at {tmp_path / 'nope.png'}" in err
    for field in ("factor=0", "factor=-2"):  # the same through --set (was a crash mid-run)
        err = run("--task", "SR", "--set", field, str(photos[0]))
        assert f"factor must be a positive integer or None, got {field[7:]}" in err
    err = run("--task", "SR", "--set", "sample_std=-1", str(photos[0]))
    assert "sample_std must be a finite number >= 0, got -1" in err
    # jitter's stds are checked before solving (were after it, which left the folder)
    argv = ["jitter", "--weights", weights, "--out", str(tmp_path / "j"), "--quiet", *FAST,
            "--stds", "0.5,inf,nan", str(photos[0])]  # fmt: skip
    assert cli.main(argv) == 2 and not (tmp_path / "j").exists()
    assert "--stds must be one or more finite values >= 0, got [0.5, inf, nan]" in (
        capsys.readouterr().err
    )
    # a multi-process setting from the environment names its variable
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    err = run("--task", "SR", str(photos[0]))
    assert "environment variable JAX_NUM_PROCESSES='two' is not an integer" in err
    monkeypatch.delenv("JAX_NUM_PROCESSES")
    # Nested folders that did not exist are not left behind either.
    run("--task", "SR", "--factor", "0", str(photos[0]), out=tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()

    # bfloat16 on a CPU: said to be slower (here before a setup error ends the run).
    argv = ["restore", "--weights", weights, "--out", str(tmp_path / "bf"), "--task", "SR",
            "--precision", "bfloat16", "--factor", "0", str(photos[0])]  # fmt: skip
    assert cli.main(argv) == 2
    assert "--precision bfloat16 is slower than float32 on a CPU" in capsys.readouterr().err

    # A folder holding finished results keeps them when a rerun is refused.
    done = tmp_path / "done"
    done.mkdir()
    (done / "p0_SR.png").write_bytes(b"result")
    run("--task", "SR", "--factor", "0", str(photos[0]), out=done)
    assert (done / "p0_SR.png").read_bytes() == b"result"


def test_help_version_and_description(capsys):
    from dgp_jax import __version__

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"dgp-jax {__version__}"
    parser = cli.build_parser()
    top = parser.format_help()
    assert "``" not in top and "dgp-jax: convert checkpoints, restore" in top
    sub = parser._subparsers._group_actions[0].choices
    export = sub["export"].format_help()
    assert "dgp_jax checkpoint folder" in export and "where to write the generator" in export
    assert "--force" in export
    assert "random seed of the start latents" in sub["restore"].format_help()


def test_lowering_flag_offers_every_lowering_and_reaches_the_run(fake_run, tmp_path):
    from dgp_jax.nets.per_image import CHOICES

    assert cli.LOWERINGS == list(CHOICES)
    seen = fake_run
    args = ["restore", "x.png", "--task", "SR", "--out", str(tmp_path / "o")]
    assert cli.main(args + ["--lowering", "im2col"]) == 0
    assert seen["options"].lowering == "im2col"
    assert cli.main(args) == 0 and seen["options"].lowering == "auto"
    with pytest.raises(SystemExit) as exit_:
        cli.main(args + ["--lowering", "grouped"])
    assert exit_.value.code == 2


@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """cli.main with runner.execute replaced: the RunOptions each command makes (no JAX
    settings change, no run); ``report`` is what the fake run returns or raises."""
    from dgp_jax import runner

    seen = {"report": runner.Report(summary=tmp_path / "summary.json")}

    def fake_execute(options):
        seen["options"] = options
        if isinstance(seen["report"], BaseException):
            raise seen["report"]
        return seen["report"]

    monkeypatch.setattr(runner, "execute", fake_execute)
    monkeypatch.setattr(runner, "configure_compilation_cache",
                        lambda folder: seen.__setitem__("cache_dir", folder))  # fmt: skip
    monkeypatch.setattr(runner, "init_distributed", lambda *_: (0, 1))
    return seen


def test_run_flags_reach_the_run_options(fake_run, tmp_path, capsys):
    out = ["--out", str(tmp_path / "o")]
    jitter = ["jitter", "a.png", "--stds", "0.2,0.4", "--samples", "3", "--quiet",
              "--preset", "wallpapers_64/reconstruct", "--set", "use_in=false", *out]  # fmt: skip
    assert cli.main(jitter) == 0
    options = fake_run["options"]
    assert options.kind == "jitter" and options.manipulation == {"stds": [0.2, 0.4], "samples": 3}
    assert options.preset == "wallpapers_64/reconstruct" and options.sets == ["use_in=false"]
    assert options.progress is False
    assert cli.main(["morph", "a.png", "b.png", "c.png", "--frames", "4", *out]) == 0
    assert fake_run["options"].manipulation == {"frames": 4}
    assert fake_run["options"].inputs == ["a.png", "b.png", "c.png"]
    # class lists: single classes and inclusive ranges, in order
    assert cli.main(["transfer", "a.png", "--classes", "151-153,207, 9", *out]) == 0
    assert fake_run["options"].manipulation == {"classes": [151, 152, 153, 207, 9]}
    for classes, says in (("5-2", "range 5-2 is reversed: write 2-5"), (",", "no class in ','")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["transfer", "a.png", "--classes", classes, *out])
        assert exit_info.value.code == 2
        assert f"argument --classes: {says}" in capsys.readouterr().err
    assert cli.main(["restore", "a.png", "--task", "inpainting", "--mask", "m.png",
                     "--mask-keep", "black", "--precision", "tf32", "--batch", "3",
                     "--seed", "7", *out]) == 0  # fmt: skip
    options = fake_run["options"]
    assert (options.task, options.mask, options.mask_keep) == ("inpainting", "m.png", "black")
    assert (options.precision, options.batch, options.seed) == ("tf32", 3, 7)
    assert options.progress is True
    assert fake_run["cache_dir"] is None  # the default cache (~/.cache/dgp_jax/jax)
    assert cli.main(["restore", "a.png", "--task", "SR", "--cache-dir", "none", *out]) == 0
    assert fake_run["cache_dir"] == "none"


def test_an_interrupted_run_exits_130_and_says_how_to_resume(fake_run, tmp_path, capsys):
    from dgp_jax import runner

    args = ["restore", "a.png", "--task", "SR", "--out", str(tmp_path / "o")]
    # SIGTERM or SIGINT during the run: the runner finishes the summary and says so
    fake_run["report"] = runner.Report(summary=tmp_path / "summary.json", interrupted=True)
    assert cli.main(args) == 130
    assert "interrupted: rerun the same command to resume" in capsys.readouterr().err
    # Ctrl-C outside the runner's handling (while setting up)
    fake_run["report"] = KeyboardInterrupt()
    assert cli.main(args) == 130
    assert capsys.readouterr().err == "dgp-jax restore: interrupted\n"


def test_compilation_cache_setting(tmp_path, monkeypatch):
    import jax

    from dgp_jax import runner

    before = jax.config.jax_compilation_cache_dir
    try:
        assert runner.configure_compilation_cache(str(tmp_path / "a")) == tmp_path / "a"
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "a")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
        monkeypatch.setenv("DGP_JAX_CACHE", str(tmp_path / "b"))
        assert runner.configure_compilation_cache(None) == tmp_path / "b"
        assert runner.configure_compilation_cache("none") is None
        monkeypatch.delenv("DGP_JAX_CACHE")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        assert runner.configure_compilation_cache(None) == tmp_path / "home/.cache/dgp_jax/jax"
    finally:
        runner.configure_compilation_cache(before or "none")
        if not before:
            jax.config.update("jax_compilation_cache_dir", None)


# --------------------------------------------------------------------------- processes
def _env(cache: Path, devices: int) -> dict[str, str]:
    """A CPU process with this checkout's dgp_jax.

    x64, cheap XLA optimisation and (for one process) conftest's 8 host devices, as in
    this process, so that the CLI loads the solver program the in-process tests compiled
    into the shared cache instead of compiling its own (same program, but the cache key
    includes these settings).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTEST_XDIST_WORKER")}
    env.update(JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
               PYTHONPATH=str(REPO), DGP_JAX_CACHE=str(cache))  # fmt: skip
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_complete(out: Path, names: list[str], killed: bool = False) -> dict[Path, int]:
    """Every image has exactly one complete result; returns the files' mtimes. No temp file
    is left, except after a kill (the next run removes them: checked after it)."""
    stamps = {}
    for name in names:
        markers = list(out.glob(f"{name}_colorization*.done.json"))
        assert len(markers) == 1, (name, markers)
        record = json.loads(markers[0].read_text())
        for rel in record["files"]:
            path = out / rel
            if path.suffix == ".png":
                with Image.open(path) as im:
                    im.load()  # decodes: the file is whole
            else:
                json.loads(path.read_text())
            stamps[path] = path.stat().st_mtime_ns
        stamps[markers[0]] = markers[0].stat().st_mtime_ns
    assert killed or not [p for p in out.rglob("*") if ".tmp" in p.name]
    return stamps


def test_kill_resume_and_two_processes(tmp_path, tiny, cheap_compilation_cache):
    photos = make_photos(tmp_path / "photos", 6)
    names = [p.stem for p in photos]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dgp_jax.cli", "restore", "--weights", str(tiny["pth"]),
               "--task", "colorization", str(tmp_path / "photos"), "--out", str(out),
               "--batch", "2", "--class", "3", "--quiet", *FAST]  # fmt: skip
    env = _env(cheap_compilation_cache, 8)

    # Kill -9 as soon as the first image is finished.
    proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(out.glob("*.done.json")):
        assert proc.poll() is None, proc.communicate()[0].decode()
        assert time.monotonic() < deadline, "no image finished in 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(m.name.split("_")[0] for m in out.glob("*.done.json"))
    assert 1 <= len(finished) < len(names), finished  # killed half way
    # The kill may have hit the next image's writes (its temp files stay until the rerun).
    stamps = _check_complete(out, finished, killed=True)
    # As if the kill had hit mid-write: a stale temp file the restart must clean up.
    (out / f".{names[-1]}_colorization.png.tmp-0").write_bytes(b"\x89PNG half")

    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{len(finished)} already done" in done.stdout
    final = _check_complete(out, names)
    for path, mtime in stamps.items():  # the finished ones were not redone
        assert final[path] == mtime, path
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done"] == 6 and summary["failed"] == 0 and summary["pending"] == 0

    # Two processes on 127.0.0.1, each with _env's 8 host CPU devices (so that they load the
    # programs in the shared cache): each takes every other input.
    out2 = tmp_path / "out2"
    port = _free_port()
    two = [c if c != str(out) else str(out2) for c in command]
    procs = [
        subprocess.Popen(
            two
            + [
                "--num-processes",
                "2",
                "--process-id",
                str(i),
                "--coordinator",
                f"127.0.0.1:{port}",
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, stderr) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, stderr
    assert "process 1/2" in outputs[0][0] and "process 2/2" in outputs[1][0]
    shares = [json.loads((out2 / f"summary.{i}.json").read_text()) for i in range(2)]
    assert sorted(shares[0]["images"]) == ["p0", "p2", "p4"]
    assert sorted(shares[1]["images"]) == ["p1", "p3", "p5"]
    assert not (out2 / "summary.json").exists()
    _check_complete(out2, names)
    # Keys follow the image names: the split run gives the single run's images exactly.
    for name in names:
        assert (out / f"{name}_colorization.png").read_bytes() == (
            out2 / f"{name}_colorization.png"
        ).read_bytes()


X64_OFF = """
import sys
import jax
import dgp_jax
from dgp_jax import cli
assert not jax.config.jax_enable_x64
real = dgp_jax.restore
def restore(*args, **kwargs):
    result = real(*args, **kwargs)
    print("computed in", *sorted({str(a.dtype) for a in (result.images, result.z,
          result.history["loss"], *jax.tree.leaves(result.params))}))
    return result
dgp_jax.restore = restore
sys.exit(cli.main(sys.argv[1:]))
"""


def test_cli_run_with_x64_off(tmp_path, tiny, cheap_compilation_cache):
    """As users run it (x64 off: float32 weights and arithmetic), next to the x64 run."""
    photos = make_photos(tmp_path / "photos", 1)
    args = ["restore", "--weights", str(tiny["pth"]), "--task", "colorization", str(photos[0]),
            "--class", "3", "--quiet", *FAST]  # fmt: skip
    env = _env(cheap_compilation_cache, 8)
    del env["JAX_ENABLE_X64"]
    done = subprocess.run([sys.executable, "-c", X64_OFF, *args, "--out", str(tmp_path / "f32")],
                          env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "computed in float32\n" in done.stdout
    assert cli.main([*args, "--out", str(tmp_path / "f64")]) == 0
    f32, f64 = (np.asarray(Image.open(tmp_path / d / "p0_colorization.png"), np.int16)
                for d in ("f32", "f64"))  # fmt: skip
    assert f32.shape == f64.shape == (32, 32, 3)
    assert np.abs(f32 - f64).max() <= 2  # 8-bit levels: float32 rounding only
    m32, m64 = (json.loads((tmp_path / d / "p0_colorization_metrics.json").read_text())
                for d in ("f32", "f64"))  # fmt: skip
    assert m32["psnr"] == pytest.approx(m64["psnr"], abs=0.05)
