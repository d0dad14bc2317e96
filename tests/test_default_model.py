"""The model shipped in the package: its files and record, a real restoration of a held-out
photo with it, and the CLI using it when no --weights is given."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

import dgp_jax
from dgp_jax import cli, default_model, runner
from dgp_jax.images import load_image
from dgp_jax.nets.biggan import BigGANConfig
from dgp_jax.pth import read_state_dict
from tests.conftest import load_experiment

REPO = Path(__file__).resolve().parents[1]
HELDOUT = REPO / "examples" / "heldout"
# Few steps of the shipped schedule: enough to see the loss fall, cheap enough for CI. Every
# solve of this module (in-process, the CLI's, the ablation script's) is one 64 px image
# of this task with these settings, so they share compiled programs (the step's shapes
# follow the step count, the selector's the candidate count).
TASK = "SR"
ITERATIONS, SELECT_NUM = 3, 6
SHORT = {"iterations": (ITERATIONS,) * 5, "select_num": SELECT_NUM}
PHOTO, CLASS = HELDOUT / "objects_Wine_by_Jakkub_Mede_0.png", 2


# Compilation dominates: cheap compiles into the session's cache (conftest.py).
pytestmark = pytest.mark.usefixtures("cheap_compilation_cache")


@pytest.fixture(scope="module")
def model() -> dgp_jax.BigGAN:
    return dgp_jax.load_default_biggan()


def test_shipped_files_record_and_architecture(model):
    info = dgp_jax.default_model_info()
    assert info["classes"] == ["flora", "landscape", "objects"]
    assert model.config == BigGANConfig(
        resolution=64, G_ch=16, D_ch=16, n_classes=3, G_attn="0", D_attn="0"
    )
    assert model.discriminator is not None
    # Stored as float16 (a few MB in the package), computed in float32.
    g_file, d_file = default_model.DEFAULT_MODEL, default_model.DEFAULT_DISCRIMINATOR
    assert g_file.stat().st_size + d_file.stat().st_size < 10 * 2**20
    stored = read_state_dict(g_file)
    assert stored["shared.weight"].dtype == np.float16
    assert stored["shared.weight"].shape == (3, 128)
    loaded = model.generator["params"]["shared"]["weight"]
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(loaded), stored["shared.weight"].astype(np.float32))
    for path in (g_file, d_file):
        assert default_model.sha256(path) == info["files"][path.name]
    # Samples are finite images, and the class changes the picture for the same z.
    z = jnp.repeat(jax.random.normal(jax.random.PRNGKey(0), (1, model.config.dim_z)), 3, 0)
    x = np.asarray(model.generate(z, np.arange(3)))
    assert x.shape == (3, 64, 64, 3) and np.isfinite(x).all()
    assert min(np.abs(x[i] - x[j]).mean() for i, j in ((0, 1), (0, 2), (1, 2))) > 0.01


def test_damaged_shipped_file_is_named(tmp_path, monkeypatch):
    copy = tmp_path / default_model.DEFAULT_MODEL.name
    shutil.copy(default_model.DEFAULT_MODEL, copy)
    with open(copy, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00" * 16)
    monkeypatch.setattr(default_model, "DEFAULT_MODEL", copy)
    with pytest.raises(ValueError, match=r"G_ema_wallpapers64\.pth does not match its sha256"):
        default_model.verify_default_model()
    monkeypatch.setattr(default_model, "DEFAULT_MODEL", tmp_path / "gone.pth")
    with pytest.raises(ValueError, match=r"gone\.pth is missing"):
        default_model.verify_default_model()
    monkeypatch.setattr(default_model, "RECORD", tmp_path / "no_record.json")
    with pytest.raises(ValueError, match=r"record .*no_record\.json is missing"):
        default_model.verify_default_model()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return load_image(PHOTO, 64)[None]


def restore_short(model, photo, precision="float32"):
    config = dgp_jax.SolverConfig.preset(f"wallpapers_64/{TASK}", **SHORT)
    return dgp_jax.restore(model, photo, [CLASS], config, jax.random.PRNGKey(0),
                           precision=precision)  # fmt: skip


@pytest.fixture(scope="module")
def float32_run(model, photo):
    return restore_short(model, photo)


def test_shipped_model_restores_a_heldout_photo(float32_run):
    result = float32_run
    assert result.images.shape == (1, 64, 64, 3) and result.images.dtype == np.float32
    assert np.isfinite(np.asarray(result.images)).all()
    mse = result.history["mse"][:, 0]
    assert mse.shape == (5 * ITERATIONS,)
    # Fitting the observation: the MSE to the low-resolution photo falls over the run.
    assert mse[-1] < 0.8 * mse[0], mse
    assert set(result.metrics) == {"psnr", "ssim", "mse", "l1"}
    assert np.isfinite(result.metrics["psnr"]).all()


def convolutions(jaxpr) -> list[tuple[str, tuple, tuple, bool]]:
    """(dtype, input shape, output shape, HIGHEST precision) of every convolution in
    ``jaxpr`` and the programs nested in it (NHWC)."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            lhs, rhs, out = eqn.invars[0].aval, eqn.invars[1].aval, eqn.outvars[0].aval
            assert lhs.dtype == rhs.dtype == out.dtype
            highest = jax.lax.Precision.HIGHEST in (eqn.params["precision"] or ())
            found.append((str(lhs.dtype), lhs.shape, out.shape, highest))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += convolutions(sub)
    return found


def traced_step(monkeypatch, run):
    """``run()``, and the jaxpr of the solver step it ran (traced from its first call)."""
    from dgp_jax import solve

    cached, traced = solve._cached_step, []

    def tracing(*a):
        step, *others = cached(*a)  # (step, optimiser, state init)

        def first(*args):
            if not traced:
                traced.append(jax.make_jaxpr(step)(*args).jaxpr)
            return step(*args)

        return first, *others

    monkeypatch.setattr(solve, "_cached_step", tracing)
    result = run()
    monkeypatch.undo()
    return result, traced[0]


def test_precision_modes(model, photo, float32_run, monkeypatch):
    full = float32_run
    half, jaxpr = traced_step(monkeypatch, lambda: restore_short(model, photo, "bfloat16"))
    # The step really computes in bfloat16: every convolution of G and D, forward and
    # backward, among them G's last (to the 64 px RGB image) and D's first (reading it).
    # Only φ stays float32: SR's lanczos2 downsampling (and its transpose), which runs in
    # the target's dtype at HIGHEST precision.
    convs = convolutions(jaxpr)
    phi = [c for c in convs if c[3]]
    assert len(phi) == 2 and {c[0] for c in phi} == {"float32"}, phi
    nets = [c for c in convs if not c[3]]
    assert len(nets) > 20 and {c[0] for c in nets} == {"bfloat16"}, sorted(set(nets))
    assert any(c[2][1:] == (64, 64, 3) for c in nets)  # G's output layer
    assert any(c[1][1:] == (64, 64, 3) for c in nets)  # D's input layer
    # bfloat16 compute changes the result a little, not the picture.
    assert not np.array_equal(half.images, full.images)
    assert half.images.dtype == full.images.dtype == np.float32
    assert half.z.dtype == np.float32
    assert abs(float(half.metrics["psnr"][0]) - float(full.metrics["psnr"][0])) < 1.0
    assert np.abs(np.asarray(half.z) - np.asarray(full.z)).max() < 0.05
    with pytest.raises(ValueError, match="precision must be one of"):
        dgp_jax.restore(model, photo, [1], dgp_jax.SolverConfig.preset("wallpapers_64/SR"),
                        precision="float8")  # fmt: skip


def test_tf32_is_float32_on_a_cpu(model, photo, float32_run):
    # "tf32" leaves matmul precision to the device (TF32 on NVIDIA GPUs); XLA:CPU has none
    # lower than float32, so the run is the float32 run bit for bit (BENCHMARKS.md).
    assert jax.default_backend() == "cpu"
    tf32 = restore_short(model, photo, "tf32")
    np.testing.assert_array_equal(tf32.images, float32_run.images)
    np.testing.assert_array_equal(tf32.z, float32_run.z)
    np.testing.assert_array_equal(tf32.history["ftr"], float32_run.history["ftr"])


def test_cli_uses_the_shipped_model_without_weights(tmp_path):
    out = tmp_path / "out"
    sets = [f"iterations={ITERATIONS}", f"select_num={SELECT_NUM}"]
    args = ["restore", "--task", TASK, str(PHOTO), "--class", str(CLASS), "--out", str(out),
            "--quiet"]  # fmt: skip
    for s in sets:
        args += ["--set", s]
    assert cli.main(args) == 0
    settings = json.loads((out / "config.json").read_text())
    assert settings["run"]["weights"] == str(default_model.DEFAULT_MODEL)
    assert settings["run"]["model"]["n_classes"] == 3
    assert settings["dgp_mode"] == "SR" and settings["select_num"] == SELECT_NUM
    assert runner.default_preset("SR", 64) == "wallpapers_64/SR"
    with open(out / "summary.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "done" and row["class"] == "2"
    assert 5.0 < float(row["psnr"]) < 60.0
    assert (out / "objects_Wine_by_Jakkub_Mede_0_SR.png").is_file()


def test_ablation_table_script_runs(tmp_path):
    table = load_experiment("default_model_table")
    out = tmp_path / "table"
    # One image at a time, with this module's settings: the compiled programs are shared.
    argv = ["--out", str(out), "--limit", "2", "--tasks", TASK, "--iterations", str(ITERATIONS),
            "--select_num", str(SELECT_NUM), "--batch", "1"]  # fmt: skip
    assert table.main(argv) == 0
    record = json.loads((out / "table.json").read_text())
    assert record["classes"] == [0, 0]
    rows = record["table"]["SR"]
    assert list(rows) == ["DGP", "latent only", "MSE only"]
    for row in rows.values():
        assert len(row["psnr_per_image"]) == 2 and row["steps"] == 5 * ITERATIONS
        assert np.isfinite(row["psnr"]) and 0 < row["ssim"] <= 1
    # Same start, other losses: the three results differ.
    assert len({row["psnr"] for row in rows.values()}) == 3
    text = (out / "table.md").read_text()
    assert text.startswith("| task | method | PSNR | SSIM |") and text.count("| SR |") == 3
    assert (out / "sheet.png").is_file()


def test_ablation_table_passes_each_methods_settings(tmp_path, monkeypatch):
    table = load_experiment("default_model_table")
    calls = []

    def fake_restore(model, images, classes, config, keys, *, precision):
        calls.append((config, precision, len(images)))
        n = len(images)
        return SimpleNamespace(
            images=np.zeros((n, 64, 64, 3), np.float32),
            degraded=np.zeros((n, 64, 64, 3), np.float32),
            metrics={"psnr": np.full(n, 20.0), "ssim": np.full(n, 0.5)},
        )

    monkeypatch.setattr(table.dgp_jax, "restore", fake_restore)
    argv = ["--out", str(tmp_path), "--tasks", "colorization", "--batch", "4",
            "--methods", "dgp,latent,mse,dgp_bf16"]  # fmt: skip
    assert table.main(argv) == 0
    base = dgp_jax.SolverConfig.preset("wallpapers_64/colorization")
    # 6 photos in batches of 4: two calls per method.
    assert [(c[1], c[2]) for c in calls] == [("float32", 4), ("float32", 2)] * 3 + [
        ("bfloat16", 4), ("bfloat16", 2)]  # fmt: skip
    dgp, latent, mse, bf16 = (calls[i][0] for i in (0, 2, 4, 6))
    assert dgp == base == bf16
    assert latent == base.replace(update_G=False)
    assert mse.w_D_loss == (0.0,) * 5 and mse.w_mse == (1.0,) * 5
    assert mse.replace(w_D_loss=base.w_D_loss, w_mse=base.w_mse) == base


def test_ablation_table_refuses_unknown_methods_and_tasks(capsys):
    table = load_experiment("default_model_table")
    with pytest.raises(SystemExit) as err:
        table.main(["--out", "unused", "--methods", "dgp,dpg"])
    assert err.value.code == 2 and "--methods: unknown dpg" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        table.main(["--out", "unused", "--tasks", "SR,deblur"])
    assert "--tasks: unknown deblur" in capsys.readouterr().err


def test_a_preset_of_another_size_points_to_this_sizes_preset(model):
    photo = load_image(HELDOUT / "flora_LadyBird_0.png", 64)
    for short, own in (("inpainting", "wallpapers_64/inpainting"),
                       ("colorization", "wallpapers_64/colorization")):  # fmt: skip
        with pytest.raises(ValueError, match=f"128 px models but the model is 64 px: use the "
                                             f"preset {own} for 64 px models"):  # fmt: skip
            dgp_jax.restore(model, photo[None], [0], short, 0)
