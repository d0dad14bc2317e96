"""experiments/prepare_wallpapers.py on a hand-made Debian package (no network), and the
photo table it ships with."""

from __future__ import annotations

import io
import json
import lzma
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import load_experiment

REPO = Path(__file__).resolve().parents[1]


def _module():
    return load_experiment("prepare_wallpapers")


def _ar_member(name: str, data: bytes) -> bytes:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
    return header + data + (b"\n" if len(data) % 2 else b"")


def make_deb(path: Path, files: dict[str, bytes]) -> None:
    """A .deb as dpkg writes it: ar(debian-binary, control.tar.xz, data.tar.xz)."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo("." + name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    data = lzma.compress(tar_bytes.getvalue(), format=lzma.FORMAT_XZ)
    path.write_bytes(
        b"!<arch>\n" + _ar_member("debian-binary", b"2.0\n")
        + _ar_member("control.tar.xz", lzma.compress(b""))
        + _ar_member("data.tar.xz/", data)
    )  # fmt: skip


def _jpeg(color, size=(120, 90)) -> bytes:
    x = np.linspace(0, 1, size[0])[None, :, None] * np.asarray(color)[None, None, :]
    arr = np.broadcast_to(x, (size[1], size[0], 3)) * 255
    out = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(out, "JPEG")
    return out.getvalue()


def test_photo_table_is_complete():
    mod = _module()
    assert len(mod.PHOTOS) == 38
    assert {p[0] for p in mod.PHOTOS} == set(mod.PACKAGES)
    for cls in mod.CLASSES:
        held = [p for p in mod.PHOTOS if p[2] == cls and p[3] == "heldout"]
        train = [p for p in mod.PHOTOS if p[2] == cls and p[3] == "train"]
        assert len(held) == 2 and len(train) >= 10, cls
    assert all(p[4] and p[5] for p in mod.PHOTOS)  # author and licence named
    assert len({p[1] for p in mod.PHOTOS}) == 38  # no photo twice


def test_prepare_from_local_debs(tmp_path, monkeypatch):
    mod = _module()
    # Two photos per class, one of them held out, in a fake package.
    photos = [
        ("fake-wallpapers", f"/usr/share/backgrounds/{cls}{i}.jpg", cls, split, "A. Author",
         "CC0-1.0")
        for cls in mod.CLASSES for i, split in enumerate(("train", "heldout"))
    ]  # fmt: skip
    monkeypatch.setattr(mod, "PHOTOS", photos)
    monkeypatch.setattr(mod, "PACKAGES", {"fake-wallpapers": "1.0"})
    debs = tmp_path / "debs"
    debs.mkdir()
    make_deb(
        debs / "fake-wallpapers_1.0_all.deb",
        {path: _jpeg((k % 3 == 0, k % 3 == 1, 1)) for k, (_, path, *_) in enumerate(photos)},
    )
    out = tmp_path / "data"
    argv = ["--out", str(out), "--debs", str(debs), "--crops", "5", "--crop_size", "24",
            "--resolution", "16", "--heldout_crops", "2"]  # fmt: skip
    assert mod.main(argv) == 0
    for cls in mod.CLASSES:
        crops = sorted((out / "train" / cls).glob("*.png"))
        assert [c.name for c in crops] == [f"{cls}0_{k:03d}.png" for k in range(5)]
        assert Image.open(crops[0]).size == (24, 24)
    held = sorted(p.name for p in (out / "heldout").glob("*.png"))
    assert held == sorted(f"{c}_{c}1_{k}.png" for c in mod.CLASSES for k in range(2))
    assert Image.open(out / "heldout" / held[0]).size == (16, 16)
    record = json.loads((out / "DATA.json").read_text())
    assert record["counts"]["train"] == {c: 5 for c in mod.CLASSES}
    assert len(record["packages"]["fake-wallpapers"]["sha256"]) == 64
    # Same arguments, same crops.
    first = (out / "train" / "flora" / "flora0_003.png").read_bytes()
    assert mod.main(argv) == 0
    assert (out / "train" / "flora" / "flora0_003.png").read_bytes() == first


def test_missing_photo_in_package_is_named(tmp_path, monkeypatch):
    mod = _module()
    make_deb(tmp_path / "p.deb", {"/usr/share/a.jpg": _jpeg((1, 0, 0))})
    with pytest.raises(SystemExit, match=r"p\.deb: missing \['/usr/share/b\.jpg'\]"):
        mod.deb_members(tmp_path / "p.deb", {"/usr/share/a.jpg", "/usr/share/b.jpg"})
    (tmp_path / "q.deb").write_bytes(b"PK\x03\x04 not an ar archive")
    with pytest.raises(SystemExit, match=r"q\.deb: not a Debian package"):
        mod.deb_members(tmp_path / "q.deb", {"/x"})
