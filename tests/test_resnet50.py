"""ResNet-50 accuracy metric against torchvision (fixtures: tests/fixtures/make_resnet50.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dgp_jax import pth
from dgp_jax.metrics import classification, load_resnet50
from dgp_jax.metrics.weights import MissingWeightsError
from dgp_jax.nets import resnet
from tests._resnet import SEED, random_resnet50_state, resnet50_weights_folder

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "resnet50"
MEAN = np.asarray(classification.IMAGENET_MEAN, np.float32)
STD = np.asarray(classification.IMAGENET_STD, np.float32)


def _fixture(name: str):
    return np.load(FIXTURES / name)


def _images(data) -> list[np.ndarray]:
    """The committed uint8 crops as [-1, 1] float images."""
    return [data[f"image{k}"].astype(np.float64) / 255 * 2 - 1 for k in range(3)]


def test_resize_matches_torch_antialiased_interpolate():
    data = _fixture("transform.npz")
    for k in range(2):
        x, want = data[f"small_in{k}"], data[f"small_out{k}"]
        got = classification.resize_bilinear_antialias(x, *want.shape[:2])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_eval_transform_pil_backend_is_torchvisions_on_pil_images():
    data = _fixture("transform.npz")
    got = classification.eval_transform(_images(data), backend="pil")
    assert got.shape == (3, 224, 224, 3) and got.dtype == np.float32
    for k in range(3):
        pixels = data[f"pil_pixels{k}"]
        np.testing.assert_array_equal(got[k], (pixels.astype(np.float32) / 255 - MEAN) / STD)
        assert abs(float(got[k].astype(np.float64).sum()) - float(data[f"pil_sum{k}"])) < 1e-2


def test_eval_transform_tensor_backend_is_torchvisions_on_float_tensors():
    data = _fixture("transform.npz")
    got = classification.eval_transform(_images(data), backend="tensor")
    for k in range(3):
        np.testing.assert_allclose(got[k, ::8, ::8], data[f"tensor_sub{k}"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(got[k].astype(np.float64).sum(), data[f"tensor_sum{k}"],
                                   rtol=1e-6)  # fmt: skip


def test_resize_and_crop_geometry():
    # torchvision: the long side truncated; the crop offset rounded half to even.
    assert classification.resized_size(261, 338) == (256, 331)
    assert classification.resized_size(338, 261) == (331, 256)
    assert classification.center_crop_offsets(256, 331) == (16, 54)
    assert classification.center_crop_offsets(256, 317) == (16, 46)
    with pytest.raises(ValueError, match="smaller than the 224x224 crop"):
        classification.center_crop_offsets(200, 300)
    with pytest.raises(ValueError, match="backend must be one of"):
        classification.eval_transform(np.zeros((1, 8, 8, 3)), backend="cv2")
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        classification.eval_transform(np.zeros((1, 8, 8)))


def test_logits_match_torchvision_resnet50(tmp_path_factory):
    # A folder: the canonical file name inside it (written with num_batches_tracked).
    model = load_resnet50(resnet50_weights_folder(tmp_path_factory), batch_size=2)
    data = _fixture("transform.npz")
    want = _fixture("logits.npz")["logits"]
    got = model.logits(_images(data))  # 3 images in chunks of 2: one padded chunk
    assert got.shape == (3, 1000)
    # measured 1.5e-6 and 1.8e-6 of the largest logit on two CPUs (README, "ResNet-50")
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-6 * np.abs(want).max())
    np.testing.assert_array_equal(np.argmax(got, 1), np.argmax(want, 1))


def test_converter_names_missing_and_misshaped_keys():
    state = random_resnet50_state(SEED)
    del state["layer2.1.bn2.running_var"]
    state["fc.weight"] = state["fc.weight"][:10]
    state["extra.weight"] = np.zeros(1, np.float32)
    with pytest.raises(pth.CheckpointError) as err:
        resnet.params_from_state_dict(state, source="r.pth")
    message = str(err.value)
    assert "r.pth" in message
    assert "'layer2.1.bn2.running_var'" in message
    assert "'fc.weight' has shape (10, 2048)" in message and "(1000, 2048)" in message
    assert "'extra.weight'" in message


def test_missing_weight_file_names_file_url_hash_and_metric(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        load_resnet50(tmp_path)
    message = str(err.value)
    assert str(tmp_path / "resnet50-0676ba61.pth") in message
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
    assert "sha256 0676ba61" in message and "'resnet50'" in message


def test_accuracy_helpers():
    logits = np.array([[0.0, 3.0, 2.0, 1.0, 0.5, -1.0, 4.0],
                       [5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])  # fmt: skip
    labels = np.array([1, 1])
    np.testing.assert_array_equal(classification.topk_correct(logits, labels, 1), [False, False])
    # image 1: ties among classes 1..6 rank the lower index first, so class 1 is second.
    np.testing.assert_array_equal(classification.topk_correct(logits, labels, 2), [True, True])
    assert classification.accuracy(logits, np.array([6, 0])) == {"top1": 1.0, "top5": 1.0}
    assert classification.accuracy(logits, np.array([5, 6])) == {"top1": 0.0, "top5": 0.0}
    with pytest.raises(ValueError, match="class indices"):
        classification.topk_correct(logits, np.array([0, 7]), 1)
