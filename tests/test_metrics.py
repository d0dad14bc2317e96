"""Restoration metrics against the PyTorch reference's fixtures, plus unit checks.

The fixtures' json ``final`` holds the metrics the reference computed on G's output at the
last step (``x_final``) against the original image (``target``).
"""

import json

import numpy as np
import pytest
from skimage import color
from skimage.metrics import peak_signal_noise_ratio

from dgp_jax import metrics
from dgp_jax.degradations import hole_box
from tests.conftest import fixture_path

# hybrid is absent: the reference reports no origin metrics for it.
CASES = [
    "128_ch8_f64_colorization",
    "128_ch8_f64_inpainting",
    "128_ch8_f64_SR",
    "128_ch8_f64_reconstruct",
    "256_ch8_f64_colorization",
]

# our key -> the reference's key in the json's `final`
REFERENCE_KEYS = {
    "mse": "mse_loss_origin",
    "l1": "l1_loss_origin",
    "psnr": "psnr",
    "ssim": "ssim",
}


def load_case(tag: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """x_final and target as NHWC, and the json."""
    path = fixture_path(f"traj_{tag}.npz")  # missing fixtures fail the test, not skip it
    with np.load(path) as data:
        x_final = np.transpose(data["x_final"], (0, 2, 3, 1))
        target = np.transpose(data["target"], (0, 2, 3, 1))
    return x_final, target, json.loads(path.with_suffix(".json").read_text())


@pytest.mark.parametrize("tag", CASES)
def test_restoration_metrics_match_reference(tag: str) -> None:
    x_final, target, meta = load_case(tag)
    result = metrics.restoration_metrics(x_final, target, meta["mode"])
    assert set(result) == set(REFERENCE_KEYS)
    for ours, theirs in REFERENCE_KEYS.items():
        assert result[ours].shape == (1,) and result[ours].dtype == np.float64
        np.testing.assert_allclose(
            result[ours][0], meta["final"][theirs], rtol=1e-7, atol=0, err_msg=ours
        )


def test_batch_is_per_image() -> None:
    x_final, target, _ = load_case("128_ch8_f64_inpainting")
    # A batch of two different pairs: each row must equal the single-image result.
    xs = np.concatenate([x_final, target * 0.9])
    refs = np.concatenate([target, target])
    batch = metrics.restoration_metrics(xs, refs, "inpainting")
    for i in range(2):
        single = metrics.restoration_metrics(xs[i], refs[i], "inpainting")
        for key in REFERENCE_KEYS:
            assert single[key].shape == ()
            np.testing.assert_allclose(batch[key][i], single[key], rtol=1e-15, atol=0)
    assert batch["psnr"][0] != batch["psnr"][1]


def test_inpainting_scores_only_the_hole() -> None:
    x_final, target, _ = load_case("128_ch8_f64_inpainting")
    outside = target.copy()
    begin, end = hole_box(128, 128)
    outside[:, begin:end, begin:end] = x_final[:, begin:end, begin:end]
    # Changing pixels outside the hole changes mse/l1 but neither psnr nor ssim.
    a = metrics.restoration_metrics(x_final, target, "inpainting")
    b = metrics.restoration_metrics(outside, target, "inpainting")
    # (Equal up to summation order: numpy's reductions may round differently by memory layout.)
    np.testing.assert_allclose(a["psnr"], b["psnr"], rtol=1e-14, atol=0)
    np.testing.assert_allclose(a["ssim"], b["ssim"], rtol=1e-14, atol=0)
    assert b["mse"][0] < a["mse"][0]
    assert b["l1"][0] < a["l1"][0]
    # An explicit box equal to the default gives the same numbers.
    c = metrics.restoration_metrics(x_final, target, "inpainting", mask_box=(begin, end))
    np.testing.assert_array_equal(a["psnr"], c["psnr"])


def test_simple_metrics_by_hand() -> None:
    ref = np.zeros((2, 8, 8, 3))
    x = np.full((2, 8, 8, 3), 0.5)
    x[1] = -1.0
    # [0, 1] scale: differences 0.25 and 0.5.
    np.testing.assert_allclose(metrics.mse(x, ref), [0.0625, 0.25], rtol=1e-15)
    np.testing.assert_allclose(metrics.l1(x, ref), [0.25, 0.5], rtol=1e-15)
    np.testing.assert_allclose(metrics.psnr(x, ref), -10 * np.log10([0.0625, 0.25]), rtol=1e-12)
    assert metrics.ssim(ref[0], ref[0]) == pytest.approx(1.0)
    assert isinstance(metrics.mse(x[0], ref[0]), float)


def test_colorization_merge_keeps_reference_lightness() -> None:
    # Low-chroma mid-tones, so that no pixel leaves the sRGB gamut and lab2rgb clips nothing.
    rng = np.random.default_rng(0)
    target = rng.uniform(-0.3, 0.3, (2, 8, 8, 1)) + rng.uniform(-0.1, 0.1, (2, 8, 8, 3))
    x = rng.uniform(-0.3, 0.3, (2, 8, 8, 1)) + rng.uniform(-0.1, 0.1, (2, 8, 8, 3))
    merged = metrics.colorization_merge(x, target)
    assert merged.shape == target.shape and merged.dtype == np.float64
    for i in range(2):
        lab_merged = color.rgb2lab((merged[i] + 1) / 2)
        lab_target = color.rgb2lab((target[i] + 1) / 2)
        lab_x = color.rgb2lab((x[i] + 1) / 2)
        np.testing.assert_allclose(lab_merged[..., 0], lab_target[..., 0], rtol=0, atol=1e-9)
        np.testing.assert_allclose(lab_merged[..., 1:], lab_x[..., 1:], rtol=0, atol=1e-9)
    # On the fixture, the merge (clipping included) scored by an independent PSNR
    # (skimage's, on [0, 1]) gives the reference's reported colorization PSNR.
    x_final, target_f, meta = load_case("128_ch8_f64_colorization")
    merged_f = metrics.colorization_merge(x_final, target_f)
    assert merged_f.min() >= -1 and merged_f.max() <= 1
    independent = peak_signal_noise_ratio((target_f[0] + 1) / 2, (merged_f[0] + 1) / 2,
                                          data_range=1.0)  # fmt: skip
    np.testing.assert_allclose(independent, meta["final"]["psnr"], rtol=1e-12)


def test_metric_errors() -> None:
    x = np.zeros((1, 16, 16, 3))
    with pytest.raises(ValueError, match="'deblur'"):
        metrics.restoration_metrics(x, x, "deblur")
    with pytest.raises(ValueError, match=r"\(1, 16, 16, 3\).*\(1, 8, 8, 3\)"):
        metrics.mse(x, np.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="mask_box"):
        metrics.restoration_metrics(x, x, "SR", mask_box=(4, 12))
    # 0..255 images scored on the [-1, 1] scale gave -34 dB and the like, silently
    as_read = np.full((1, 16, 16, 3), 200.0)
    says = r"images must be in \[-1, 1\], got values in \[200, 200\]; 0..255 images: x / 127.5"
    for fn in (metrics.psnr, metrics.ssim, metrics.mse):
        with pytest.raises(ValueError, match=says):
            fn(as_read, x)
    with pytest.raises(ValueError, match=r"reference must be in \[-1, 1\]"):
        metrics.restoration_metrics(x, as_read, "SR")
    with pytest.raises(ValueError, match=r"SSIM's 7x7 window needs images of at least 7x7"):
        metrics.ssim(np.zeros((1, 4, 4, 3)), np.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"mask_box must be \(begin, end\), got \(20,\)"):
        metrics.restoration_metrics(x, x, "inpainting", mask_box=(20,))
    # a diverged (NaN) image is not refused: it scores NaN, which shows
    assert np.isnan(metrics.psnr(np.full_like(x, np.nan), x)[0])
    from dgp_jax.metrics import classification

    logits, labels = np.eye(4)[[1, 2]], np.array([1, 2])
    for k in (0, -1, 5, 1.5):  # k past the classes counted every image as correct
        with pytest.raises(ValueError, match=r"k must be an integer in \[1, 4\]"):
            classification.topk_correct(logits, labels, k)
    with pytest.raises(ValueError, match="labels must be integer class indices, got dtype float"):
        classification.topk_correct(logits, labels.astype(float), 1)


def test_registry_builds_restoration_evaluator_and_names_unknown_metrics():
    from dgp_jax.metrics import registry

    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (2, 8, 8, 3))
    ref = rng.uniform(-1, 1, (2, 8, 8, 3))
    evaluate = registry.build("restoration", mode="reconstruct")
    got = evaluate(x, ref)
    want = metrics.restoration_metrics(x, ref, "reconstruct")
    assert sorted(got) == ["l1", "mse", "psnr", "ssim"]
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    assert "restoration" in registry.names()
    with pytest.raises(ValueError, match="unknown metric 'fidd'; known: .*restoration"):
        registry.get("fidd")
    with pytest.raises(ValueError, match="unknown DGP mode 'colourization'"):
        registry.build("restoration", mode="colourization")
