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

# Not cheap compiles: the 8-image runs lose more at run time than the compiles save (the
# module alone, one process: 217 s with them, 171 s without).


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


def test_all_stages_and_a_warm_up_compile_the_step_once(tiny_model, one_device_mesh):
    # Forget programs an earlier test of this process compiled (the same config would
    # otherwise be a cache hit, with no trace to count).
    solve._cached_step.cache_clear()
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
    # Warm-up reaches the solver: the rates are step inputs, so a warm-up far longer than
    # the run reuses the program, and with every rate ~0 nothing moves from the start.
    kwargs = dict(classes=[1, -1], key=jax.random.PRNGKey(1), mesh=one_device_mesh)
    start = dgp_jax.restore(tiny_model, images(2), config=config(iterations=(0, 0, 0)), **kwargs)
    cold = dgp_jax.restore(tiny_model, images(2), config=config(warm_up=10**12), **kwargs)
    assert solve.TRACE_COUNTS["step"] - before == 1
    np.testing.assert_allclose(cold.z, start.z, rtol=0, atol=1e-10)
    assert np.abs(result.z - start.z).max() > 1e-4


def test_eight_devices_give_one_devices_result_and_pad_a_short_batch(tiny_model, one_device_mesh):
    assert len(jax.devices()) == 8, "conftest sets 8 host CPU devices"
    eight = Mesh(np.array(jax.devices()), ("data",))
    kwargs = dict(config=config(), key=jax.random.PRNGKey(2))
    classes = [1, 2, -1, 3, 4, -1, 5, 6]
    one = dgp_jax.restore(tiny_model, images(8, 3), classes, mesh=one_device_mesh, **kwargs)
    many = dgp_jax.restore(tiny_model, images(8, 3), classes, mesh=eight, **kwargs)
    np.testing.assert_allclose(many.images, one.images, rtol=0, atol=1e-12)
    np.testing.assert_allclose(many.z, one.z, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(many.classes, one.classes)
    for k in ("ftr", "mse", "loss"):
        np.testing.assert_allclose(many.history[k], one.history[k], rtol=1e-12)
    # 3 images on 8 devices: restore pads with copies of the last image and drops them. Each
    # image is solved on its own, so the three match the first three of the full batch (the
    # same program: one compilation for both).
    padded = dgp_jax.restore(tiny_model, images(8, 3)[:3], classes[:3], mesh=eight, **kwargs)
    assert padded.images.shape == (3, 32, 32, 3) and padded.z.shape == (3, 20)
    assert padded.history["loss"].shape == (7, 3) and padded.select_loss.shape == (3, 4)
    assert padded.stage_images.shape == (3, 3, 32, 32, 3)
    assert jax.tree.leaves(padded.params)[0].shape[0] == 3
    np.testing.assert_allclose(padded.images, many.images[:3], rtol=0, atol=1e-12)
    np.testing.assert_allclose(padded.z, many.z[:3], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(padded.classes, many.classes[:3])
    np.testing.assert_allclose(padded.history["loss"], many.history["loss"][:, :3], rtol=1e-12)
    np.testing.assert_allclose(padded.select_loss, many.select_loss[:3], rtol=1e-12)


def test_the_fine_tuning_state_is_built_on_each_images_device(tiny_model):
    """Every image's copy of G's trained part and its Adam state come out of one program,
    laid out over the mesh's images (not built on one device and moved)."""
    from jax.sharding import PartitionSpec

    from dgp_jax.optim import label_tree, make_optimizer

    eight = Mesh(np.array(jax.devices()), ("data",))
    g_trained = {"linear": tiny_model.generator["params"]["linear"]}
    labels = label_tree({"embedding": 0, "z": 0, "generator": g_trained}, update_embed=True)
    init = solve._make_state_init(make_optimizer(labels), eight)
    embeddings, z = np.ones((8, 16)), np.arange(8 * 20.0).reshape(8, 20)
    trainable, opt_state = init(embeddings, z, g_trained)
    for leaf in jax.tree.leaves((trainable, opt_state)):
        assert leaf.shape[0] == 8 and leaf.sharding.spec == PartitionSpec("data")
        assert len(leaf.addressable_shards) == 8 and leaf.addressable_shards[0].data.shape[0] == 1
    np.testing.assert_array_equal(trainable["z"], z)
    for tiled, one in zip(jax.tree.leaves(trainable["generator"]), jax.tree.leaves(g_trained),
                          strict=True):  # fmt: skip
        np.testing.assert_array_equal(tiled, np.broadcast_to(one, (8,) + one.shape))
    assert all(not np.any(a) for a in jax.tree.leaves(opt_state))  # counts and moments 0


def test_early_stop_freezes_one_image_and_leaves_the_others(tiny_model, one_device_mesh):
    cfg = config(use_in=(False, False, False))
    batch, classes = np.array(images(3, 4)), [1, 2, 3]
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(5), i))(jnp.arange(3))
    # Image 1 observes G's own output at its start plus a little noise (not none: at a zero
    # residual the feature loss's gradient is rounding noise), so its mse starts far under
    # the threshold; the noise images' mse stays far above it. Image 1 stops after its
    # first step (the reference breaks out of the stage) and starts again at the next
    # stage; the others never stop.
    start = dgp_jax.restore(tiny_model, batch, classes, cfg.replace(iterations=(0, 0, 0)), keys,
                            mesh=one_device_mesh)  # fmt: skip
    batch[1] = start.images[1] + 0.01 * images(1, 11)[0]
    first, others, stop = 1, [0, 2], 1e-3
    free = dgp_jax.restore(tiny_model, batch, classes, cfg, keys, mesh=one_device_mesh)
    assert free.history["mse"][0, first] < stop / 10
    assert free.history["mse"][:, others].min() > 10 * stop
    traces = solve.TRACE_COUNTS["step"]
    stopped = dgp_jax.restore(tiny_model, batch, classes, cfg.replace(stop_mse=stop), keys,
                              mesh=one_device_mesh)  # fmt: skip
    assert solve.TRACE_COUNTS["step"] == traces  # thresholds are data: the same program
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
    # Explicit candidates (none of class 0): the lowest-scoring pair is the start, in
    # either order of the candidates.
    z_cands = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (2, 4, 20), jnp.float64))
    y_cands = np.array([[3, 5, 8, 2], [7, 7, 7, 7]])
    for order in ([0, 1, 2, 3], [3, 2, 1, 0]):
        chosen = dgp_jax.restore(
            tiny_model, images(2), [-1, 7], config(iterations=(0, 0, 0)),
            z_candidates=z_cands[:, order], class_candidates=y_cands[:, order],
            mesh=one_device_mesh,
        )  # fmt: skip
        best = np.argmin(chosen.select_loss, axis=1)
        assert len(set(chosen.select_loss[0].tolist())) == 4  # a unique minimum
        for i in range(2):
            assert chosen.classes[i] == y_cands[i, order][best[i]]
            np.testing.assert_array_equal(chosen.z[i], z_cands[i, order][best[i]])
        if order[0] == 0:
            first = chosen
    assert chosen.classes[0] == first.classes[0]
    np.testing.assert_array_equal(chosen.z, first.z)


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
    # Each named before any work (they failed deep inside, or were taken silently: a
    # (1, 40) z_init became two latents, an out-of-range candidate class a NaN embedding).
    two = images(2)
    for kwargs, says in (
        ({"z_init": np.zeros((1, 40))}, r"z_init must be \(2, 20\) \(batch, the model's "
         r"effective_dim_z\), got"),
        ({"z_init": np.full((2, 20), np.nan)}, "z_init holds NaN or infinite values"),
        ({"z_candidates": np.zeros((3, 4, 20))}, r"z_candidates must be \(2, candidates, 20\)"),
        ({"z_candidates": np.zeros((2, 4, 20)), "class_candidates": np.zeros((2, 3), int)},
         r"class_candidates must be \(2, 4\), got \(2, 3\)"),
        ({"class_candidates": np.array([[1] * 4, [10] * 4])},
         r"class_candidates \[10\] out of range \[0, 10\)"),
        ({"key": 1.5}, "key must be an int seed, a PRNG key"),
        ({"key": np.zeros((3, 2), np.uint32)}, r"one key per image \(2, 2\); got ndarray of "
         r"dtype uint32 and shape \(3, 2\)"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=says):
            dgp_jax.restore(tiny_model, two, [1, 2], config(), **kwargs)
    with pytest.raises(ValueError, match=r"images holds no image \(batch 0\)"):
        dgp_jax.restore(tiny_model, images(2)[:0], [], config())
    # (0..255 and uint8 images: test_manipulate's test_restore_takes_int_seeds_and_refuses...)
    with pytest.raises(ValueError, match="images holds NaN or infinite values"):
        dgp_jax.restore(tiny_model, np.where(two > 0.5, np.nan, two), [1, 2], config())
    for field, says in (
        ({"G_lrs": (np.nan,) * 3}, r"G_lrs must be finite numbers >= 0, got \(nan, nan, nan\)"),
        ({"z_lrs": (-1e-3,) * 3}, "z_lrs must be finite numbers >= 0"),
        ({"iterations": (2.5,) * 3}, r"iterations must be integers, got \(2.5, 2.5, 2.5\)"),
        ({"select_num": 2.5}, "select_num must be an integer >= 0, got 2.5"),
        ({"sample_std": np.inf}, "sample_std must be a finite number >= 0, got inf"),
        ({"w_nll": True}, "w_nll must be a finite number >= 0, got True"),  # a bool is no rate
        ({"w_mse": (1.0, np.bool_(True), 1.0)}, "w_mse must be finite numbers >= 0"),
        ({"adam_eps": 0.0}, "adam_eps must be a finite number > 0, got 0.0"),
        ({"G_B2": 1.0}, r"G_B2 must be a number in \[0, 1\), got 1.0"),
        ({"G_B1": -0.5}, r"G_B1 must be a number in \[0, 1\), got -0.5"),
        ({"factor": 0}, "factor must be a positive integer or None, got 0"),
        ({"resolution": "x"}, "resolution must be a positive integer or None, got 'x'"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=says):
            config(**field)


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


def test_default_mesh_takes_the_devices_that_divide_the_batch():
    assert len(jax.devices()) == 8
    sizes = {b: solve.default_mesh(b).devices.size for b in (1, 2, 3, 5, 6, 7, 8, 9, 12, 16)}
    assert sizes == {1: 1, 2: 2, 3: 3, 5: 5, 6: 6, 7: 7, 8: 8, 9: 3, 12: 6, 16: 8}
    assert solve.default_mesh().devices.size == 8
    assert solve.default_mesh(3).axis_names == ("data",)
    assert list(solve.default_mesh(3).devices) == jax.local_devices()[:3]


def test_stop_ftr_freezes_an_image_like_stop_mse(tiny_model, one_device_mesh):
    cfg = config(use_in=(False, False, False))
    batch, classes = images(3, 4), [1, 2, 3]
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(5), i))(jnp.arange(3))
    free = dgp_jax.restore(tiny_model, batch, classes, cfg, keys, mesh=one_device_mesh)
    ftr0 = free.history["ftr"][0]
    order = np.argsort(ftr0)
    first, others = int(order[0]), [int(i) for i in order[1:]]
    stop = float((ftr0[order[0]] + ftr0[order[1]]) / 2)
    stopped = dgp_jax.restore(tiny_model, batch, classes, cfg.replace(stop_ftr=stop), keys,
                              mesh=one_device_mesh)  # fmt: skip
    # Only the lowest first-step ftr is under the threshold: that image sits out the rest of
    # the first stage (2 steps), the others step on exactly as without a threshold. (Later,
    # as ftr falls, the others may stop too.)
    active = stopped.history["active"]
    assert active[0].all() and not active[1, first]
    assert active[2, first]  # the next stage starts it again
    for i in others:
        assert active[1, i]
        np.testing.assert_array_equal(stopped.history["ftr"][:2, i], free.history["ftr"][:2, i])
    # Its z (seen through nll = mean(z^2)/2) did not move during step 1; without it did.
    nll, free_nll = stopped.history["nll"][:, first], free.history["nll"][:, first]
    assert nll[2] == nll[1] and free_nll[2] != free_nll[1]


def test_warm_up_scales_the_rates_by_global_step():
    # The reference's LRScheduler: lr * step / warm_up while step < warm_up, step counted
    # from 1 over all stages.
    cfg = config(warm_up=4)
    plain = solve.stage_table(config(), num_groups=6, num_features=8)
    warm = solve.stage_table(cfg, num_groups=6, num_features=8)
    scale = np.minimum(np.arange(1, 8) / 4, 1.0)
    np.testing.assert_allclose(warm["z_lr"], plain["z_lr"] * scale, rtol=1e-15)
    np.testing.assert_allclose(warm["group_lr"], plain["group_lr"] * scale[:, None], rtol=1e-15)
    assert warm["z_lr"][2] == 1e-3 * 3 / 4  # the second stage's rate, at step 3


def test_select_num_zero_and_one(tiny_model, one_device_mesh):
    key = jax.random.PRNGKey(8)
    kwargs = dict(classes=[-1, 5], key=key, mesh=one_device_mesh)
    # None: the reference starts at z = 0 (unknown class: 0).
    zero = dgp_jax.restore(tiny_model, images(2), config=config(iterations=(0, 0, 0),
                           select_num=0), **kwargs)  # fmt: skip
    np.testing.assert_array_equal(zero.z, np.zeros((2, 20)))
    assert zero.classes.tolist() == [0, 5] and zero.select_loss.shape == (2, 0)
    # One: that candidate, N(0, 1) (not sample_std), with a random class where unknown.
    one = dgp_jax.restore(tiny_model, images(2), config=config(iterations=(0, 0, 0),
                          select_num=1), **kwargs)  # fmt: skip
    assert one.select_loss.shape == (2, 0)
    for i in range(2):
        k = jax.random.fold_in(key, i)
        want = jax.random.normal(jax.random.fold_in(k, 0), (1, 20), jnp.float64)[0]
        np.testing.assert_array_equal(one.z[i], np.asarray(want))
    drawn = int(jax.random.randint(jax.random.fold_in(jax.random.fold_in(key, 0), 1), (1,), 0,
                                   10)[0])  # fmt: skip
    assert one.classes.tolist() == [drawn, 5]


def test_select_batch_is_shared_among_a_devices_images():
    # candidate images per pass on one device -> candidates per image per pass
    assert solve.select_chunk(16, 1, 500) == 16
    assert solve.select_chunk(16, 3, 500) == 5
    assert solve.select_chunk(16, 32, 500) == 1  # at least one candidate per image
    assert solve.select_chunk(64, 1, 5) == 5  # never more than there are
    # None: by backend (a CPU is fastest at about 8 images per pass, BENCHMARKS.md)
    assert solve.select_chunk(None, 1, 500, "cpu") == 8
    assert solve.select_chunk(None, 4, 500, "cpu") == 2
    assert solve.select_chunk(None, 8, 500, "gpu") == 16
    with pytest.raises(ValueError, match="select_batch >= 1"):
        config(select_batch=0)


def test_candidate_scores_do_not_depend_on_the_pass_size(tiny_model, one_device_mesh):
    kwargs = dict(classes=[1, -1, 3], key=jax.random.PRNGKey(4), mesh=one_device_mesh)
    results = [
        dgp_jax.restore(tiny_model, images(3, 6), config=config(
            iterations=(0, 0, 0), select_num=5, select_batch=select_batch), **kwargs)
        for select_batch in (1, None, 64)  # one candidate per image per pass; 2; all 5
    ]  # fmt: skip
    assert results[0].select_loss.shape == (3, 5)
    for other in results[1:]:
        np.testing.assert_allclose(other.select_loss, results[0].select_loss, rtol=1e-13)
        np.testing.assert_array_equal(other.z, results[0].z)
        np.testing.assert_array_equal(other.classes, results[0].classes)


def test_update_G_false_moves_only_the_latent(tiny_model, one_device_mesh):
    cfg = config(update_G=False)
    result = dgp_jax.restore(tiny_model, images(2), [1, 2], cfg, jax.random.PRNGKey(1),
                             mesh=one_device_mesh)  # fmt: skip
    start = dgp_jax.restore(tiny_model, images(2), [1, 2], cfg.replace(iterations=(0, 0, 0)),
                            jax.random.PRNGKey(1), mesh=one_device_mesh)  # fmt: skip
    # G's weights are the model's, for both images, bit for bit.
    g_params = {k: v for k, v in tiny_model.generator["params"].items() if k != "shared"}
    for i in range(2):
        mine = jax.tree.map(lambda a, i=i: np.asarray(a[i]), result.params)
        flat_mine = jax.tree_util.tree_leaves_with_path(mine)
        flat_model = dict(jax.tree_util.tree_leaves_with_path(g_params))
        assert len(flat_mine) == len(flat_model)
        for path, leaf in flat_mine:
            np.testing.assert_array_equal(leaf, np.asarray(flat_model[path]), str(path))
    # Only z moves: the class embedding belongs to G's optimiser in the reference, so it
    # stays too, even with update_embed=True.
    np.testing.assert_array_equal(result.embeddings, start.embeddings)
    assert np.abs(result.z - start.z).max() > 1e-4
    assert np.abs(result.images - start.images).max() > 1e-4
    # It is the same as solving with G's rates set to 0.
    frozen = dgp_jax.restore(tiny_model, images(2), [1, 2], config(G_lrs=(0.0, 0.0, 0.0)),
                             jax.random.PRNGKey(1), mesh=one_device_mesh)  # fmt: skip
    np.testing.assert_allclose(result.z, frozen.z, rtol=0, atol=1e-12)
