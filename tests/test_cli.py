"""The dgp-jax command line on a converted fixture model."""

import json

import numpy as np
from PIL import Image

from dgp_jax import cli
from dgp_jax.pth import read_state_dict
from tests.conftest import fixture_path


def test_convert_export_and_restore(tmp_path, capsys):
    ckpt = tmp_path / "biggan"
    g, d = fixture_path("G_ema_128_ch8_f64.pth"), fixture_path("D_128_ch8_f64.pth")
    assert cli.main(["convert", str(g), str(d), "--out", str(ckpt)]) == 0
    assert '"G_ch": 8' in capsys.readouterr().out
    # A second convert into the same folder is refused (nothing is overwritten).
    assert cli.main(["convert", str(g), str(d), "--out", str(ckpt)]) == 2
    assert "exists" in capsys.readouterr().err

    assert cli.main(["export", str(ckpt), "--generator", str(tmp_path / "G.pth")]) == 0
    original, exported = read_state_dict(g), read_state_dict(tmp_path / "G.pth")
    assert list(original) == list(exported)
    assert all(np.array_equal(original[k], exported[k]) for k in original)

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(photos / "a.png")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    code = cli.main(["restore", "--weights", str(ckpt), "--task", "colorization", str(photos),
                     "--out", str(out), "--set", "iterations=1,1,1,1,1", "--set", "select_num=2",
                     "--class", "3"])  # fmt: skip
    assert code == 1  # one input failed
    assert "broken.jpg" in capsys.readouterr().err
    assert (out / "a_colorization.png").is_file() and (out / "a_colorization_sheet.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["a"]["class"] == 3 and np.isfinite(summary["a"]["psnr"])
    assert json.loads((out / "config.json").read_text())["iterations"] == [1, 1, 1, 1, 1]
