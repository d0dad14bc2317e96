"""LPIPS against ``lpips.LPIPS(pnet_rand=True)`` (tests/fixtures/make_lpips.py): the shipped
v0.1 linear layers and the same random, seeded trunk, in float32."""

from pathlib import Path

import numpy as np
import pytest

from dgp_jax import metrics, pth
from dgp_jax.metrics import lpips as lpips_lib
from dgp_jax.metrics import registry
from dgp_jax.nets import alexnet, vgg
from tests._torch import require_torch
from tests.fixtures.make_lpips import CASES, MODULES, SEED, image_pairs
from tests.random_weights import random_state

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lpips"


def write_trunk(tmp_path, net):
    """The seeded trunk as torchvision's file would hold it (with a classifier key, which
    the converter ignores)."""
    state = random_state(MODULES[net].state_shapes(), SEED[net])
    state["classifier.0.bias"] = np.zeros(7, np.float32)
    path = tmp_path / lpips_lib.TRUNK_FILES[net].filename
    pth.write_state_dict(path, state)
    return path


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lpips_matches_the_package(tmp_path, net):
    reference = np.load(FIXTURES / f"{net}.npz")
    # batches of 2: alex's 3 images run as two chunks, the last one padded
    metric = metrics.load_lpips(
        write_trunk(tmp_path, net), FIXTURES / f"lpips_v0.1_{net}.pth", net=net, batch_size=2
    )
    for n, h, w in CASES[net]:
        x, y = image_pairs(n, h, w)
        tag = f"{n}x{h}x{w}"
        layers = metric.per_layer(x, y)
        assert layers.shape == (n, 5) and layers.dtype == np.float32
        np.testing.assert_allclose(layers, reference[f"per_layer_{tag}"], rtol=2e-5, atol=0)
        np.testing.assert_allclose(layers.sum(-1), reference[f"distance_{tag}"], rtol=2e-5, atol=0)
        distance = metric.distance(x, y)
        assert distance.shape == (n,) and distance.dtype == np.float32
        np.testing.assert_allclose(distance, reference[f"distance_{tag}"], rtol=2e-5, atol=0)
        if net == "alex":  # (one net is enough; each call is a trunk pass)
            assert np.all(np.abs(metric.distance(x, x)) < 1e-12)


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_shipped_linear_layers_read_bit_for_bit(net):
    torch = require_torch()
    path = FIXTURES / f"lpips_v0.1_{net}.pth"
    lins = lpips_lib.lins_from_state_dict(pth.read_state_dict(path), net)
    widths = {"vgg": [64, 128, 256, 512, 512], "alex": [64, 192, 384, 256, 256]}[net]
    assert [w.shape for w in lins] == [(c,) for c in widths]
    # what torch reads from the same file, as the package loads it
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    for i, w in enumerate(lins):
        want = theirs[f"lin{i}.model.1.weight"].numpy()
        assert want.shape == (1, widths[i], 1, 1)
        np.testing.assert_array_equal(np.asarray(w), want.reshape(-1), err_msg=f"lin{i}")
    assert all(np.all(np.asarray(w) >= 0) for w in lins)  # the package clamps them at training


def test_evaluator_is_registered(tmp_path):
    nets = tmp_path / "nets"
    nets.mkdir()
    write_trunk(nets, "alex")
    (nets / "lpips_v0.1_alex.pth").write_bytes((FIXTURES / "lpips_v0.1_alex.pth").read_bytes())
    evaluate = registry.build("lpips", net="alex", nets=nets, batch_size=2)
    x, y = image_pairs(3, 64, 64)
    out = evaluate(x, y)
    reference = np.load(FIXTURES / "alex.npz")["distance_3x64x64"]
    np.testing.assert_allclose(out["lpips"], reference, rtol=2e-5)


def test_missing_weight_file_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        metrics.load_lpips(tmp_path / "vgg16-397923af.pth", FIXTURES / "lpips_v0.1_vgg.pth",
                           net="vgg")  # fmt: skip
    message = str(err.value)
    for part in ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
                 "397923af", "lpips (vgg)"):  # fmt: skip
        assert part in message
    with pytest.raises(FileNotFoundError, match=r"lpips_v0.1_alex.pth.*df73285e.*"
                       r"PerceptualSimilarity"):  # fmt: skip
        registry.build("lpips", net="alex", nets=tmp_path, trunk_path=write_trunk(tmp_path,
                       "alex"))  # fmt: skip


def test_bad_keys_are_named(tmp_path):
    state = random_state(MODULES["alex"].state_shapes(), 0)
    del state["features.8.bias"]
    state["features.3.weight"] = state["features.3.weight"][:5]
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    pth.write_state_dict(path, state)
    with pytest.raises(pth.CheckpointError) as err:
        metrics.load_lpips(path, FIXTURES / "lpips_v0.1_alex.pth", net="alex")
    assert str(path) in str(err.value)
    assert "features.8.bias" in str(err.value)
    assert "features.3.weight: (5, 64, 5, 5) (expected (192, 64, 5, 5))" in str(err.value)
    with pytest.raises(pth.CheckpointError, match="lin4.model.1.weight"):
        lpips_lib.lins_from_state_dict(
            pth.read_state_dict(FIXTURES / "lpips_v0.1_vgg.pth"), "alex", source="vgg lins"
        )


def test_bad_input_is_refused(tmp_path):
    metric = metrics.load_lpips(
        write_trunk(tmp_path, "alex"), FIXTURES / "lpips_v0.1_alex.pth", net="alex"
    )
    x, y = image_pairs(2, 64, 64)
    with pytest.raises(ValueError, match="same shape"):
        metric.distance(x, y[:1])
    with pytest.raises(ValueError, match="unknown LPIPS net 'squeeze'"):
        metrics.load_lpips("a", "b", net="squeeze")


@pytest.mark.parametrize("trunk,name", [(alexnet, "AlexNet"), (vgg, "VGG16")])
def test_trunks_refuse_unknown_taps_and_unbatched_images(trunk, name):
    with pytest.raises(ValueError, match=rf"unknown {name} taps \['relu9'\]; known: \['relu1"):
        trunk.features({}, np.zeros((1, 8, 8, 3)), ["relu9"])
    with pytest.raises(
        ValueError, match=rf"{name} takes \(N, H, W, 3\) images, got shape \(8, 8, 3\)"
    ):
        trunk.features({}, np.zeros((8, 8, 3)), [next(iter(trunk.TAPS))])
