"""The FID Inception and its metrics against pytorch-fid, torch-fidelity and Co-Mod-GAN.

Fixtures: tests/fixtures/make_inception.py ran the canonical code on random weights and
random BN statistics (``random_state_dict(0)``, float32); the tests rebuild those weights
from the seed, write them as a .pth with ``dgp_jax.pth`` and load them the way a user loads
the real file. Every extraction here runs one image (or two) on a two-device mesh, so that
the network compiles once for the whole module and each call also exercises the padding
and the sharding.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from dgp_jax import metrics, pth
from dgp_jax.metrics import inception as inception_metrics
from dgp_jax.metrics import registry
from dgp_jax.nets import inception
from tests.fixtures.make_inception import (  # the inputs the fixture script fed the reference
    SIZES,
    TF_SIZES,
    feature_sets,
    images,
    pixels,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "inception"


def fixture(name: str):
    path = FIXTURES / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run tests/fixtures/make_inception.py")
    return np.load(path)


def assert_relative(actual, expected, rtol=5e-6):
    """Max error within ``rtol`` of the reference's largest magnitude, per row."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = np.abs(expected).max(axis=-1, keepdims=True)
    error = np.abs(actual - expected) / scale
    assert error.max() <= rtol, f"max relative error {error.max():.3g}"


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    return Mesh(np.array(jax.devices()[:2]), ("data",))


@pytest.fixture(scope="module")
def nets_dir(tmp_path_factory) -> Path:
    """A folder holding the seed-0 random weights under the canonical file name."""
    folder = tmp_path_factory.mktemp("nets")
    state = {k: v.astype(np.float32) for k, v in inception.random_state_dict(0).items()}
    pth.write_state_dict(folder / inception_metrics.INCEPTION_WEIGHTS.name, state)
    return folder


@pytest.fixture(scope="module")
def model(nets_dir, mesh) -> inception.InceptionV3:
    return metrics.load_inception(nets_dir / "pt_inception-2015-12-05-6726825d.pth", mesh=mesh)


@pytest.mark.parametrize("size", SIZES)
def test_pool3_and_logits_match_pytorch_fid(model, size):
    reference = fixture("network.npz")
    out = model.outputs(images(size))
    assert out["pool3"].shape == (1, 2048) and out["logits"].shape == (1, 1008)
    assert out["pool3"].dtype == np.float32
    assert_relative(out["pool3"], reference[f"pool3_{size}"])
    assert_relative(out["logits"], reference[f"logits_{size}"])


@pytest.mark.parametrize("size", TF_SIZES)
def test_torch_fidelity_preprocessing_matches_its_extractor(model, size):
    reference = fixture("network.npz")
    tf_model = inception.InceptionV3(model.params, preprocess="torch-fidelity", mesh=model.mesh)
    out = tf_model.outputs(pixels(size) / np.float32(127.5) - 1)
    assert_relative(out["pool3"], reference[f"tf_pool3_{size}"])
    assert_relative(out["logits"], reference[f"tf_logits_{size}"])
    assert_relative(out["logits_unbiased"], reference[f"tf_logits_unbiased_{size}"])


def test_features_and_logits_api_over_chunks_and_batches(model):
    """Chunks of two (one per device), the last one padded, and an iterable of batches, give
    the rows each image gives alone."""
    reference = fixture("network.npz")
    x = np.concatenate([images(64), images(64)[:, ::-1], images(64)[:, :, ::-1]])
    one_per_device = dataclasses.replace(model, batch_size=1)
    logits = one_per_device.logits(x)  # chunks [0, 1], [2, pad]
    features = one_per_device.features(iter([x[:1], x[1:]]))  # chunks [0, pad], [1, 2]
    assert features.shape == (3, 2048) and logits.shape == (3, 1008)
    assert_relative(features[:1], reference["pool3_64"])
    assert_relative(logits[:1], reference["logits_64"])
    fc_weight, fc_bias = (np.asarray(model.params[k]) for k in ("fc.weight", "fc.bias"))
    assert_relative(logits, features @ fc_weight.T + fc_bias, rtol=1e-5)
    assert model.features(np.zeros((0, 64, 64, 3), np.float32)).shape == (0, 2048)
    assert model.logits(np.zeros((0, 8, 8, 3), np.float32), fc_bias=False).shape == (0, 1008)


def test_bad_images_are_named(model):
    with pytest.raises(ValueError, match=r"NHWC with 3 channels, got shape \(1, 3, 64, 64\)"):
        model.features(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="floating point in \\[-1, 1\\], got dtype uint8"):
        model.features(pixels(64))
    with pytest.raises(ValueError, match="must be in \\[-1, 1\\], got values in \\[0, 255\\]"):
        model.features(pixels(64).astype(np.float32))
    with pytest.raises(ValueError, match="unknown Inception output 'pool4'"):
        model.outputs(images(64), ("pool4",))
    with pytest.raises(ValueError, match="preprocess must be one of"):
        inception.InceptionV3(model.params, preprocess="tf2")


# --------------------------------------------------------------------------------------------
# Converter


def _small_state() -> dict[str, np.ndarray]:
    """The key table with zero-filled arrays (only names and shapes matter here)."""
    return {k: np.zeros(s, np.float32) for k, s in inception.state_dict_shapes().items()}


def test_key_table_is_the_fid_inception():
    shapes = inception.state_dict_shapes()
    assert len(shapes) == 94 * 5 + 2  # 94 BasicConv2d (conv + 4 BN tensors) and the fc
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert shapes["fc.weight"] == (1008, 2048)
    # torchvision's inception_v3 has 27,161,264 trainable parameters; without AuxLogits
    # (3,326,696) and with 1008 instead of 1000 classes (+16,392):
    trainable = [s for k, s in shapes.items() if "running" not in k]
    assert sum(int(np.prod(s)) for s in trainable) == 27_161_264 - 3_326_696 + 16_392


def test_converter_names_missing_misshaped_and_unexpected_keys(tmp_path):
    state = _small_state()
    state["Mixed_5b.branch1x1.bn.num_batches_tracked"] = np.zeros((), np.int64)
    params = inception.params_from_state_dict(state)
    assert set(params) == set(inception.state_dict_shapes())

    missing = dict(state)
    del missing["Mixed_6e.branch7x7dbl_3.bn.running_var"]
    with pytest.raises(ValueError, match="missing key 'Mixed_6e.branch7x7dbl_3.bn.running_var'"):
        inception.params_from_state_dict(missing)

    misshaped = dict(state, **{"fc.weight": np.zeros((1000, 2048), np.float32)})
    with pytest.raises(ValueError, match=r"'fc.weight' has shape \(1000, 2048\), expected"):
        inception.params_from_state_dict(misshaped)

    torchvision_like = dict(state, **{"AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)})
    with pytest.raises(ValueError, match="unexpected key 'AuxLogits.fc.weight'"):
        inception.params_from_state_dict(torchvision_like)

    path = tmp_path / "broken.pth"
    pth.write_state_dict(path, {"fc.weight": np.zeros((1008, 2048), np.float32)})
    with pytest.raises(ValueError, match=f"{path}: missing key 'Conv2d_1a_3x3.conv.weight'"):
        inception.read_params(path)


def test_missing_weight_file_names_file_url_hash_and_metric(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        metrics.load_inception(tmp_path / "nowhere.pth")
    message = str(info.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in message
    assert "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" in message
    assert "sha256 6726825d" in message and "fid needs" in message
    with pytest.raises(FileNotFoundError, match="^kid needs the Inception weights"):
        registry.build("kid", nets=tmp_path)
    with pytest.raises(ValueError, match="ids needs the Inception weights"):
        registry.build("ids")


# --------------------------------------------------------------------------------------------
# Metrics on features


def test_fid_equals_pytorch_fid():
    sets, reference = feature_sets(), fixture("metrics.npz")
    assert metrics.fid(sets["fake"], sets["real"]) == pytest.approx(reference["fid"], rel=1e-12)
    assert metrics.fid(sets["real"], sets["real"]) == pytest.approx(0, abs=1e-9)


def test_kid_equals_torch_fidelity():
    sets, reference = feature_sets(), fixture("metrics.npz")
    mean, std = metrics.kid(sets["fake"], sets["real"], subsets=10, subset_size=100)
    assert mean == pytest.approx(reference["kid_mean"], rel=1e-6)
    assert std == pytest.approx(reference["kid_std"], rel=1e-6)
    with pytest.raises(ValueError, match="subset_size 1000 is larger than a set"):
        metrics.kid(sets["fake"], sets["real"])


def test_inception_score_equals_torch_fidelity():
    sets, reference = feature_sets(), fixture("metrics.npz")
    mean, std = metrics.inception_score(sets["logits"])
    assert mean == pytest.approx(reference["is_mean"], rel=1e-12)
    assert std == pytest.approx(reference["is_std"], rel=1e-9)
    mean, std = metrics.inception_score(sets["logits"], 4, shuffle=False)
    assert mean == pytest.approx(reference["is4_unshuffled_mean"], rel=1e-12)
    assert std == pytest.approx(reference["is4_unshuffled_std"], rel=1e-9)
    with pytest.raises(ValueError, match="splits must be between 1 and the number of samples"):
        metrics.inception_score(sets["logits"][:5])


def test_ids_equals_co_mod_gan():
    sets, reference = feature_sets(), fixture("metrics.npz")
    p_ids, u_ids = metrics.ids(sets["real"], sets["fake"])
    assert p_ids == reference["p_ids"] and u_ids == reference["u_ids"]
    assert 0 < p_ids < 0.5 and 0 < u_ids < 0.5
    with pytest.raises(ValueError, match="pairs real_features\\[i\\] with fake_features"):
        metrics.ids(sets["real"], sets["fake"][:-1])
    with pytest.raises(ValueError, match="P-IDS/U-IDS need at least 2 pairs, got 1"):
        metrics.ids(sets["real"][:1], sets["fake"][:1])


def test_set_metrics_refuse_what_would_give_a_wrong_number():
    """Non-finite features (FID's sqrtm failed obscurely, KID and IS gave NaN) and counts
    that are no positive integers (KID with 0 subsets gave NaN)."""
    sets = feature_sets()
    broken = sets["real"].copy()
    broken[3, 5] = np.nan
    with pytest.raises(ValueError, match="features_a hold NaN or infinite values"):
        metrics.fid(broken, sets["fake"])
    with pytest.raises(ValueError, match="features_b hold NaN or infinite values"):
        metrics.kid(sets["fake"], broken, subset_size=10)
    logits = sets["logits"].copy()
    logits[0, 0] = np.inf
    with pytest.raises(ValueError, match="logits hold NaN or infinite values"):
        metrics.inception_score(logits)
    for kwargs, says in (
        ({"subsets": 0}, "KID subsets must be an integer >= 1, got 0"),
        ({"subset_size": 2.5}, "KID subset_size must be an integer >= 2, got 2.5"),
    ):
        with pytest.raises(ValueError, match=says):
            metrics.kid(sets["real"], sets["fake"], **{"subset_size": 10, **kwargs})
    with pytest.raises(ValueError, match="splits must be between 1 and the number of samples"):
        metrics.inception_score(sets["logits"], 2.5)


def test_registered_evaluators_run_the_network_once_per_image_set(nets_dir, mesh, model):
    assert {"fid", "kid", "is", "ids"} <= set(registry.names())
    restored = np.concatenate([images(64), images(64)[:, ::-1]])
    reference = np.concatenate([images(64)[:, :, ::-1], -images(64)])
    config = {"nets": nets_dir, "mesh": mesh}
    kid = registry.build("kid", subsets=3, subset_size=2, **config)(restored, reference)
    # The evaluators share one network (loaded once) and one extraction per image set.
    network = inception_metrics._cached_network(
        str((nets_dir / inception_metrics.INCEPTION_WEIGHTS.name).resolve()),
        "pytorch-fid",
        32,
        mesh,
    )
    fake = inception_metrics._CACHE.get(network, restored)
    real = inception_metrics._CACHE.get(network, reference)
    assert_relative(fake["pool3"][:1], fixture("network.npz")["pool3_64"])
    assert kid["kid"] == metrics.kid(fake["pool3"], real["pool3"], subsets=3, subset_size=2)[0]
    score = registry.build("is", splits=1, **config)(restored)
    assert score["is"] == metrics.inception_score(fake["logits_unbiased"], 1)[0]
    ids = registry.build("ids", **config)(restored, reference)
    assert (ids["p_ids"], ids["u_ids"]) == metrics.ids(real["pool3"], fake["pool3"])
    assert len(inception_metrics._CACHE.entries) <= inception_metrics._CACHE.size
    with pytest.raises(ValueError, match="fid compares with reference images"):
        registry.build("fid", **config)(restored)
