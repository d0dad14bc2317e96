"""Free-form masks (Co-Mod-GAN's generator, hole-ratio buckets, ``dgp-jax masks``) and the
inpainting metrics for any mask (dgp_jax.metrics.inpainting)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dgp_jax import masks
from dgp_jax.cli import main as cli_main
from dgp_jax.degradations import center_mask
from dgp_jax.images import load_mask
from dgp_jax.metrics import registry, restoration_metrics
from dgp_jax.metrics.inpainting import (
    aot_gan_metrics,
    composite_uint8,
    hole_metrics,
    hole_psnr,
    hole_ssim,
    original_uint8,
    ssim_region,
)

FIXTURE = Path(__file__).parent / "fixtures" / "masks" / "comodgan_random_mask.npz"


def comodgan_cases():
    data = np.load(FIXTURE)  # made by tests/fixtures/make_masks.py; missing = failure
    for case in data["cases"]:
        size = int(data[f"{case}_size"])
        bits = np.unpackbits(data[f"{case}_bits"], axis=-1)[..., :size]
        yield (str(case), int(data[f"{case}_seed"]), size,
               tuple(data[f"{case}_range"].tolist()), bits.astype(np.float32))  # fmt: skip


def test_random_mask_is_co_mod_gans_bit_for_bit():
    cases = list(comodgan_cases())
    assert len(cases) == 10
    for name, seed, size, hole_range, expected in cases:
        # Consecutive calls on one stream, as the original's after np.random.seed(seed).
        rng = np.random.RandomState(seed)
        got = np.stack([masks.random_mask(size, hole_range, rng) for _ in expected])
        assert got.dtype == np.float32 and got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected, err_msg=name)
        ratios = masks.hole_ratio(got)
        assert np.all((ratios > hole_range[0]) & (ratios < hole_range[1])), name


def test_random_mask_refuses_what_the_original_cannot_draw():
    rng = np.random.RandomState(0)
    with pytest.raises(ValueError, match=r"low \+ high >= 0.2"):
        masks.random_mask(64, (0.0, 0.1), rng)
    with pytest.raises(ValueError, match="0 <= low < high <= 1"):
        masks.random_mask(64, (0.5, 0.4), rng)
    with pytest.raises(TypeError, match="RandomState"):
        masks.random_mask(64, (0, 1), np.random.default_rng(0))
    with pytest.raises(ValueError, match="size must be an integer"):
        masks.random_mask(1, (0, 1), rng)


def test_ranges_no_mask_can_reach_are_refused_rather_than_drawn_forever(monkeypatch):
    """The original redraws until the hole ratio falls inside the range, forever if no
    mask of that size can: such a range is named at once, and a range too narrow to hit
    ends after MAX_DRAWS draws."""
    rng = np.random.RandomState(0)
    unreachable = r"no 3x3 mask has a hole ratio strictly between 0.3 and 0.32 \(ratios are "
    with pytest.raises(ValueError, match=unreachable + r"multiples of 1/9\)"):
        masks.random_mask(3, (0.3, 0.32), rng)
    with pytest.raises(ValueError, match="no 4x4 mask has a hole ratio strictly between 0.01"):
        masks.bucket_masks(4, masks.parse_buckets("1-2")[0], 1)
    with pytest.raises(
        ValueError,
        match=r"mask values must be finite and in \[0, 1\] \(1 = keep, 0 = hole\), "
        r"got \[0, 255\] \(a 0/255 mask: divide it by 255\)",
    ):
        masks.hole_ratio(np.array([[0, 255], [255, 255]], np.uint8))
    with pytest.raises(TypeError, match="buckets must be text such as '0-10,10-20'"):
        masks.parse_buckets(None)
    with pytest.raises(ValueError, match="count must be an integer >= 0, got 2.5"):
        masks.bucket_masks(32, masks.parse_buckets("10-20")[0], 2.5)
    monkeypatch.setattr(masks, "MAX_DRAWS", 3)
    with pytest.raises(RuntimeError, match="between 0.5 and 0.5005 in 3 draws"):
        masks.random_mask(64, (0.5, 0.5005), rng)  # k = 2049 of 4096 pixels would do
    # bucket_masks filters random_mask's draws (from a wider range for buckets below the
    # generator's smallest): here every draw misses the bucket
    monkeypatch.setattr(masks, "random_mask", lambda size, *_: np.ones((size, size), np.float32))
    with pytest.raises(RuntimeError, match=r"bucket 10-20: no 64x64 mask in it in 3 draws"):
        masks.bucket_masks(64, masks.parse_buckets("10-20")[0], 1)


def test_bucket_sets_parse_and_every_mask_lies_in_its_bucket():
    aot = masks.parse_buckets("aot-gan")
    assert [(b.low, b.high) for b in aot] == [(0.0, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.4),
                                              (0.4, 0.5), (0.5, 0.6)]  # fmt: skip
    assert masks.parse_buckets("pconv") == aot
    comod = masks.parse_buckets("co-mod-gan")
    assert [(b.low, b.high) for b in comod] == [(0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8),
                                                (0.8, 1.0)]  # fmt: skip
    for bucket in aot + comod:
        drawn = masks.bucket_masks(64, bucket, 2, seed=5)
        assert drawn.shape == (2, 64, 64) and drawn.dtype == np.float32
        assert set(np.unique(drawn)) <= {0.0, 1.0}
        ratios = masks.hole_ratio(drawn)
        assert np.all((ratios > bucket.low) & (ratios < bucket.high)), (bucket.name, ratios)
    # Same seed, same masks; more masks extend the list; a bucket does not depend on others.
    b = aot[3]
    np.testing.assert_array_equal(
        masks.bucket_masks(64, b, 2, 5), masks.bucket_masks(64, b, 3, 5)[:2]
    )
    assert not np.array_equal(masks.bucket_masks(64, b, 2, 5), masks.bucket_masks(64, b, 2, 6))
    # 0-10 %: the original's range [0, 0.1] fails (randint(0)); drawn from [0, 0.2], filtered.
    np.testing.assert_array_equal(
        masks.bucket_masks(64, aot[0], 1, 5)[0], _first_below(64, 0.1, [5, 0, 1000])
    )
    for bad, message in [("10", "not 'low-high'"), ("20-10", "0 <= low < high"),
                         ("0-10,0-10", "twice"), ("", "no buckets")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            masks.parse_buckets(bad)


def _first_below(size, high, seed_words):
    rng = np.random.RandomState(seed_words)
    while True:
        mask = masks.random_mask(size, (0.0, 0.2), rng)
        if masks.hole_ratio(mask) < high:
            return mask


def test_a_masks_run_stopped_by_sigterm_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    """SIGTERM while the PNGs are written: exit 130, no partial set at --out and no temp
    folder beside it (a rerun would have refused the partial set as "not empty"), and the
    process's SIGTERM handler is restored afterwards."""
    import os
    import signal

    real_save = Image.Image.save
    saved = []

    def save_then_sigterm(self, path, *args, **kwargs):
        real_save(self, path, *args, **kwargs)
        saved.append(path)
        if len(saved) == 2:  # the second of four files
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Image.Image, "save", save_then_sigterm)
    before = signal.getsignal(signal.SIGTERM)
    argv = ["masks", "--size", "32", "--buckets", "0-10,20-40", "--per-bucket", "2",
            "--out", str(tmp_path / "m")]  # fmt: skip
    assert cli_main(argv) == 130
    assert capsys.readouterr().err == "dgp-jax masks: interrupted\n"
    assert len(saved) == 2 and list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before
    monkeypatch.undo()
    assert cli_main(argv) == 0 and len(list((tmp_path / "m").glob("*/*.png"))) == 4


def test_masks_command_writes_the_buckets_as_pngs(tmp_path, capsys):
    argv = ["masks", "--size", "32", "--buckets", "0-10,20-40", "--per-bucket", "2",
            "--seed", "3", "--out"]  # fmt: skip
    assert cli_main(argv + [str(tmp_path / "a")]) == 0
    assert cli_main(argv + [str(tmp_path / "b")]) == 0
    record = json.loads((tmp_path / "a" / "masks.json").read_text())
    assert list(record["buckets"]) == ["0-10", "20-40"] and record["size"] == 32
    for bucket in masks.parse_buckets("0-10,20-40"):
        expected = masks.bucket_masks(32, bucket, 2, 3)
        for i, entry in enumerate(record["buckets"][bucket.name]["masks"]):
            path = tmp_path / "a" / entry["file"]
            assert path.read_bytes() == (tmp_path / "b" / entry["file"]).read_bytes()
            assert np.asarray(Image.open(path)).dtype == np.uint8
            # White = keep, as dgp-jax restore --mask reads it.
            np.testing.assert_array_equal(load_mask(path, 32)[..., 0], expected[i])
            assert entry["hole_ratio"] == pytest.approx(masks.hole_ratio(expected[i]), abs=0)
            assert bucket.low < entry["hole_ratio"] < bucket.high
    assert "20-40: 2 masks" in capsys.readouterr().out
    refused = [
        (["--size", "32", "--buckets", "5", "--per-bucket", "1"], "--buckets: bucket '5'"),
        (["--size", "7", "--buckets", "0-10", "--per-bucket", "1"],
         "--size must be at least 8 pixels, got 7"),
        (["--size", "32", "--buckets", "0-10", "--per-bucket", "0"],
         "--per-bucket must be at least 1, got 0"),
        # a bucket no 8x8 mask can reach, after one that is drawn: nothing written either
        (["--size", "8", "--buckets", "0-10,99-100", "--per-bucket", "1"],
         "dgp-jax masks: error: no 8x8 mask has a hole ratio strictly between 0.99 and 1.0 "
         "(ratios are multiples of 1/64): widen the range or enlarge the mask\n"),
    ]  # fmt: skip
    for args, message in refused:
        assert cli_main(["masks", *args, "--out", str(tmp_path / "c")]) == 2, args
        assert message in capsys.readouterr().err, args
        assert not (tmp_path / "c").exists(), args  # refused before any folder is made
    # A bucket missed MAX_DRAWS times in a row (here: every draw of 20-40) is a setup error
    # too, exit 2 with no traceback and no folder, although 0-10 was drawn.
    real_bucket_masks = masks.bucket_masks

    def missing_20_40(size, bucket, count, seed=0):
        if bucket.name == "20-40":
            raise RuntimeError(f"bucket {bucket.name}: no {size}x{size} mask in it in 3 draws; "
                               "widen it or enlarge the masks")  # fmt: skip
        return real_bucket_masks(size, bucket, count, seed)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(masks, "bucket_masks", missing_20_40)
        assert cli_main(argv + [str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err == (
        "dgp-jax masks: error: --buckets: bucket 20-40: no 32x32 mask in it in 3 draws; "
        "widen it or enlarge the masks\n"
    )
    assert not (tmp_path / "c").exists()
    # Another set into a folder that holds one would overwrite its masks.json: refused.
    before = (tmp_path / "a" / "masks.json").read_bytes()
    assert cli_main(["masks", "--size", "32", "--buckets", "0-10", "--per-bucket", "1",
                     "--seed", "4", "--out", str(tmp_path / "a")]) == 2  # fmt: skip
    assert f"--out {tmp_path / 'a'} is not empty: choose a new folder" in capsys.readouterr().err
    assert (tmp_path / "a" / "masks.json").read_bytes() == before


# --------------------------------------------------------------------------- metrics
def hand_made_case():
    """A 20x20 L-shaped hole; the original is 0.2 (on [0, 1]: level 51) everywhere, the
    result 0.3 in the hole and noise outside it."""
    hole = np.zeros((20, 20), bool)
    hole[2:14, 2:10] = True  # vertical arm: rows 2-13, columns 2-9
    hole[10:18, 2:18] = True  # horizontal arm: rows 10-17, columns 2-17
    original = np.full((20, 20, 3), 0.2 * 2 - 1)
    result = np.random.default_rng(0).uniform(-1, 1, (20, 20, 3))
    result[hole] = 0.3 * 2 - 1
    return (~hole).astype(np.float64), result, original


def test_hole_metrics_of_a_hand_made_mask():
    keep, result, original = hand_made_case()
    # PSNR over the hole's pixels only: every one is off by 0.1, so 10 log10(1 / 0.01) = 20.
    assert hole_psnr(result, original, keep) == pytest.approx(20.0, abs=1e-9)
    # SSIM: only windows inside the hole (7x7 centred on 36 pixels: 20 in each arm's
    # 2-pixel-wide eroded strip, 4 shared). Each sees two constants, 0.3 and 0.2, so
    # SSIM = (2 * 0.2 * 0.3 + C1) / (0.2^2 + 0.3^2 + C1), C1 = (0.01 * 1)^2; the
    # variance term is C2 / C2 = 1. Windows reaching the noise would lower it.
    region = ssim_region(keep == 0)
    assert region.sum() == 36 and region[13:15, 5:15].all() and region[5:15, 5:7].all()
    expected = (2 * 0.2 * 0.3 + 1e-4) / (0.2**2 + 0.3**2 + 1e-4)
    assert hole_ssim(result, original, keep) == pytest.approx(expected, abs=1e-12)
    # The composite (result pasted into the known pixels) scores the same.
    composite = np.where(keep[..., None] == 1, original, result)
    both = hole_metrics(np.stack([result, composite]), np.stack([original, original]), keep)
    np.testing.assert_allclose(both["hole_psnr"], 20.0, atol=1e-9)
    np.testing.assert_allclose(both["hole_ssim"], expected, atol=1e-12)
    # Holes thinner than the window have no SSIM; masks without a hole no PSNR.
    thin = np.ones((20, 20))
    thin[:, 5:10] = 0
    assert np.isnan(hole_ssim(result, original, thin))
    assert np.isnan(hole_psnr(result, original, np.ones((20, 20))))


def test_aot_gan_metrics_by_hand_on_the_uint8_composite():
    keep, result, original = hand_made_case()
    composite = composite_uint8(result, original, keep)
    # Known pixels: the original's 8-bit level, 0.2 * 255 = 51. Hole: AOT-GAN's
    # postprocess, (-0.4 + 1) / 2 * 255 = 76.5 in float32, truncated: 76.
    assert composite.dtype == np.uint8
    assert np.all(composite[keep == 1] == 51) and np.all(composite[keep == 0] == 76)
    values = aot_gan_metrics(composite, original_uint8(original))
    # 192 hole pixels x 3 channels off by 25; sum(r + f) = 3 (400 * 102 + 192 * 25).
    assert values["aot_l1"] == pytest.approx(14400 / 136800, rel=1e-7)  # float32, as AOT-GAN
    # MSE = 192 * 625 / 400 = 300 on 0..255.
    assert values["aot_psnr"] == pytest.approx(10 * np.log10(255**2 / 300), abs=1e-12)
    assert 0 < values["aot_ssim"] < 1
    # AOT-GAN's own composite sends the known pixels through float32 and truncates, which
    # lowers levels 1 to 63 by one: 51 / 255 * 2 - 1, back, gives 50.99999 -> 50.
    theirs = composite_uint8(result, original, keep, known="aot-gan")
    assert np.all(theirs[keep == 1] == 50) and np.all(theirs[keep == 0] == 76)
    evaluate = registry.build("aot_gan")
    assert registry.takes_masks(evaluate)
    got = evaluate(result[None], original[None], masks=keep[None])
    assert got["aot_l1"].shape == (1,) and got["aot_l1"][0] == values["aot_l1"]
    with pytest.raises(TypeError, match="8-bit"):
        aot_gan_metrics(result, original)


def test_hole_metrics_of_the_centre_square_are_the_references():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 48, 48, 3))
    ref = rng.integers(0, 256, (2, 48, 48, 3)) / 255 * 2 - 1
    reference = restoration_metrics(x, ref, "inpainting")  # the crop of hole_box
    mine = restoration_metrics(x, ref, "inpainting", mask=center_mask(48, 48))
    for k in ("psnr", "ssim"):
        np.testing.assert_allclose(mine[k], reference[k], rtol=1e-12, atol=0)
    np.testing.assert_array_equal(mine["mse"], reference["mse"])
    evaluate = registry.build("inpainting_hole")
    got = evaluate(x, ref, masks=np.repeat(center_mask(48, 48)[None], 2, 0))
    np.testing.assert_allclose(got["hole_ssim"], reference["ssim"], rtol=1e-12)
    with pytest.raises(ValueError, match="not both"):
        restoration_metrics(x, ref, "inpainting", mask_box=(16, 32), mask=center_mask(48, 48))
    with pytest.raises(ValueError, match="does not fit"):
        hole_psnr(x, ref, np.ones((32, 32)))
    with pytest.raises(ValueError, match="binary"):
        hole_psnr(x, ref, np.full((48, 48), 0.5))
