"""experiments/imagenet_protocol.py end to end on a fake validation folder, tiny model."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests._compiling import fast_compiles, session_cache_dir
from tests.conftest import load_experiment
from tests.test_runner import tiny_model_files

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO.parent / "shared" / "images" / "imagenet_val"


def _protocol():
    return load_experiment("imagenet_protocol")


@pytest.fixture(autouse=True)
def fast_jax():
    """Cheap XLA optimisation (tests/_compiling.py); main() turns on the session's
    compilation cache itself, and the settings are put back after."""
    with fast_compiles(None):
        yield


@pytest.fixture()
def fake_imagenet(tmp_path) -> tuple[Path, Path]:
    """A validation folder in the class-folder layout, and its list with the real
    classes remapped into the tiny model's 10 (class % 10)."""
    listing = (PHOTOS / "list.txt").read_text().split()
    entries = [(n, int(c)) for n, c in zip(listing[::2], listing[1::2], strict=True)]
    entries = [(n, c) for n, c in entries if (PHOTOS / n).is_file() and c >= 0][:3]
    val = tmp_path / "val"
    for i, (name, _) in enumerate(entries):
        folder = val / f"n{i:08d}"  # synset-style subfolders, as some copies have
        folder.mkdir(parents=True)
        shutil.copy(PHOTOS / name, folder / name)
    lst = tmp_path / "val_list.txt"
    lst.write_text("".join(f"{n} {c % 10}\n" for n, c in entries))
    return val, lst


def test_protocol_end_to_end(tmp_path, tmp_path_factory, fake_imagenet, capsys):
    val, lst = fake_imagenet
    weights = tiny_model_files(tmp_path_factory)["pth"]
    out = tmp_path / "protocol"
    fast = ["--set", "iterations=1", "--set", "select_num=1", "--set", "resolution=none"]
    argv = ["--weights", str(weights), "--imagenet-dir", str(val), "--list", str(lst),
            "--out", str(out), "--limit", "2", "--batch", "2", "--quiet",
            "--cache-dir", str(session_cache_dir(tmp_path_factory)), *fast]  # fmt: skip
    assert _protocol().main(argv) == 0
    printed = capsys.readouterr().out
    tasks = ["reconstruction", "colorization", "inpainting", "SR_D_biased", "SR_MSE_biased"]
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["task"] for r in rows] == tasks
    for r in rows:
        assert (r["done"], r["total"], r["failed"]) == ("2", "2", "0")
        assert all(float(r[k]) == float(r[k]) for k in ("psnr", "ssim", "mse", "l1"))  # no NaN
    table = (out / "table.md").read_text()
    assert table.startswith("| task | images | PSNR | SSIM | MSE | L1 |")
    assert "| SR_MSE_biased | 2/2 |" in table and table in printed
    # Each task ran its published preset (dgp_mode and schedule) with the overrides.
    config = json.loads((out / "SR_MSE_biased" / "config.json").read_text())
    assert config["dgp_mode"] == "SR" and config["iterations"] == [1] * 5
    sr_d = json.loads((out / "SR_D_biased" / "config.json").read_text())
    assert sr_d["w_mse"] != config["w_mse"]  # the two biases differ in their loss weights
    inpaint = json.loads((out / "inpainting" / "summary.json").read_text())
    assert all(r["metrics_region"] == "centre hole" for r in inpaint["images"].values())
    # The list's classes reached the solver.
    recon = json.loads((out / "reconstruction" / "summary.json").read_text())
    classes = [int(line.split()[1]) for line in lst.read_text().splitlines()[:2]]
    assert [r["class"] for r in recon["images"].values()] == classes

    # Rerun: everything is done already, the table is rewritten from the markers.
    assert _protocol().main(argv) == 0
    assert (out / "table.md").read_text() == table


def test_protocol_says_when_tfds_is_missing(tmp_path, monkeypatch, fake_imagenet):
    _, lst = fake_imagenet
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    argv = ["--weights", "unused", "--tfds-manual-dir", str(tmp_path), "--list", str(lst),
            "--out", str(tmp_path / "o")]  # fmt: skip
    with pytest.raises(SystemExit, match="needs tensorflow-datasets.*not installed"):
        _protocol().main(argv)
    with pytest.raises(SystemExit, match="unknown tasks"):
        _protocol().main(["--weights", "unused", "--imagenet-dir", str(tmp_path), "--list",
                          str(lst), "--out", str(tmp_path / "o"), "--tasks", "deblur"])  # fmt: skip
