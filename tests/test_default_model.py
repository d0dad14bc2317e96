"""The model shipped in the package: its files and record, a real restoration of a held-out
photo with it, and the CLI using it when no --weights is given."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgp_jax
from dgp_jax import cli, default_model, runner
from dgp_jax.images import load_image
from dgp_jax.nets.biggan import BigGANConfig
from dgp_jax.pth import read_state_dict
from tests.conftest import load_experiment
from tests.test_runner import fast_compiles, session_cache_dir

REPO = Path(__file__).resolve().parents[1]
HELDOUT = REPO / "examples" / "heldout"
# Few steps of the shipped schedule: enough to see the loss fall, cheap enough for CI.
SHORT = {"iterations": (3, 3, 3, 3, 3), "select_num": 6}


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    path = session_cache_dir(tmp_path_factory)
    with fast_compiles(path):
        yield path


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


def test_shipped_model_restores_a_heldout_photo(model):
    photo = load_image(HELDOUT / "flora_LadyBird_0.png", 64)[None]
    config = dgp_jax.SolverConfig.preset("wallpapers_64/inpainting", **SHORT)
    result = dgp_jax.restore(model, photo, [0], config, jax.random.PRNGKey(0))
    assert result.images.shape == (1, 64, 64, 3)
    assert np.isfinite(np.asarray(result.images)).all()
    mse = result.history["mse"][:, 0]
    assert mse.shape == (15,)
    # Fitting the observation: the masked MSE falls over the run.
    assert mse[-1] < 0.8 * mse[0], mse
    assert set(result.metrics) == {"psnr", "ssim", "mse", "l1"}
    assert np.isfinite(result.metrics["psnr"]).all()


def test_precision_modes(model):
    photo = load_image(HELDOUT / "landscape_EveningGlow_0.png", 64)[None]
    config = dgp_jax.SolverConfig.preset("wallpapers_64/SR", iterations=(2, 2, 2, 2, 2),
                                         select_num=4)  # fmt: skip

    def run(precision):
        return dgp_jax.restore(model, photo, [1], config, jax.random.PRNGKey(3),
                               precision=precision)  # fmt: skip

    full, tf32, half = run("float32"), run("tf32"), run("bfloat16")
    if jax.default_backend() == "cpu":  # no TensorFloat-32 there: the same numbers
        np.testing.assert_array_equal(tf32.images, full.images)
    # bfloat16 compute changes the result a little, not the picture.
    assert not np.array_equal(half.images, full.images)
    assert half.images.dtype == full.images.dtype == np.float32
    assert abs(float(half.metrics["psnr"][0]) - float(full.metrics["psnr"][0])) < 1.0
    assert np.abs(np.asarray(half.z) - np.asarray(full.z)).max() < 0.05
    with pytest.raises(ValueError, match="precision must be one of"):
        dgp_jax.restore(model, photo, [1], config, precision="float8")


def test_cli_uses_the_shipped_model_without_weights(tmp_path, compilation_cache, monkeypatch):
    monkeypatch.setenv("DGP_JAX_CACHE", str(compilation_cache))
    out = tmp_path / "out"
    sets = [f"iterations={SHORT['iterations'][0]}", f"select_num={SHORT['select_num']}"]
    args = ["restore", "--task", "SR", str(HELDOUT / "objects_Wine_by_Jakkub_Mede_0.png"),
            "--class", "2", "--out", str(out), "--quiet"]  # fmt: skip
    for s in sets:
        args += ["--set", s]
    assert cli.main(args) == 0
    settings = json.loads((out / "config.json").read_text())
    assert settings["run"]["weights"] == str(default_model.DEFAULT_MODEL)
    assert settings["run"]["model"]["n_classes"] == 3
    assert settings["dgp_mode"] == "SR" and settings["select_num"] == SHORT["select_num"]
    assert runner.default_preset("SR", 64) == "wallpapers_64/SR"
    with open(out / "summary.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "done" and row["class"] == "2"
    assert 5.0 < float(row["psnr"]) < 60.0
    assert (out / "objects_Wine_by_Jakkub_Mede_0_SR.png").is_file()


def test_ablation_table_script_runs(tmp_path):
    table = load_experiment("default_model_table")
    out = tmp_path / "table"
    argv = ["--out", str(out), "--limit", "2", "--tasks", "SR", "--iterations", "1",
            "--select_num", "2", "--batch", "2"]  # fmt: skip
    assert table.main(argv) == 0
    record = json.loads((out / "table.json").read_text())
    assert record["classes"] == [0, 0]
    rows = record["table"]["SR"]
    assert list(rows) == ["DGP", "latent only", "MSE only"]
    for row in rows.values():
        assert len(row["psnr_per_image"]) == 2 and row["steps"] == 5
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
