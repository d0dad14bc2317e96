"""dgp_jax.runner: batch runs on disk with a tiny random BigGAN (32 px, 10 classes).

The tiny model is made once per test session (shared by xdist workers through a lock) and
saved both as a dgp_jax folder and as a .pth pair; the .pth pair loads in a fraction of a
second. Compilation dominates these tests, so while they run JAX's persistent compilation
cache points at a per-session folder (each solver program compiles once per session, for
all workers and the CLI subprocesses) and ``jax_disable_most_optimizations`` is on (XLA
compiles about twice as fast; the few solver steps run slower, which costs nothing here).
Both settings are put back after each module.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import json
import os
import shutil
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import Mesh
from PIL import Image

from dgp_jax import runner
from dgp_jax.config import SolverConfig
from tests._compiling import FAST_COMPILE_SETTINGS, fast_compiles, setting, shared_root

TINY = {"resolution": 32, "G_ch": 4, "D_ch": 4, "n_classes": 10, "shared_dim": 16,
        "dim_z": 20, "G_attn": "0", "D_attn": "0"}  # fmt: skip
FAST = ["iterations=1", "select_num=1", "resolution=none"]


# Compilation dominates these tests: each solver program compiles cheaply, once per session.
pytestmark = pytest.mark.usefixtures("cheap_compilation_cache")


# --------------------------------------------------------------------------- shared setup
@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def tiny_model_files(tmp_path_factory) -> dict[str, Path]:
    """{"folder": dgp_jax checkpoint, "pth": G_ema_32.pth (D_32.pth beside it)}."""
    import dgp_jax
    from dgp_jax import checkpoint

    root = shared_root(tmp_path_factory)
    target = root / "dgp_tiny32"
    with _locked(root / "dgp_tiny32.lock"):
        if not (target / "done").is_file():
            config = dgp_jax.BigGANConfig(**TINY)
            # N02 (normal) init, BigGAN-PyTorch's other G_init: the CLI runs cover it.
            model = dgp_jax.random_biggan(config, jax.random.PRNGKey(0), init="N02")
            model.save(target / "folder", overwrite=True)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sharding info not provided")
                checkpoint.export_pth(
                    target / "folder", target / "G_ema_32.pth", target / "D_32.pth"
                )
            (target / "done").write_text("")
    return {"folder": target / "folder", "pth": target / "G_ema_32.pth"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return tiny_model_files(tmp_path_factory)


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    return Mesh(np.array(jax.devices()[:1]), ("data",))


def make_photos(folder: Path, count: int, size=(40, 30)) -> list[Path]:
    """Distinct smooth pictures p0.png, p1.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        w, h = size
        x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
        rgb = np.stack([x, y, (x * (i + 1) + y * (3 - i)) % 1], -1)
        paths.append(folder / f"p{i}.png")
        Image.fromarray((rgb * 255).astype(np.uint8)).save(paths[-1])
    return paths


def options(tiny, out, inputs, **kw) -> runner.RunOptions:
    base = dict(kind="restore", inputs=[str(p) for p in inputs], weights=str(tiny["pth"]),
                out=str(out), task="colorization", sets=list(FAST), batch=2, class_index=3,
                progress=False)  # fmt: skip
    base.update(kw)
    return runner.RunOptions(**base)


def files_of(out: Path, marker: str) -> list[Path]:
    record = json.loads((out / marker).read_text())
    return [out / f for f in record["files"]] + [out / marker]


def check_sheet(path: Path, tiles: int, result: Path) -> None:
    """A labelled sheet of ``tiles`` 32 px tiles shown at 128 px; the last is ``result``."""
    tile, pad = 128, 4
    with Image.open(path) as im:
        sheet = np.asarray(im.convert("RGB"), np.int16)
    height, width = sheet.shape[:2]
    band = height - tile - pad
    assert width == tiles * (tile + pad) + pad and 8 < band < 40
    for k in range(tiles):
        left = pad + k * (tile + pad)
        assert (sheet[:band, left : left + tile] < 128).any(), k  # a label above each tile
    last = sheet[band : band + tile, width - pad - tile : width - pad]
    np.testing.assert_array_equal(last[::4, ::4], pixels(result))


# --------------------------------------------------------------------------- pure parts
def test_names_keys_and_shares():
    entries = [(Path("a/x.jpg"), 1), (Path("b/x.jpg"), 2), (Path("a/y.png"), -1),
               (Path("a/x.jpg"), 1)]  # fmt: skip
    items = runner.plan_items(entries)
    assert len(items) == 3  # the exact duplicate is dropped
    names = [it.name for it in items]
    assert names[2] == "y" and names[0].startswith("x-") and names[1].startswith("x-")
    assert len(set(names)) == 3
    # Names (so keys) do not depend on the order of the list.
    assert {it.name for it in runner.plan_items(entries[::-1])} == set(names)
    key = runner.image_key(0, "x")
    assert key.dtype == np.uint32 and key.shape == (2,)
    np.testing.assert_array_equal(key, runner.image_key(0, "x"))
    assert not np.array_equal(key, runner.image_key(1, "x"))
    assert not np.array_equal(key, runner.image_key(0, "y"))
    shares = [runner.take_share(list(range(7)), 3, p) for p in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]


def test_settings_overrides_and_presets():
    base = SolverConfig.preset("colorization")
    sets = runner.parse_sets(["iterations=1", "G_lrs=1e-4,1e-4,1e-4,1e-4,1e-5", "w_nll=0.5",
                              "resolution=none", "use_in=false"], base)  # fmt: skip
    assert sets["iterations"] == (1, 1, 1, 1, 1)  # one value = every stage
    assert sets["G_lrs"][-1] == 1e-5 and sets["w_nll"] == 0.5 and sets["resolution"] is None
    assert sets["use_in"] == (False,) * 5
    with pytest.raises(runner.RunError, match="unknown field 'nope'"):
        runner.parse_sets(["nope=1"], base)
    with pytest.raises(runner.RunError, match="field=value"):
        runner.parse_sets(["iterations"], base)
    # A preset for 128 px on a 32 px model is refused, naming both.
    with pytest.raises(runner.RunError, match=r"32 px model but preset 'imagenet1k_128/colo"):
        runner.build_config("colorization", 32)
    config = runner.build_config("SR", 32, sets=["resolution=none"], factor=2)
    assert config.dgp_mode == "SR" and config.sr_factor == 2
    assert runner.default_preset("SR", 256) == "examples_256/SR"
    assert runner.default_preset("colorization", 64) == "wallpapers_64/colorization"
    assert runner.build_config("inpainting", 64).iterations == (40, 40, 40, 40, 40)
    assert runner.default_preset("hybrid", 128) == "imagenet1k_128/reconstruct"
    with pytest.raises(runner.RunError, match="^--set dgp_mode=SR contradicts --task inpainting: "
                       "choose the task with --task$"):  # fmt: skip
        runner.build_config("inpainting", 64, sets=["dgp_mode=SR"])
    assert runner.build_config("SR", 64, sets=["dgp_mode=SR"]).dgp_mode == "SR"
    with pytest.raises(runner.RunError, match="adam_eps must be a finite number > 0, got 0"):
        runner.build_config("SR", 64, sets=["adam_eps=0"])
    with pytest.raises(runner.RunError, match="--factor applies to the tasks SR and hybrid"):
        runner.build_config("colorization", 32, sets=["resolution=none"], factor=2)
    with pytest.raises(runner.RunError, match="factor 3 does not divide the model resolution"):
        runner.build_config("SR", 32, sets=["resolution=none"], factor=3)
    with pytest.raises(runner.RunError, match="ft_num has 5 entries but iterations has 2"):
        runner.build_config("colorization", 32, sets=["resolution=none", "iterations=1,1"])
    # A --set value of the wrong type names the field; a bad --factor is refused up front.
    with pytest.raises(runner.RunError, match=r"--set iterations=abc: iterations must be an "):
        runner.parse_sets(["iterations=abc"], base)
    with pytest.raises(runner.RunError, match=r"--set use_in=maybe: use_in must be true or f"):
        runner.parse_sets(["use_in=maybe"], base)
    with pytest.raises(runner.RunError, match=r"--set w_nll=x: w_nll must be a number"):
        runner.parse_sets(["w_nll=x"], base)
    assert runner.parse_sets(["factor=none", "use_in=0"], base)["use_in"] == (False,) * 5
    # The field's annotated type, not its preset value's: presets.json writes the float
    # weights w_mse, w_D_loss (and lr_ratio) as ints, and select_batch's default is None.
    sets = runner.parse_sets(["w_mse=0.5", "w_D_loss=0.25", "select_batch=4"],
                             SolverConfig.preset("wallpapers_64/inpainting"))  # fmt: skip
    assert sets["w_mse"] == (0.5,) * 5 and sets["w_D_loss"] == (0.25,) * 5
    assert sets["select_batch"] == 4
    assert runner.parse_sets(["select_batch=none"], base)["select_batch"] is None
    for text, expected in (("abc", "an integer"), ("1.5", "an integer")):
        with pytest.raises(runner.RunError, match=rf"^--set select_batch={text}: select_batch "
                           rf"must be {expected}, got '{text}'$"):  # fmt: skip
            runner.parse_sets([f"select_batch={text}"], base)
    for factor in (0, -2):
        with pytest.raises(runner.RunError, match=f"--factor must be a positive .*got {factor}"):
            runner.build_config("SR", 32, sets=["resolution=none"], factor=factor)


def test_manipulations_default_to_the_references_batch_norm_schedules():
    # The reference's run_jitter.sh / run_morphing.sh / run_category_transfer.sh, scaled
    # for the shipped model as the other wallpapers_64 presets are (iterations / 5, 100
    # start candidates); use_in off throughout, so the frames render the solved image.
    for kind, script in (("jitter", "jitter"), ("morph", "morphing"),
                         ("transfer", "category_transfer")):  # fmt: skip
        assert runner.default_preset("reconstruct", 64, kind) == f"wallpapers_64/{script}"
        assert runner.default_preset("reconstruct", 256, kind) == f"examples_256/{script}"
        ours = runner.build_config("reconstruct", 64, kind=kind)
        ref = SolverConfig.preset(f"examples_256/{script}")
        assert ours.iterations == tuple(i // 5 for i in ref.iterations) and ours.select_num == 100
        assert ours.replace(iterations=ref.iterations, select_num=500, resolution=256,
                            dgp_mode=ref.dgp_mode) == ref  # fmt: skip
        assert not any(ours.use_in)
        # 128 px has no manipulation script: the 256 px schedule.
        assert runner.build_config("reconstruct", 128, kind=kind).iterations == ref.iterations
        # A schedule that ends in instance-norm mode cannot be rendered faithfully: refused.
        with pytest.raises(runner.RunError, match=f"{kind} renders its frames in batch-norm"):
            runner.build_config("reconstruct", 64, "wallpapers_64/reconstruct", kind=kind)
        with pytest.raises(runner.RunError, match="ends in instance-norm mode"):
            runner.build_config("reconstruct", 64, sets=["use_in=true"], kind=kind)
    # A restore keeps the task's own schedule.
    assert runner.build_config("reconstruct", 64).use_in == (True,) * 5


def test_bad_precision_or_batch_is_a_setup_error(tmp_path):
    def options(**kw):
        return runner.RunOptions(kind="restore", inputs=[], weights="", out=str(tmp_path / "o"),
                                 task="colorization", **kw)  # fmt: skip

    with pytest.raises(runner.RunError, match="--precision must be one of float32, tf32"):
        runner.execute(options(precision="float8"))
    with pytest.raises(runner.RunError, match="--batch must be >= 1"):
        runner.execute(options(batch=-2))
    with pytest.raises(runner.RunError, match="--batch must be >= 1, got 0"):
        runner.execute(options(batch=0))
    assert not (tmp_path / "o").exists()  # refused before any work


def test_default_batch_is_eight_images_per_device_on_a_cpu_too():
    # conftest.py gives this session 8 host CPU devices.
    assert jax.local_devices()[0].platform == "cpu" and len(jax.local_devices()) == 8
    assert runner.default_batch() == 64


def test_process_settings(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert runner.init_distributed(None, None, None) == (0, 1)
    # Without a coordinator the processes only split the inputs (no jax.distributed).
    assert runner.init_distributed(None, 3, 2) == (2, 3)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert runner.init_distributed(None, None, None) == (1, 4)
    with pytest.raises(runner.RunError, match="--process-id 5 is not in"):
        runner.init_distributed(None, 4, 5)
    monkeypatch.delenv("JAX_PROCESS_ID")
    with pytest.raises(runner.RunError, match="needs --num-processes and --process-id"):
        runner.init_distributed("127.0.0.1:1", None, None)


def test_output_dir_atomic_writes_lock_and_cleanup(tmp_path):
    out = runner.OutputDir(tmp_path / "o").open()
    stale = out.root / ".a.png.tmp-0"
    stale.write_bytes(b"half")
    out.close()
    with runner.OutputDir(tmp_path / "o") as out:
        assert not stale.exists()  # leftovers of a killed run are removed
        out.write_json("sub/x.json", {"a": 1})
        assert json.loads((out.root / "sub/x.json").read_text()) == {"a": 1}
        assert not list(out.root.rglob("*.tmp-0"))
        # A second run on the same folder and process is refused while this one runs.
        with pytest.raises(runner.RunError, match="another dgp-jax run"):
            runner.OutputDir(tmp_path / "o").open()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(runner.RunError, match="not writable"):
        runner.OutputDir.check_writable(blocker / "sub")


def test_output_dir_made_again_when_a_sibling_process_removes_it(tmp_path, monkeypatch):
    """The processes of a multi-process run start together; one's pre-check
    (check_writable(keep=False)) removes the empty folder it made, which may be just after
    another made it too (seen: "out2 is not writable (No such file or directory)")."""
    import builtins

    from dgp_jax.run import folder

    root = tmp_path / "out"
    real_write = Path.write_bytes
    removed = []

    def write_after_removal(self, data):
        if self.name.startswith(".dgp_jax.probe") and not removed:
            removed.append(self)
            self.parent.rmdir()  # the sibling's clean-up, between our mkdir and probe
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_after_removal)
    assert runner.OutputDir.check_writable(root) == root and root.is_dir() and removed
    monkeypatch.undo()

    real_open = builtins.open
    lock_removed = []

    def open_after_removal(path, *args, **kwargs):
        if ".dgp_jax.lock" in str(path) and not lock_removed:
            lock_removed.append(path)
            for leftover in Path(path).parent.iterdir():
                leftover.unlink()
            Path(path).parent.rmdir()
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(folder, "open", open_after_removal, raising=False)
    with runner.OutputDir(tmp_path / "out2") as out:
        out.write_json("x.json", {"a": 1})
    assert lock_removed and json.loads((tmp_path / "out2" / "x.json").read_text()) == {"a": 1}


# --------------------------------------------------------------------------- runs
def test_restore_run_resume_force_and_batch_split(tmp_path, tiny, mesh, capsys):
    photos = make_photos(tmp_path / "photos", 3)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "out"
    opts = options(tiny, out, [tmp_path / "photos"], progress=True)
    report = runner.execute(opts, mesh=mesh)
    err = capsys.readouterr().err
    # The progress line: images done/total, stage, step rate, ETA.
    assert "colorization: images 0/4" in err and "stage 5/5" in err and "step" in err
    assert "broken.jpg" in err
    assert sorted(report.done) == ["p0", "p1", "p2"] and list(report.failed) == ["broken"]
    assert not report.interrupted

    for name in ("p0", "p1", "p2"):
        for path in files_of(out, f"{name}_colorization.done.json"):
            assert path.is_file(), path
        # input | degraded | end of stages 1-4 | result (5 stages of 1 step), each tile
        # enlarged 4x (to 128 px) under its label.
        check_sheet(out / f"{name}_colorization_sheet.png", 7, out / f"{name}_colorization.png")
        metrics = json.loads((out / f"{name}_colorization_metrics.json").read_text())
        assert np.isfinite(metrics["psnr"]) and metrics["class"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done"] == 3 and summary["failed"] == 1 and summary["pending"] == 0
    assert "broken.jpg" in summary["failures"]["broken"]["error"]
    assert set(summary["mean"]) == {"psnr", "ssim", "mse", "l1"}
    per_image = [json.loads((out / f"{n}_colorization_metrics.json").read_text())
                 for n in ("p0", "p1", "p2")]  # fmt: skip
    for key, mean in summary["mean"].items():  # over the done images, the broken one left out
        assert mean == pytest.approx(np.mean([m[key] for m in per_image]), rel=1e-12), key
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["name"], r["status"]) for r in rows] == [
        ("broken", "failed"), ("p0", "done"), ("p1", "done"), ("p2", "done")]  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert SolverConfig.from_dict(config) == runner.build_config("colorization", 32, sets=FAST)
    assert config["run"]["seed"] == 0 and config["run"]["model"]["resolution"] == 32
    assert config["run"]["batch"] == 2  # recorded, though not part of the fingerprint
    assert config["run"]["lowering"] == "auto"  # likewise
    assert not list(out.glob(".dgp_jax.lock*"))  # a finished folder holds no lock file

    # Rerun: nothing is redone (the broken file is retried and fails again); an image
    # without its marker is redone, in the same batch shape and at the same position (the
    # first), so bitwise the same. (On some CPUs XLA's float rounding depends on an image's
    # position in the batch, not on its partners: README, "Deterministic".)
    stamps = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    first_p0 = (out / "p0_colorization.png").read_bytes()
    first_metrics = json.loads((out / "p0_colorization.done.json").read_text())["metrics"]
    (out / "p0_colorization.done.json").unlink()  # as if p0 had been interrupted
    again = runner.execute(opts, mesh=mesh)
    assert sorted(again.skipped) == ["p1", "p2"] and again.done == ["p0"]
    assert (out / "p0_colorization.png").read_bytes() == first_p0
    assert json.loads((out / "p0_colorization.done.json").read_text())["metrics"] == first_metrics
    for name in ("p1", "p2"):
        for path in files_of(out, f"{name}_colorization.done.json"):
            assert path.stat().st_mtime_ns == stamps[path], path

    # Results written into the input folder would be read back as inputs: refused.
    with pytest.raises(runner.RunError, match="is an input folder"):
        runner.execute(options(tiny, tmp_path / "photos", [tmp_path / "photos"]), mesh=mesh)

    # Other settings in the same folder: refused, nothing touched; --force redoes.
    other = options(tiny, out, [tmp_path / "photos"], seed=1)
    with pytest.raises(runner.RunError, match="other settings .*seed"):
        runner.execute(other, mesh=mesh)
    assert json.loads((out / "config.json").read_text())["run"]["seed"] == 0

    # Another batch split, [p2, p1] and [p0]: other partners at the same positions. Keys
    # follow the names, so the results are the same. (A different batch size or position
    # may differ by float rounding, as XLA can vectorise them differently.)
    split = tmp_path / "split"
    runner.execute(options(tiny, split, photos[::-1]), mesh=mesh)
    for name in ("p0", "p1", "p2"):
        a = json.loads((out / f"{name}_colorization.done.json").read_text())
        b = json.loads((split / f"{name}_colorization.done.json").read_text())
        assert a["metrics"] == b["metrics"] and a["class"] == b["class"]
        assert (out / f"{name}_colorization.png").read_bytes() == (
            split / f"{name}_colorization.png"
        ).read_bytes()

    # --force with other settings: the old results go, none is left beside the new ones.
    forced = runner.execute(options(tiny, out, photos[:2], seed=1, force=True), mesh=mesh)
    assert sorted(forced.done) == ["p0", "p1"]
    assert not list(out.glob("p2_*")) and not list(out.glob("broken*"))
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["images"]) == ["p0", "p1"] and summary["total"] == 2


def test_restore_metrics_score_the_hole_the_run_filled():
    """restore --metrics: the mask metrics get the run's --mask, else the centre hole at the
    model's resolution; the tasks without a hole give none."""
    import types

    from dgp_jax.degradations import center_mask
    from dgp_jax.run.results import _filled_hole

    anysize = ["resolution=none"]
    spec = types.SimpleNamespace(config=runner.build_config("inpainting", 24, sets=anysize),
                                 mask=None)  # fmt: skip
    np.testing.assert_array_equal(_filled_hole(spec, 24), center_mask(24, 24, np.float64))
    assert _filled_hole(spec, 24).shape == (24, 24, 1)
    spec.mask = np.ones((24, 24, 1))
    assert _filled_hole(spec, 24) is spec.mask
    spec.config = runner.build_config("colorization", 24, sets=anysize)
    assert _filled_hole(spec, 24) is None


def test_custom_mask_and_observed_inputs(tmp_path, tiny, mesh):
    photos = make_photos(tmp_path / "photos", 1)
    keep = np.full((32, 32), 255, np.uint8)
    keep[:, :8] = 0  # the left quarter is missing
    Image.fromarray(keep).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    opts = options(tiny, out, photos, task="inpainting", mask=str(tmp_path / "mask.png"),
                   batch=1, metrics="inpainting_hole")  # fmt: skip
    assert not runner.execute(opts, mesh=mesh).failed
    degraded = np.asarray(Image.open(out / "p0_inpainting_degraded.png"))
    assert np.all(degraded[:, :8] == 127) and not np.all(degraded[:, 8:] == 127)
    record = json.loads((out / "p0_inpainting.done.json").read_text())
    assert record["metrics_region"].startswith("hole of the custom mask")
    # PSNR/SSIM over the mask's hole (dgp_jax.metrics.inpainting), of G's raw output.
    from dgp_jax.images import load_image
    from dgp_jax.metrics.inpainting import hole_psnr, hole_ssim

    raw = load_image(out / "p0_inpainting_generated.png", 32)
    original = load_image(photos[0], 32)
    hole = np.ones((32, 32))
    hole[:, :8] = 0
    assert abs(record["metrics"]["psnr"] - hole_psnr(raw, original, hole)) < 0.1
    assert abs(record["metrics"]["ssim"] - hole_ssim(raw, original, hole)) < 0.02
    # --metrics inpainting_hole scores the result file in the --mask's hole
    hole_columns = json.loads((out / "summary.json").read_text())["extra_metrics"]["per_image"]
    result = load_image(out / "p0_inpainting.png", 32)
    assert hole_columns["p0"] == {
        "hole_psnr": pytest.approx(hole_psnr(result, original, hole), rel=1e-12),
        "hole_ssim": pytest.approx(hole_ssim(result, original, hole), rel=1e-12),
    }
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["mask"].endswith("mask.png (keep white)")
    assert config["run"]["mask_sha256"]

    # Observed inputs are already degraded: no metrics, the sheet is degraded | stages | result.
    seen = tmp_path / "observed"
    runner.execute(options(tiny, seen, photos, task="inpainting", batch=1, observed=True,
                           mask=str(tmp_path / "mask.png")), mesh=mesh)  # fmt: skip
    record = json.loads((seen / "p0_inpainting.done.json").read_text())
    assert record["metrics"] is None and not (seen / "p0_inpainting_metrics.json").exists()
    check_sheet(seen / "p0_inpainting_sheet.png", 6, seen / "p0_inpainting.png")


def test_hybrid_and_defense_solve_their_own_observations(tmp_path, tiny, mesh):
    """The two tasks no other run test solves: hybrid's observation is x2 SR, then gray,
    then the centre hole (the reference's order); defense's is the image itself."""
    from dgp_jax import degradations
    from dgp_jax.images import load_image, to_uint8

    photos = make_photos(tmp_path / "photos", 1)
    original = load_image(photos[0], 32)[None].astype(np.float32)  # the model's dtype
    for task, spelled in (("hybrid", "hybrid"), ("defense", "defence")):
        out = tmp_path / task
        report = runner.execute(options(tiny, out, photos, task=spelled, batch=1), mesh=mesh)
        assert report.done == ["p0"] and not report.failed
        want = np.asarray(degradations.for_mode(task, 32).target_fn(original)[0])
        # the observation the solver fit, as the reference saves it (8-bit, truncated)
        np.testing.assert_array_equal(pixels(out / f"p0_{task}_degraded.png"), to_uint8(want),
                                      err_msg=task)  # fmt: skip
        config = json.loads((out / "config.json").read_text())
        assert config["dgp_mode"] == task and config["factor"] is None
        record = json.loads((out / f"p0_{task}.done.json").read_text())
        assert set(record["metrics"]) >= {"psnr", "ssim"}
    hybrid = np.asarray(degradations.for_mode("hybrid", 32).target_fn(original)[0])
    assert np.array_equal(hybrid[..., 0], hybrid[..., 2])  # gray
    assert np.all(hybrid[degradations.center_mask(32, 32)[..., 0] == 0] == 0)  # the hole
    assert runner.canonical_task("sr") == "SR" and runner.canonical_task("defence") == "defense"


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im, np.int16)


def test_jitter_transfer_and_morph(tmp_path, tiny, mesh):
    three = make_photos(tmp_path / "photos", 3)
    photos = three[:2]
    # Every run solves 2 images in one batch: one solver program for the three kinds.
    # Their default schedules are the reference's manipulation scripts (batch-norm mode).
    common = dict(task="reconstruct", class_index=None, batch=2)

    out = tmp_path / "jitter"
    report = runner.execute(options(tiny, out, photos[:2], kind="jitter", **common,
                                    manipulation={"stds": [0, 0.7], "samples": 2}),
                            mesh=mesh)  # fmt: skip
    assert sorted(report.done) == ["p0", "p1"]
    frames = sorted(p.name for p in (out / "p0_jitter_frames").iterdir())
    assert frames == ["std0.7_00.png", "std0.7_01.png", "std0_00.png", "std0_01.png"]
    with Image.open(out / "p0_jitter_grid.png") as grid:
        assert grid.size == (3 * 32, 2 * 32)  # restored + 2 samples, one row per std
    config = json.loads((out / "config.json").read_text())
    assert config["use_in"] == [False] * 3 and config["iterations"] == [1, 1, 1]
    for name in ("p0", "p1"):
        # std 0 renders the solved image (the same render, another batch shape: the
        # pixels may differ by float rounding at most).
        solved = pixels(out / f"{name}_jitter.png")
        for s in ("00", "01"):
            assert np.abs(pixels(out / f"{name}_jitter_frames/std0_{s}.png") - solved).max() <= 1
        assert np.abs(pixels(out / f"{name}_jitter_frames/std0.7_00.png") - solved).max() > 8

    out = tmp_path / "transfer"
    runner.execute(options(tiny, out, photos, kind="transfer", **common,
                           manipulation={"classes": [1, 7]}), mesh=mesh)  # fmt: skip
    assert sorted(p.name for p in (out / "p0_transfer_frames").iterdir()) == [
        "class0001.png", "class0007.png"]  # fmt: skip
    with pytest.raises(runner.RunError, match=r"--classes \[12\] out of range"):
        runner.execute(options(tiny, tmp_path / "t2", photos[:1], kind="transfer", **common,
                               manipulation={"classes": [12]}), mesh=mesh)  # fmt: skip
    # A schedule ending in instance-norm mode would not render the solved image: refused.
    with pytest.raises(runner.RunError, match="transfer renders its frames in batch-norm"):
        runner.execute(options(tiny, tmp_path / "t3", photos, kind="transfer", **common,
                               preset="imagenet1k_128/reconstruct",
                               manipulation={"classes": [1]}), mesh=mesh)  # fmt: skip
    assert not (tmp_path / "t2").exists() and not (tmp_path / "t3").exists()

    out = tmp_path / "morph"
    report = runner.execute(options(tiny, out, photos, kind="morph", **common,
                                    manipulation={"frames": 3}), mesh=mesh)  # fmt: skip
    assert report.done == ["p0_to_p1"]
    assert sorted(p.name for p in (out / "p0_to_p1_morph_frames").iterdir()) == [
        "frame00.png", "frame01.png", "frame02.png"]  # fmt: skip
    with Image.open(out / "p0_to_p1_morph_grid.png") as grid:
        assert grid.size == (3 * 32, 32)
    # Frame 0 is image a's result and the last frame image b's.
    frame = lambda k: pixels(out / f"p0_to_p1_morph_frames/frame{k:02d}.png")  # noqa: E731
    assert np.abs(frame(0) - pixels(out / "p0_morph.png")).max() <= 1
    assert np.abs(frame(2) - pixels(out / "p1_morph.png")).max() <= 1
    assert np.abs(frame(0) - frame(2)).max() > 8
    assert json.loads((out / "summary.json").read_text())["done"] == 1
    again = runner.execute(options(tiny, out, photos, kind="morph", **common,
                                   manipulation={"frames": 3}), mesh=mesh)  # fmt: skip
    assert again.skipped == ["p0_to_p1"] and not again.done
    # Each image's result is part of the pair's results: deleted, it is made again.
    record = json.loads((out / "p0_to_p1_morph.done.json").read_text())
    assert {"p0_morph.png", "p1_morph.png"} <= set(record["files"])
    before = (out / "p1_morph.png").read_bytes()
    (out / "p1_morph.png").unlink()
    again = runner.execute(options(tiny, out, photos, kind="morph", **common,
                                   manipulation={"frames": 3}), mesh=mesh)  # fmt: skip
    assert again.done == ["p0_to_p1"] and (out / "p1_morph.png").read_bytes() == before

    # Three inputs morph each into the next (p0 -> p1, p1 -> p2, not p0 -> p2); p1 is solved
    # once and ends one morph and starts the other.
    out = tmp_path / "morph3"
    report = runner.execute(options(tiny, out, three, kind="morph", **common,
                                    manipulation={"frames": 3}), mesh=mesh)  # fmt: skip
    assert report.done == ["p0_to_p1", "p1_to_p2"] and not report.failed
    assert sorted(p.name for p in out.glob("*_grid.png")) == [
        "p0_to_p1_morph_grid.png", "p1_to_p2_morph_grid.png"]  # fmt: skip
    frame = lambda pair, k: pixels(out / f"{pair}_morph_frames/frame{k:02d}.png")  # noqa: E731
    for name, pair, k in (("p0", "p0_to_p1", 0), ("p1", "p0_to_p1", 2), ("p1", "p1_to_p2", 0),
                          ("p2", "p1_to_p2", 2)):  # fmt: skip
        assert np.abs(frame(pair, k) - pixels(out / f"{name}_morph.png")).max() <= 1, (pair, k)
    assert json.loads((out / "summary.json").read_text())["done"] == 2
    # A pair whose marker is gone is redone alone; the other is kept.
    (out / "p1_to_p2_morph.done.json").unlink()
    again = runner.execute(options(tiny, out, three, kind="morph", **common,
                                   manipulation={"frames": 3}), mesh=mesh)  # fmt: skip
    assert again.done == ["p1_to_p2"] and again.skipped == ["p0_to_p1"]


def test_result_files_are_the_scored_images(tmp_path, tiny, mesh):
    """<name>_<task>.png is what the metrics score; G's raw output is _generated.png."""
    from dgp_jax.images import load_image
    from dgp_jax.metrics import psnr

    photos = make_photos(tmp_path / "photos", 2)
    original = np.stack([load_image(p, 32) for p in photos])
    begin, end = 11, 21  # the centre hole at 32 px (hole_box)
    for task in ("colorization", "inpainting"):
        out = tmp_path / task
        runner.execute(options(tiny, out, photos, task=task), mesh=mesh)
        for i, name in enumerate(("p0", "p1")):
            result = pixels(out / f"{name}_{task}.png")
            raw = pixels(out / f"{name}_{task}_generated.png")
            reported = json.loads((out / f"{name}_{task}_metrics.json").read_text())["psnr"]
            as_read = result / 255.0 * 2 - 1
            if task == "colorization":
                scored = psnr(as_read[None], original[i][None])[0]
            else:  # the hole only; the known pixels are the input's
                known = np.ones((32, 32), bool)
                known[begin:end, begin:end] = False
                as_saved = (255 * (original[i] + 1) / 2).astype(np.uint8)
                np.testing.assert_array_equal(result[known], as_saved[known])
                hole = (slice(None), slice(begin, end), slice(begin, end))
                scored = psnr(as_read[None][hole], original[i][None][hole])[0]
            # The same PSNR, up to the 8-bit rounding of the file.
            assert abs(scored - reported) < 0.1, (task, name, scored, reported)
            assert np.abs(result - raw).max() > 2  # the raw output is not the result


def test_notes_for_gray_and_16_bit_inputs_in_plain_log_lines(tmp_path, tiny, mesh, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    gray = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))
    Image.fromarray(gray).save(folder / "gray.png")
    Image.fromarray(np.full((30, 40), 40000, np.uint16)).save(folder / "deep.png")
    with Image.open(folder / "deep.png") as im:
        assert im.mode.startswith("I")  # a 16-bit grayscale PNG
    report = runner.execute(options(tiny, tmp_path / "out", [folder], progress=True), mesh=mesh)
    assert sorted(report.done) == ["deep", "gray"]
    err = capsys.readouterr().err
    assert f"note: {folder / 'gray.png'} is gray: colorization scores" in err
    assert "pass --observed for gray inputs" in err
    assert f"warning: {folder / 'deep.png'} is a 16-bit grayscale image: it is clipped" in err
    assert "100% of it loads as white" in err
    # stderr is not a terminal here: whole lines, no carriage returns.
    assert "\r" not in err
    lines = err.splitlines()
    assert "colorization: images 0/2: 1 batch(es) of 5 steps to solve" in lines
    assert "colorization: images 0/2: stage 5/5" in lines
    assert any(line.startswith("colorization: images 2/2: 5 steps in ") for line in lines)


def test_a_preset_of_another_size_names_this_sizes_preset():
    with pytest.raises(runner.RunError, match=r"64 px \(--preset wallpapers_64/inpainting\)"):
        runner.build_config("inpainting", 64, "imagenet1k_128/inpainting")


def test_fast_compiles_puts_every_setting_back(tmp_path):
    outer = {name: setting(name) for name in FAST_COMPILE_SETTINGS}
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 3.0)
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        before = {name: setting(name) for name in FAST_COMPILE_SETTINGS}
        with fast_compiles(tmp_path / "cache"):
            assert setting("jax_compilation_cache_dir") == str(tmp_path / "cache")
            assert setting("jax_persistent_cache_min_compile_time_secs") == 0
            assert setting("jax_disable_most_optimizations") is True
        assert {name: setting(name) for name in FAST_COMPILE_SETTINGS} == before
    finally:
        for name, value in outer.items():
            jax.config.update(name, value)


# --------------------------------------------------------------------------- failure paths
def _restore_calls(monkeypatch, on_call):
    """dgp_jax.restore as the runner calls it, with ``on_call(n)`` run before call n."""
    import dgp_jax

    real, calls = dgp_jax.restore, []

    def restore(*args, **kwargs):
        calls.append(len(args[1]))
        on_call(len(calls))
        return real(*args, **kwargs)

    monkeypatch.setattr(dgp_jax, "restore", restore)
    return calls


def test_a_failed_solve_fails_its_batch_only(tmp_path, tiny, mesh, monkeypatch):
    photos = make_photos(tmp_path / "photos", 4)

    def on_call(n):
        if n == 1:
            raise RuntimeError("out of memory")

    calls = _restore_calls(monkeypatch, on_call)
    out = tmp_path / "out"
    report = runner.execute(options(tiny, out, photos), mesh=mesh)
    assert calls == [2, 2] and not report.interrupted
    assert sorted(report.failed) == ["p0", "p1"] and sorted(report.done) == ["p2", "p3"]
    for name in ("p0", "p1"):
        assert report.failed[name] == "solve failed: RuntimeError: out of memory"
        assert not (out / f"{name}_colorization.done.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["done"], summary["failed"], summary["pending"]) == (2, 2, 0)
    assert summary["failures"]["p0"]["error"] == "solve failed: RuntimeError: out of memory"
    # A rerun retries the failed batch only.
    again = runner.execute(options(tiny, out, photos), mesh=mesh)
    assert sorted(again.done) == ["p0", "p1"] and sorted(again.skipped) == ["p2", "p3"]
    assert calls == [2, 2, 2]


def test_sigterm_ends_the_run_with_a_summary(tmp_path, tiny, mesh, monkeypatch):
    import signal

    photos = make_photos(tmp_path / "photos", 6)
    before = signal.getsignal(signal.SIGTERM)

    def on_call(n):
        if n == 2:  # a scheduler stops the job during the second batch
            os.kill(os.getpid(), signal.SIGTERM)

    calls = _restore_calls(monkeypatch, on_call)
    out = tmp_path / "out"
    report = runner.execute(options(tiny, out, photos), mesh=mesh)
    assert report.interrupted and calls == [2, 2]
    assert sorted(report.done) == ["p0", "p1"] and not report.failed
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["done"], summary["failed"], summary["pending"]) == (2, 0, 4)
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back
    resumed = runner.execute(options(tiny, out, photos), mesh=mesh)
    assert sorted(resumed.skipped) == ["p0", "p1"] and len(resumed.done) == 4


def test_other_weights_are_other_settings(tmp_path, tiny, mesh):
    import dgp_jax

    photos = make_photos(tmp_path / "photos", 2)
    out = tmp_path / "out"
    model = dgp_jax.load_biggan(tiny["pth"])
    runner.execute(options(tiny, out, photos), model=model, mesh=mesh)
    # The same weights (loaded again) resume; changed weights (as after fine-tuning one
    # layer) are refused, though the file path is the same.
    again = runner.execute(options(tiny, out, photos), model=dgp_jax.load_biggan(tiny["pth"]),
                           mesh=mesh)  # fmt: skip
    assert sorted(again.skipped) == ["p0", "p1"]
    params = model.generator["params"]
    tuned = model.replace(
        generator={
            **model.generator,
            "params": {
                **params,
                "linear": {**params["linear"], "bias": params["linear"]["bias"] + 1e-3},
            },
        }
    )
    assert runner.weights_id(tuned) != runner.weights_id(model)
    # Every value counts, the last one of the largest tensor included.
    flat = traverse_util.flatten_dict(params)
    largest = max(flat, key=lambda path: flat[path].size)
    edited = np.asarray(flat[largest]).copy()
    edited.reshape(-1)[-1] = np.nextafter(edited.reshape(-1)[-1], np.inf)  # the least change
    last = model.replace(
        generator={
            **model.generator,
            "params": traverse_util.unflatten_dict({**flat, largest: edited}),
        }
    )
    assert runner.weights_id(last) != runner.weights_id(model)
    assert runner.weights_id(dgp_jax.load_biggan(tiny["pth"])) == runner.weights_id(model)
    with pytest.raises(runner.RunError, match=r"other settings \(differing: weights_id\)"):
        runner.execute(options(tiny, out, photos), model=tuned, mesh=mesh)


def test_select_batch_does_not_change_the_fingerprint():
    import dgp_jax
    from dgp_jax.run.markers import RunSpec

    # select_batch sets the size of the start-candidate passes, not the results, so any
    # value resumes the same folder. 870d0b1b246f1ebd is what the code before select_batch
    # became a per-device pass size (default 16 per image) computed for this spec and model:
    # folders written then still resume (this suite runs with jax_enable_x64, which the
    # model's int64 buffers and so its weights_id reflect).
    model = dgp_jax.random_biggan(dgp_jax.BigGANConfig(**TINY), jax.random.PRNGKey(0),
                                  init="N02")  # fmt: skip
    config = runner.build_config("colorization", 32, sets=["iterations=1", "select_num=3",
                                                            "resolution=none"])  # fmt: skip
    assert config.select_batch is None
    for select_batch in (None, 16, 3):
        spec = RunSpec(kind="restore", label="colorization",
                       config=config.replace(select_batch=select_batch))  # fmt: skip
        assert spec.fingerprint(model) == "870d0b1b246f1ebd"
    other = RunSpec(kind="restore", label="colorization", config=config.replace(select_num=4))
    assert other.fingerprint(model) != "870d0b1b246f1ebd"
    # --batch and --lowering change only float rounding: a folder resumes with another;
    # --precision changes the results: a folder of float32 results refuses bfloat16 or tf32.
    spec = RunSpec(kind="restore", label="colorization", config=config)
    for speed in ({"batch": 1}, {"batch": 64}, {"lowering": "im2col"}, {"lowering": "vmap"}):
        assert dataclasses.replace(spec, **speed).fingerprint(model) == "870d0b1b246f1ebd"
    prints = {dataclasses.replace(spec, precision=p).fingerprint(model)
              for p in ("float32", "tf32", "bfloat16")}  # fmt: skip
    assert len(prints) == 3 and "870d0b1b246f1ebd" in prints


def test_resume_from_another_working_directory(tmp_path, tiny, mesh, monkeypatch):
    home = tmp_path / "project"
    make_photos(home / "photos", 2)
    shutil.copytree(tiny["pth"].parent, home / "weights")
    monkeypatch.chdir(home)
    first = runner.execute(options(tiny, "out", ["photos"], weights="weights/G_ema_32.pth"),
                           mesh=mesh)  # fmt: skip
    assert sorted(first.done) == ["p0", "p1"]
    # The same run named from the parent folder, paths relative to there: nothing redone.
    monkeypatch.chdir(tmp_path)
    again = runner.execute(options(tiny, "project/out", ["project/photos"],
                                   weights="project/weights/G_ema_32.pth"), mesh=mesh)  # fmt: skip
    assert sorted(again.skipped) == ["p0", "p1"] and not again.done


def test_vgg_feature_loss_reads_vgg16_from_nets(tmp_path, tiny, mesh, monkeypatch):
    """restore --set ftr_type=VGG: VGG16 from --nets, checked before any folder is made, and
    handed to the solver (whose use of it tests/test_perceptual.py checks against the
    reference; here the solve is stopped at the call, so nothing compiles)."""
    import dgp_jax
    from dgp_jax import pth
    from dgp_jax.nets import vgg
    from tests.random_weights import random_state

    photos = make_photos(tmp_path / "photos", 1)
    out = tmp_path / "out"
    sets = [*FAST, "ftr_type=VGG"]
    with pytest.raises(runner.RunError, match=r"'ftr_type=VGG' needs vgg16-397923af.pth.*--nets"):
        runner.execute(options(tiny, out, photos, sets=sets, batch=1), mesh=mesh)
    assert not out.exists()
    nets = tmp_path / "nets"
    nets.mkdir()
    pth.write_state_dict(nets / "vgg16-397923af.pth", random_state(vgg.state_shapes(), 5))
    seen = {}

    def solver_call(model, images, classes, config, keys, **kwargs):
        seen.update(kwargs, config=config)
        raise RuntimeError("stopped at the solver call")

    monkeypatch.setattr(dgp_jax, "restore", solver_call)
    report = runner.execute(options(tiny, out, photos, sets=sets, batch=1, nets=str(nets)),
                            mesh=mesh)  # fmt: skip
    assert report.failed == {"p0": "solve failed: RuntimeError: stopped at the solver call"}
    assert seen["config"].ftr_type == "VGG"
    want = vgg.load_params(nets / "vgg16-397923af.pth")
    for a, b in zip(jax.tree.leaves(seen["vgg"]), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    run = json.loads((out / "config.json").read_text())
    assert run["ftr_type"] == "VGG" and len(run["run"]["vgg_id"]) == 16
    # Other VGG weights are other settings.
    pth.write_state_dict(nets / "vgg16-397923af.pth", random_state(vgg.state_shapes(), 6))
    with pytest.raises(runner.RunError, match=r"differing: vgg_id"):
        runner.execute(options(tiny, out, photos, sets=sets, batch=1, nets=str(nets)),
                       mesh=mesh)  # fmt: skip
