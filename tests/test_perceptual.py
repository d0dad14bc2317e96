"""Perceptual feature losses (dgp_jax.perceptual) and DGP with them.

Against tests/fixtures/make_perceptual.py: the losses on torchvision's VGG16 with random,
seeded weights, and a short float64 run of the reference DGP's own VGG ablation
(``--ftr_type VGG``), step by step, as tests/test_solver.py checks the discriminator runs.
"""

import dataclasses
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import dgp_jax
from dgp_jax import baselines, degradations, perceptual, pth
from dgp_jax.images import load_image
from dgp_jax.nets import vgg
from tests.conftest import reference_model
from tests.fixtures.make_perceptual import (
    CLASS,
    LOSS_DEPTH,
    LOSS_SEED,
    SCHEDULE,
    VGG_DEPTH,
    VGG_SEED,
    image_pairs,
)
from tests.random_weights import random_state

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "perceptual"
PHOTO = Path(__file__).resolve().parents[2] / "shared" / "images" / "imagenet_val"
PHOTO = PHOTO / "ILSVRC2012_val_00003004.JPEG"
TOL = 1e-12  # float64, as tests/test_solver.py


def seeded_vgg(seed, depth, dtype=jnp.float64):
    return vgg.params_from_state_dict(
        random_state(vgg.state_shapes(depth), seed), dtype=dtype, depth=depth
    )


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return np.abs(a - b).max() / np.abs(b).max()


@jax.jit
def all_losses(params, x, y):
    relu4_2 = perceptual.dgp_vgg_features(params, x)
    dgp_vgg = perceptual.dgp_vgg_distance(relu4_2, perceptual.dgp_vgg_features(params, y))
    fx = perceptual.johnson_features(params, x, style=True)
    fy = perceptual.johnson_features(params, y, style=True)
    content = perceptual.johnson_distance(fx[:1], fy[:1], style_weight=0.0)
    both = perceptual.johnson_distance(fx, fy, style_weight=1e3)
    return relu4_2[0], dgp_vgg, content, both


def test_losses_match_torchvision_vgg16():
    reference = np.load(FIXTURES / "losses.npz")
    relu4_2, dgp_vgg, content, both = all_losses(seeded_vgg(LOSS_SEED, LOSS_DEPTH), *image_pairs())
    assert rel(relu4_2, reference["relu4_2"].transpose(0, 2, 3, 1)) < TOL
    assert rel(dgp_vgg, reference["dgp_vgg"]) < TOL
    assert rel(content, reference["johnson_content"]) < TOL
    expected = reference["johnson_content"] + 1e3 * reference["johnson_style"]
    assert rel(both, expected) < TOL
    # content-only features skip the style layers but give the same relu2_2
    params = seeded_vgg(LOSS_SEED, LOSS_DEPTH)
    x = jnp.asarray(image_pairs()[0])
    assert len(perceptual.johnson_features(params, x, style=False)) == 1


def test_dgp_vgg_ablation_matches_the_reference_run(one_device_mesh):
    """One run: the start candidates' scores, then every step. (The reference's CPU
    select_z keeps the last candidate, see tests/test_solver.py; here that is also the
    best one, so both start from the same z0.)"""
    traj = np.load(FIXTURES / "dgp_vgg_SR.npz")
    best = int(np.argmin(traj["select_loss"]))
    np.testing.assert_array_equal(traj["select_z"][best], traj["z0"][0])
    cands = traj["select_z"][None]
    result = dgp_jax.restore(
        reference_model(128), load_image(PHOTO, 128)[None], [CLASS],
        dgp_jax.SolverConfig(ftr_type="VGG", **SCHEDULE), z_candidates=cands,
        class_candidates=np.full((1, cands.shape[1]), CLASS), mesh=one_device_mesh,
        vgg=seeded_vgg(VGG_SEED, VGG_DEPTH),
    )  # fmt: skip
    assert rel(result.select_loss[0], traj["select_loss"]) < TOL
    steps = sum(SCHEDULE["iterations"])
    assert result.history["ftr"].shape == (steps, 1)
    assert rel(result.degraded[0], traj["target_degraded"][0].transpose(1, 2, 0)) < TOL
    assert rel(result.history["ftr"][:, 0], traj["ftr_loss"]) < TOL
    assert rel(result.history["mse"][:, 0], traj["mse_loss"]) < TOL
    assert rel(result.z[0], traj["z_steps"][-1]) < TOL
    assert rel(result.images[0], traj["x_final"][0].transpose(1, 2, 0)) < TOL


TINY = {"resolution": 32, "G_ch": 4, "D_ch": 4, "n_classes": 10, "shared_dim": 16,
        "dim_z": 20, "G_attn": "0", "D_attn": "0"}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_without_d():
    """A tiny random BigGAN (32 px) with no discriminator: the VGG losses do not need one."""
    config = dgp_jax.BigGANConfig(**TINY)
    return dgp_jax.random_biggan(
        config, jax.random.PRNGKey(0), dtype=jnp.float64, discriminator=False, init="N02"
    )


@pytest.mark.cheap_compiles  # compile-bound (tests/_compiling.py)
def test_johnson_loss_in_the_solver(tiny_without_d, one_device_mesh):
    """The solver's first feature loss is Johnson's loss of G(z0) against the target."""
    model = tiny_without_d
    params = seeded_vgg(LOSS_SEED, LOSS_DEPTH)
    config = dgp_jax.SolverConfig(
        iterations=(2,), ft_num=(1,), lr_ratio=(1.0,), G_lrs=(1e-4,), z_lrs=(1e-2,),
        w_D_loss=(1.0,), w_mse=(0.1,), ftr_num=(1,), use_in=(False,), select_num=0,
        ftr_type="johnson", style_weight=100.0,
    )  # fmt: skip
    image = image_pairs(1, 32, 32)[0]
    result = dgp_jax.restore(model, image, [3], config, mesh=one_device_mesh, vgg=params)
    x0 = model.generate(jnp.zeros((1, model.config.effective_dim_z)), model.embed(jnp.array([3])))
    expected = perceptual.johnson_distance(
        perceptual.johnson_features(params, x0, style=True),
        perceptual.johnson_features(params, jnp.asarray(image), style=True),
        style_weight=100.0,
    )
    assert rel(result.history["ftr"][0], expected) < 1e-10
    assert result.history["ftr"][1, 0] < result.history["ftr"][0, 0]


def test_dgp_vgg_baseline_refuses_bad_config_and_reads_the_task(tiny_without_d, tmp_path):
    """(The method solving: test_dgp_vgg_through_compare_as_the_command_line_gives_it.)"""
    restore = baselines.get("dgp-vgg")
    phi = degradations.for_mode("SR", 32, factor=2)
    observed = phi.target_fn(image_pairs(1, 32, 32)[0])
    path = tmp_path / "vgg16-397923af.pth"
    pth.write_state_dict(path, random_state(vgg.state_shapes(), VGG_SEED))
    sets = ["resolution=none", "iterations=1", "select_num=2"]
    config = {"model": tiny_without_d, "vgg": path, "set": sets, "factor": 2}
    with pytest.raises(ValueError, match="φ 'SR' is super-resolution: pass the setting factor"):
        restore(observed, phi, seed=0, config={k: v for k, v in config.items() if k != "factor"})
    with pytest.raises(FileNotFoundError, match=r"dgp-vgg.*vgg16-397923af.pth.*download.pytorch"):
        restore(observed, phi, seed=0, config={**config, "vgg": tmp_path / "none.pth"})
    with pytest.raises(ValueError, match=r"unknown config keys \['iters'\]"):
        restore(observed, phi, seed=0, config={**config, "iters": 3})
    assert baselines.dgp_vgg.task_of(phi) == ("SR", None)  # for_mode names φ "SR"
    assert baselines.dgp_vgg.task_of(degradations.super_resolution(2)) == ("SR", 2)
    assert baselines.dgp_vgg.task_of(degradations.grayscale()) == ("colorization", None)


@pytest.mark.cheap_compiles  # compile-bound (tests/_compiling.py)
def test_dgp_vgg_through_compare_as_the_command_line_gives_it(tmp_path):
    """dgp-jax compare --methods dgp-vgg: the model and VGG16 as paths, the schedule as one
    --set text, the SR factor compare passes (φ is named 'SR'), one seed per image; its
    settings are checked before any work."""
    from dgp_jax import compare
    from dgp_jax.run.settings import RunError

    model = dgp_jax.random_biggan(dgp_jax.BigGANConfig(**TINY), jax.random.PRNGKey(0),
                                  dtype=jnp.float32, init="N02")  # fmt: skip
    model.save(tmp_path / "tiny")
    vgg_file = tmp_path / "vgg16-397923af.pth"
    pth.write_state_dict(vgg_file, random_state(vgg.state_shapes(), VGG_SEED))
    photos = [str(tmp_path / f"p{i}.png") for i in range(2)]
    for i, path in enumerate(photos):
        dgp_jax.images.save_image(image_pairs(1, 32, 32)[i][0], path)
    sets = [f"dgp-vgg.model={tmp_path / 'tiny'}", f"dgp-vgg.vgg={vgg_file}",
            "dgp-vgg.set=resolution=none;iterations=1;select_num=2"]  # fmt: skip

    def options(out, more=(), **kw):
        return compare.CompareOptions(task="SR", methods=["dgp-vgg"], inputs=photos,
                                      out=str(tmp_path / out), resolution=32, factor=2,
                                      sets=[*sets, *more], progress=False, **kw)  # fmt: skip

    report = compare.execute(options("o", batch=2))
    assert report.done == {"dgp-vgg": ["p0", "p1"]} and not report.failed
    record = json.loads((tmp_path / "o/dgp-vgg/p0_compare.done.json").read_text())
    assert record["config"]["factor"] == 2  # compare's factor reached the method
    # image p1 in a batch of two is what it is alone with its own seed
    alone = compare.execute(options("alone", batch=1))
    assert alone.done == {"dgp-vgg": ["p0", "p1"]}
    for name in ("p0", "p1"):
        a, b = (
            np.asarray(Image.open(tmp_path / f"{o}/dgp-vgg/{name}.png")) for o in ("o", "alone")
        )
        assert np.abs(a.astype(int) - b).max() <= 1, name
    for more, says in (
        ([f"dgp-vgg.vgg={tmp_path / 'none.pth'}"], "none.pth"),
        (["dgp-vgg.set=iterations=abc"], "--set iterations=abc"),
        (["dgp-vgg.iters=3"], "dgp-vgg has no setting 'iters'"),
    ):  # fmt: skip
        with pytest.raises(RunError, match=re.escape(says)):
            compare.execute(options("bad", more))
    with pytest.raises(RunError, match="the model is 32 px but the images are compared at 64"):
        compare.execute(dataclasses.replace(options("bad"), resolution=64, factor=4))
    assert not (tmp_path / "bad").exists()


def test_bad_settings_are_refused(tiny_without_d):
    with pytest.raises(ValueError, match="ftr_type must be one of"):
        dgp_jax.SolverConfig(ftr_type="vgg19")
    with pytest.raises(ValueError, match="style_weight applies to ftr_type 'johnson' only"):
        dgp_jax.SolverConfig(ftr_type="VGG", style_weight=1.0)
    image = np.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match=r"needs VGG16's weights.*vgg16-397923af.pth"):
        dgp_jax.restore(tiny_without_d, image, [0], dgp_jax.SolverConfig(ftr_type="VGG"))
    with pytest.raises(ValueError, match="DGP needs the discriminator"):
        dgp_jax.restore(tiny_without_d, image, [0], dgp_jax.SolverConfig())
