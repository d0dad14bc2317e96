"""Batch behaviour of the solver: one compilation for all stages, sharding, early stop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import dgp_jax
from dgp_jax import solve
from dgp_jax.nets.biggan import BigGANConfig

TINY = BigGANConfig(resolution=32, G_ch=4, D_ch=4, n_classes=10, shared_dim=16, dim_z=20,
                    G_attn="0", D_attn="0")  # fmt: skip


@pytest.fixture(scope="module")
def tiny_model():
    return dgp_jax.random_biggan(TINY, jax.random.PRNGKey(0), dtype=jnp.float64)


def images(n, seed=0):
    return np.asarray(jax.random.uniform(jax.random.PRNGKey(seed), (n, 32, 32, 3), jnp.float64,
                                         -1, 1))  # fmt: skip


def config(**kw):
    base = dict(dgp_mode="colorization", iterations=(2, 3, 2), ft_num=(1, 2, 9),
                lr_ratio=(0.7, 0.8, 1.0), G_lrs=(1e-3, 5e-4, 2e-4), z_lrs=(1e-2, 1e-3, 1e-4),
                w_D_loss=(1.0, 1.0, 0.5), w_mse=(0.0, 1.0, 10.0), w_nll=0.02,
                ftr_num=(5, 3, 2), use_in=(False, True, False), update_embed=True,
                select_num=4, select_batch=2, sample_std=0.5)  # fmt: skip
    base.update(kw)
    return dgp_jax.SolverConfig(**base)


def test_all_stages_compile_the_step_once(tiny_model, one_device_mesh):
    before = solve.TRACE_COUNTS["step"]
    result = dgp_jax.restore(tiny_model, images(2), [1, -1], config(), jax.random.PRNGKey(1),
                             mesh=one_device_mesh)  # fmt: skip
    # Three stages with different rates, loss weights, feature counts and IN switch.
    assert solve.TRACE_COUNTS["step"] - before == 1
    # A second batch of the same shape reuses the compiled program.
    dgp_jax.restore(tiny_model, images(2, 9), [3, 4], config(), jax.random.PRNGKey(2),
                    mesh=one_device_mesh)  # fmt: skip
    assert solve.TRACE_COUNTS["step"] - before == 1
    assert result.history["loss"].shape == (7, 2)
    # The reconstruction process: G's output at the end of each of the three stages.
    assert result.stage_images.shape == (3, 2, 32, 32, 3)
    np.testing.assert_array_equal(result.stage_images[-1], result.images)
    assert np.all(np.isfinite(result.history["loss"]))


def test_eight_devices_give_the_same_result_as_one(tiny_model, one_device_mesh):
    assert len(jax.devices()) == 8, "conftest sets 8 host CPU devices"
    eight = Mesh(np.array(jax.devices()), ("data",))
    kwargs = dict(classes=[1, 2, -1, 3, 4, -1, 5, 6], config=config(), key=jax.random.PRNGKey(2))
    one = dgp_jax.restore(tiny_model, images(8, 3), mesh=one_device_mesh, **kwargs)
    many = dgp_jax.restore(tiny_model, images(8, 3), mesh=eight, **kwargs)
    np.testing.assert_allclose(many.images, one.images, rtol=0, atol=1e-12)
    np.testing.assert_allclose(many.z, one.z, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(many.classes, one.classes)
    for k in ("ftr", "mse", "loss"):
        np.testing.assert_allclose(many.history[k], one.history[k], rtol=1e-12)


def test_early_stop_freezes_one_image_and_leaves_the_others(tiny_model, one_device_mesh):
    cfg = config(use_in=(False, False, False))
    batch, classes = images(3, 4), [1, 2, 3]
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(5), i))(jnp.arange(3))
    free = dgp_jax.restore(tiny_model, batch, classes, cfg, keys, mesh=one_device_mesh)
    # A threshold between the lowest first-step mse and the others: that image stops after
    # its first step (the reference breaks out of the stage) and starts again at the next
    # stage; the others never stop.
    mse0 = free.history["mse"][0]
    order = np.argsort(mse0)
    first, others = int(order[0]), [int(i) for i in order[1:]]
    stop = float((mse0[order[0]] + mse0[order[1]]) / 2)
    stopped = dgp_jax.restore(tiny_model, batch, classes, cfg.replace(stop_mse=stop), keys,
                              mesh=one_device_mesh)  # fmt: skip
    active = stopped.history["active"]
    assert all(active[:, i].all() for i in others)
    assert active[0, first] and not active[1, first]
    assert active[2, first] and active[5, first]  # stage starts clear the stop
    for i in others:
        np.testing.assert_allclose(stopped.images[i], free.images[i], rtol=0, atol=1e-12)
        np.testing.assert_allclose(stopped.z[i], free.z[i], rtol=0, atol=1e-12)
    assert not np.allclose(stopped.z[first], free.z[first])
    # Each image alone gives what it got in the batch, the stopped one included.
    for i in range(3):
        solo = dgp_jax.restore(tiny_model, batch[i : i + 1], [classes[i]],
                               cfg.replace(stop_mse=stop), keys[i : i + 1],
                               mesh=one_device_mesh)  # fmt: skip
        np.testing.assert_allclose(solo.z[0], stopped.z[i], rtol=0, atol=1e-12)
        np.testing.assert_allclose(solo.images[0], stopped.images[i], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(solo.history["active"][:, 0], active[:, i])


def test_unknown_class_is_chosen_with_the_latent(tiny_model, one_device_mesh):
    result = dgp_jax.restore(tiny_model, images(2), [-1, 7], config(iterations=(0, 0, 0)),
                             jax.random.PRNGKey(3), mesh=one_device_mesh)  # fmt: skip
    assert result.select_loss.shape == (2, 4)
    assert result.classes[1] == 7 and 0 <= result.classes[0] < 10
    again = dgp_jax.restore(tiny_model, images(2), [-1, 7], config(iterations=(0, 0, 0)),
                            jax.random.PRNGKey(3), mesh=one_device_mesh)  # fmt: skip
    np.testing.assert_array_equal(again.z, result.z)


def test_bad_arguments_are_named(tiny_model):
    with pytest.raises(ValueError, match=r"\(batch, 32, 32, 3\)"):
        dgp_jax.restore(tiny_model, np.zeros((1, 64, 64, 3)), [1], config())
    with pytest.raises(ValueError, match=r"classes \[10\] out of range"):
        dgp_jax.restore(tiny_model, images(1), [10], config())
    with pytest.raises(ValueError, match="ft_num has 2 entries but iterations has 3"):
        config(ft_num=(1, 2))
    with pytest.raises(ValueError, match="unknown preset"):
        dgp_jax.SolverConfig.preset("nope")
    with pytest.raises(ValueError, match="preset is for 128 px"):
        dgp_jax.restore(tiny_model, images(1), [1], dgp_jax.SolverConfig.preset("colorization"))


def test_presets_translate_the_reference_scripts():
    names = dgp_jax.preset_names()
    assert "imagenet1k_128/colorization" in names and "examples_256/morphing" in names
    c = dgp_jax.SolverConfig.preset("colorization")
    assert c.iterations == (200, 200, 300, 400, 300) and c.ftr_num == (7,) * 5
    assert c.lr_ratio == (0.7, 0.7, 0.8, 0.9, 1.0) and c.select_num == 500
    assert dgp_jax.SolverConfig.preset("inpainting", iterations=(1,) * 5).iterations == (1,) * 5
    table = solve.stage_table(c, num_groups=6, num_features=8)
    assert table["group_lr"].shape == (1400, 6)
    np.testing.assert_allclose(table["group_lr"][0], [5e-5, 3.5e-5, 0, 0, 0, 0])
    assert table["ftr_mask"][0].tolist() == [False] + [True] * 7
