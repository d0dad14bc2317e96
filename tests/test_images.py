"""Loading images and masks: every PIL mode, EXIF, bad files, bombs, small images."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dgp_jax import images
from dgp_jax.images import (
    ImageError,
    load_image,
    load_image_with_size,
    load_mask,
    read_image,
)

RES = 16


def _photo(w: int = 40, h: int = 30) -> Image.Image:
    """A smooth RGB test picture (no JPEG surprises from noise)."""
    x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    rgb = np.stack([x, y, 255 - (x + y) / 2], -1).astype(np.uint8)
    return Image.fromarray(rgb)


def _expected(path, res: int = RES) -> np.ndarray:
    """What the reference does: RGB, centre crop, bilinear resize, [-1, 1]."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    w, h = rgb.size
    s = min(w, h)
    left, top = int(round((w - s) / 2)), int(round((h - s) / 2))
    out = rgb.crop((left, top, left + s, top + s)).resize((res, res), Image.BILINEAR)
    return np.asarray(out, np.float64) / 255 * 2 - 1


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but holds none (a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "mode,fmt",
    [("RGB", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("RGBA", "PNG"),
     ("I;16", "PNG"), ("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG")],
)  # fmt: skip
def test_every_mode_loads_as_the_reference_converts_it(tmp_path, mode, fmt):
    photo = _photo()
    if mode == "I;16":
        im = Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 3).convert("I;16")
    elif mode == "RGBA":
        im = photo.convert("RGBA")
        im.putalpha(Image.fromarray(np.full((30, 40), 80, np.uint8)))
    else:
        im = photo.convert(mode)
    path = tmp_path / f"x_{mode.replace(';', '')}.{fmt.lower()}"
    im.save(path, format=fmt)
    with Image.open(path) as check:
        assert check.mode == mode  # the file really is in that mode
    if mode == "I;16":  # values above 255: clipped, and said so
        with pytest.warns(images.ClippedImageWarning, match="16-bit grayscale"):
            x = load_image(path, RES)
    else:
        x = load_image(path, RES)
    assert x.shape == (RES, RES, 3) and x.dtype == np.float64
    np.testing.assert_array_equal(x, _expected(path))


def test_16_bit_grayscale_is_clipped_not_scaled(tmp_path):
    # PIL's (and so the reference's) convert('RGB') clips I;16 to 0..255: a 16-bit photo
    # with values in the thousands loads as white. Documented in dgp_jax.images.
    values = np.array([[0, 100, 255, 256, 1000, 65535]], np.uint16).repeat(6, 0)
    path = tmp_path / "sixteen.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"
        assert np.asarray(im.convert("RGB"))[0, :, 0].tolist() == [0, 100, 255, 255, 255, 255]
    # ... and a run time warning says so, with the share of clipped pixels (256 and up).
    with pytest.warns(images.ClippedImageWarning, match=r"sixteen.png is a 16-bit grayscale "
                      r"image: it is clipped to 0..255, not scaled .* so 50% of it"):  # fmt: skip
        x = load_image(path, 6)
    assert np.all(x[:, 3:] == 1.0)  # everything >= 255 is white


def test_exif_orientation_is_applied(tmp_path):
    photo = _photo(40, 20)  # landscape pixels ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... shown rotated 90 degrees clockwise: portrait
    path = tmp_path / "rotated.jpg"
    photo.save(path, exif=exif, quality=95)
    x, size = load_image_with_size(path, RES)
    assert size == (20, 40)
    with Image.open(path) as im:
        upright = im.transpose(Image.Transpose.ROTATE_270).convert("RGB")
    upright.save(tmp_path / "upright.png")
    np.testing.assert_array_equal(x, _expected(tmp_path / "upright.png"))
    # At its own size (dgp-jax evaluate's reader): upright too, not cropped or resized.
    full = read_image(path)
    assert full.shape == (40, 20, 3)
    np.testing.assert_array_equal(full, np.asarray(upright, np.float64) / 255 * 2 - 1)


def test_image_smaller_than_the_model_is_upsampled(tmp_path):
    path = tmp_path / "tiny.png"
    _photo(7, 5).save(path)
    x, size = load_image_with_size(path, 32)
    assert size == (7, 5) and x.shape == (32, 32, 3)
    np.testing.assert_array_equal(x, _expected(path, 32))


@pytest.mark.parametrize("kind", ["corrupt", "truncated_jpeg", "truncated_png", "empty",
                                  "text"])  # fmt: skip
def test_unreadable_files_name_the_file(tmp_path, kind):
    good = tmp_path / "good.jpg"
    _photo(200, 150).save(good, quality=95)
    png = tmp_path / "good.png"
    _photo(200, 150).save(png)
    data = {
        "corrupt": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
        "truncated_jpeg": good.read_bytes()[: good.stat().st_size // 2],
        "truncated_png": png.read_bytes()[: png.stat().st_size // 2],
        "empty": b"",
        "text": b"these are not the pixels you are looking for\n",
    }[kind]
    path = tmp_path / f"bad_{kind}.png"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=f"bad_{kind}.png"):
        load_image(path, RES)
    with pytest.raises(ImageError, match=f"bad_{kind}.png"):
        read_image(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png", RES)
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(FileNotFoundError, match=r"dir\.png is a folder, not an image file$"):
        load_image(tmp_path / "dir.png", RES)


@pytest.mark.parametrize("width,height", [(10_000, 9_000), (100_000, 100_000)])
def test_decompression_bomb_is_refused_from_the_header(tmp_path, width, height):
    # 90 M pixels is within PIL's warning band (its error starts at 2x its limit); 10 G is
    # past it, where PIL raises inside open(). Both get our message with the limit, and no
    # pixel memory is ever allocated: the file is 57 bytes.
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(width, height))
    assert width * height > images.MAX_PIXELS
    with pytest.raises(ImageError, match=rf"bomb\.png.*over the limit of {images.MAX_PIXELS}"):
        load_image(path, RES)
    with pytest.raises(ImageError, match=str(images.MAX_PIXELS)):
        load_mask(path, RES)


def test_mask_keep_white_black_and_wrong_size(tmp_path):
    pixels = np.zeros((RES, RES), np.uint8)
    pixels[:, : RES // 2] = 255
    path = tmp_path / "mask.png"
    Image.fromarray(pixels).convert("RGBA").save(path)  # any mode is read as gray
    white = load_mask(path, RES)
    assert white.shape == (RES, RES, 1)
    assert white[:, : RES // 2].min() == 1 and white[:, RES // 2 :].max() == 0
    np.testing.assert_array_equal(load_mask(path, RES, keep="black"), 1 - white)
    with pytest.raises(ImageError, match=r"mask\.png is 16x16 .* works at 32x32"):
        load_mask(path, 32)
    with pytest.raises(ValueError, match="keep"):
        load_mask(path, RES, keep="gray")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(FileNotFoundError, match=r"folder\.png is a folder, not a mask file$"):
        load_mask(tmp_path / "folder.png", RES)
    with pytest.raises(FileNotFoundError, match=r"folder\.png is a folder, not an image file$"):
        load_image(tmp_path / "folder.png", RES)
    with pytest.raises(FileNotFoundError, match=r"^no mask file at .*nothing\.png$"):
        load_mask(tmp_path / "nothing.png", RES)
    Image.fromarray(np.full((RES, RES), 255, np.uint8)).save(path)
    with pytest.raises(ImageError, match=r"mask .*mask\.png has no hole: every pixel is kept "
                       r"\(keep='white'\)"):  # fmt: skip
        load_mask(path, RES)
    assert load_mask(path, RES, keep="black").max() == 0  # all hole: generation, allowed
    # read_mask takes any size (evaluate's masks match their results, not the model)
    wide = np.zeros((RES, 2 * RES), np.uint8)
    wide[0, 0] = 128  # the threshold is kept as white
    Image.fromarray(wide).save(tmp_path / "wide.png")
    mask = images.read_mask(tmp_path / "wide.png")
    assert mask.shape == (RES, 2 * RES, 1) and mask.sum() == 1 and mask[0, 0, 0] == 1
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match=r"mask .*bad\.png is not a readable image"):
        images.read_mask(tmp_path / "bad.png")


def test_save_is_atomic_and_reference_rounding(tmp_path, monkeypatch):
    x = np.array([[[-1.0, 0.0, 1.0]]]).repeat(2, 0).repeat(2, 1)
    path = tmp_path / "out.png"
    images.save_image(x, path)
    assert np.asarray(Image.open(path))[0, 0].tolist() == [0, 127, 255]  # truncating
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temp file left
    # Interrupted mid-write (a full disk, a kill): the previous file stays whole and no
    # temp file is left.
    before = path.read_bytes()
    real_write = type(path).write_bytes

    def half_write(self, data):
        real_write(self, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(path), "write_bytes", half_write)
    with pytest.raises(OSError, match="No space left"):
        images.save_image(-x, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    # what would be written wrongly is refused, nothing written: a batch, 0..255 values
    # (white), uint8, a suffix the PNG bytes would not match
    for bad, says in ((x[None], r"must be \(H, W, 3\), got shape \(1, 2, 2, 3\)"),
                      (x * 127.5 + 127.5, r"write must be in \[-1, 1\], got values in \[0, 255"),
                      (np.zeros((2, 2, 3), np.uint8), r"floating point .*, got dtype uint8"),
                      (x[..., :2], r"got shape \(2, 2, 2\)")):  # fmt: skip
        with pytest.raises(ValueError, match=says):
            images.save_image(bad, tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"bad.bmp: images are written as .png or .jpg/.jpeg"):
        images.save_image(x, tmp_path / "bad.bmp")
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    with pytest.raises(ValueError, match="resolution must be an integer >= 1, got 32.5"):
        images.load_image(path, 32.5)


def test_read_inputs_list_folder_and_grid(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "notes.md").write_text("skip me")
    (tmp_path / "list.txt").write_text("# file class\na.png 3\n\nsub/b.jpg\n  # x y z\nc.png -1\n")
    entries = images.read_inputs([str(tmp_path / "list.txt"), str(tmp_path)])
    # The folder's own list file gives its images' classes (a.png: 3).
    assert [(p.name, c) for p, c in entries] == [("a.png", 3), ("b.jpg", -1), ("c.png", -1),
                                                  ("a.png", 3)]  # fmt: skip
    (tmp_path / "d.png").write_bytes(b"")  # not listed: unknown
    assert [(p.name, c) for p, c in images.read_inputs([str(tmp_path)])] == [
        ("a.png", 3), ("d.png", -1)]  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"no input file or folder at .*nope.png"):
        images.read_inputs([str(tmp_path / "nope.png")])
    (tmp_path / "other.txt").write_text("a.png 4\n")
    with pytest.raises(ValueError, match=r"other.txt: class 4 for .*a.png, but another list"):
        images.read_inputs([str(tmp_path)])
    (tmp_path / "other.txt").unlink()
    (tmp_path / "bad.txt").write_text("a.png cat\n")
    with pytest.raises(ValueError, match=r"bad.txt:1"):
        images.read_inputs([str(tmp_path / "bad.txt")])
    tile = np.zeros((2, 2, 3))
    assert images.image_grid([[tile, tile], [tile]]).shape == (4, 4, 3)


def test_quickstart_sheet_is_labelled_and_enlarged(tmp_path):
    from tests.conftest import load_experiment

    sheet_script = load_experiment("quickstart_sheet")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 30, 3), 90, np.uint8)).save(photo)
    for k, task in enumerate(sheet_script.TASKS):
        run = tmp_path / "out" / task
        run.mkdir(parents=True)
        for suffix, value in (("", 40 * k), ("_degraded", 200)):
            Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(
                run / f"photo_{task}{suffix}.png")  # fmt: skip
        (run / "summary.csv").write_text(f"name,input,status,psnr\nphoto,{photo},done,1{k}.5\n")
    out = tmp_path / "sheet.png"
    assert sheet_script.main([str(tmp_path / "out"), "--out", str(out)]) == 0
    with Image.open(out) as im:
        sheet = np.asarray(im.convert("RGB"))
    # 7 tiles of 32 px shown at 128 px, 4 px apart, under a label band.
    assert sheet.shape[1] == 7 * 132 + 4 and sheet.shape[0] > 132
    band = sheet.shape[0] - 132
    for k in range(7):
        assert (sheet[:band, 4 + k * 132 : 4 + k * 132 + 128] < 128).any()  # labelled
    tile = sheet[band : band + 128, 4 + 2 * 132 : 4 + 2 * 132 + 128]  # colorization's result
    assert (tile == 0).all()
