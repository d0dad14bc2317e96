"""NIQE against BasicSR's port of the LIVE MATLAB code (fixtures: tests/fixtures/make_niqe.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dgp_jax.metrics import niqe_metric as niqe_lib
from dgp_jax.metrics.weights import MissingWeightsError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "niqe"


def _unit(pixels: np.ndarray) -> np.ndarray:
    """uint8 -> [-1, 1], as dgp_jax reads images."""
    return pixels.astype(np.float64) / 255 * 2 - 1


@pytest.fixture(scope="module")
def pristine():
    return dict(np.load(FIXTURES / "pristine.npz"))


@pytest.fixture(scope="module")
def scored():
    return dict(np.load(FIXTURES / "scored.npz"))


def _model(data, suffix="") -> niqe_lib.NIQEParams:
    return niqe_lib.NIQEParams(data[f"mu{suffix}"], data[f"cov{suffix}"],
                               niqe_lib.gaussian_window())  # fmt: skip


def test_block_features_and_imresize_match_the_reference(pristine):
    gray = pristine["gray0"].astype(np.float64)
    features, sharpness = niqe_lib.niqe_features(gray)
    assert features.shape == (15, 36)
    np.testing.assert_allclose(features, pristine["features0"], rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(sharpness, pristine["sharpness0"], rtol=1e-12)
    half = niqe_lib.imresize(gray / 255, 0.5) * 255
    assert half.shape == (144, 240)
    np.testing.assert_allclose(half[::4, ::4], pristine["imresize0_sub"], rtol=0, atol=1e-10)


def test_niqe_of_gray_photos_matches_the_reference(pristine):
    model = _model(pristine)
    got = [niqe_lib.niqe_of_gray(pristine[f"gray{k}"], model) for k in range(4)]
    np.testing.assert_allclose(got, pristine["niqe"], rtol=1e-9)


@pytest.mark.parametrize("gray", ["rgb2gray", "y"])
def test_niqe_of_rgb_photos_matches_the_reference(pristine, scored, gray):
    images = np.stack([_unit(scored[f"rgb{k}"]) for k in range(2)])
    got = niqe_lib.niqe(images, _model(pristine), gray=gray)
    assert got.shape == (2,)
    want = [scored[f"niqe_{gray}{k}"] for k in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_fit_from_a_folder_matches_estimatemodelparam(tmp_path, pristine):
    for k in range(4):  # gray PNGs: rgb2gray of a gray RGB image is the image
        Image.fromarray(pristine[f"gray{k}"]).save(tmp_path / f"p{k}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    fitted = niqe_lib.fit_niqe_params(tmp_path)
    np.testing.assert_allclose(fitted.mu, pristine["mu75"], rtol=1e-10)
    np.testing.assert_allclose(fitted.cov, pristine["cov75"], rtol=1e-8, atol=1e-12)
    every_block = niqe_lib.fit_niqe_params(
        [_unit(pristine[f"gray{k}"])[..., None] for k in range(4)], sharpness_threshold=0.0
    )
    np.testing.assert_allclose(every_block.mu, pristine["mu"], rtol=1e-10)
    np.testing.assert_allclose(every_block.cov, pristine["cov"], rtol=1e-8, atol=1e-12)


def test_gray_conversions():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
    # MATLAB rgb2gray on uint8: 76, 150, 29, 18; BasicSR's Y: 81, 145, 41, 32.
    np.testing.assert_array_equal(niqe_lib.to_gray(_unit(rgb)), [[76, 150, 29, 18]])
    np.testing.assert_array_equal(niqe_lib.to_gray(_unit(rgb), "y"), [[81, 145, 41, 32]])
    with pytest.raises(ValueError, match="gray must be one of"):
        niqe_lib.to_gray(_unit(rgb), "luma")


def test_model_files_and_errors(tmp_path, pristine):
    from scipy.io import savemat

    mat = tmp_path / "modelparameters.mat"
    savemat(mat, {"mu_prisparam": pristine["mu"][None], "cov_prisparam": pristine["cov"]})
    model = niqe_lib.load_niqe_params(mat)
    np.testing.assert_array_equal(model.mu, pristine["mu"])
    np.testing.assert_allclose(model.window, niqe_lib.gaussian_window())
    npz = tmp_path / "niqe_pris_params.npz"
    np.savez(npz, mu_pris_param=pristine["mu"][None], cov_pris_param=pristine["cov"],
             gaussian_window=niqe_lib.gaussian_window())  # fmt: skip
    np.testing.assert_array_equal(niqe_lib.load_niqe_params(npz).cov, pristine["cov"])
    saved = niqe_lib.load_niqe_params(niqe_lib.save_niqe_params(model, tmp_path / "m.npz"))
    for got, want in zip(saved, model, strict=True):
        np.testing.assert_array_equal(got, want)
    assert niqe_lib.locate_model(tmp_path) == mat  # the LIVE file first
    bad = tmp_path / "bad.npz"
    np.savez(bad, mu_pris_param=pristine["mu"])
    with pytest.raises(ValueError, match=r"bad.npz lacks \['cov_pris_param'\]"):
        niqe_lib.load_niqe_params(bad)
    with pytest.raises(MissingWeightsError) as err:
        niqe_lib.locate_model(tmp_path / "empty")
    for part in ("'niqe'", "modelparameters.mat", "niqe_pris_params.npz", "2a7c182a",
                 "niqe_release.zip"):  # fmt: skip
        assert part in str(err.value)
    with pytest.raises(ValueError, match="at least 96x96"):
        niqe_lib.niqe(np.zeros((1, 95, 200, 3)), model)
    with pytest.raises(ValueError, match="at least two 96x96 blocks, a 128x128 image has one"):
        niqe_lib.niqe(np.zeros((1, 128, 128, 3)), model)
