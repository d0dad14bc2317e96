"""The lowerings of per-image convolutions (dgp_jax.nets.per_image): same values, every way.

Each lowering is checked three ways: the layer rule against XLA's own batching (forward
and both gradients, float64), a whole reference trajectory in float64, and batch B and each
image solved alone in float32 against float64.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgp_jax
from dgp_jax.nets import per_image
from dgp_jax.nets.biggan import BigGANConfig
from dgp_jax.nets.per_image import LOWERINGS, attention, conv2d, per_image_lowering
from tests._compiling import setting
from tests.conftest import reference_model
from tests.test_solver import load_run, rel

LAYERS = [  # (batch, size, in, out, kernel)
    (3, 8, 5, 7, 3),
    (2, 6, 4, 3, 1),
    (1, 4, 3, 2, 3),
]


def _loss(x, w, ct):
    return jnp.sum(conv2d(x, w) * ct)


@pytest.mark.parametrize("lowering", LOWERINGS + ("auto",))
@pytest.mark.parametrize("batch,size,cin,cout,k", LAYERS)
def test_conv_rule_matches_xla_batching(lowering, batch, size, cin, cout, k):
    rng = np.random.default_rng(k + cin)
    x = jnp.asarray(rng.normal(size=(batch, 1, size, size, cin)))
    w = jnp.asarray(rng.normal(size=(batch, cout, cin, k, k)))
    ct = jnp.asarray(rng.normal(size=(batch, 1, size, size, cout)))
    grad = jax.value_and_grad(_loss, argnums=(0, 1))
    expected = jax.vmap(grad)(x, w, ct)  # no context: lax.conv and XLA's batching rule
    with per_image_lowering(lowering):
        got = jax.jit(jax.vmap(grad))(x, w, ct)
        # A kernel shared by all images (frozen layers, D) is one dense convolution.
        shared = jax.jit(jax.vmap(grad, in_axes=(0, None, 0)))(x, w[0], ct)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    want_shared = jax.vmap(grad, in_axes=(0, None, 0))(x, w[0], ct)
    for a, b in zip(jax.tree.leaves(shared), jax.tree.leaves(want_shared), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_attention_runs_per_image_with_the_same_values():
    rng = np.random.default_rng(0)
    theta, phi = rng.normal(size=(3, 1, 16, 2)), rng.normal(size=(3, 1, 4, 2))
    g, ct = rng.normal(size=(3, 1, 4, 5)), rng.normal(size=(3, 1, 16, 5))

    def loss(t, p, g_, c):
        return jnp.sum(attention(t, p, g_) * c)

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
    expected = jax.vmap(grad)(theta, phi, g, ct)
    with per_image_lowering("auto"):
        program = jax.jit(jax.vmap(grad))
        got = program(theta, phi, g, ct)
        hlo = program.lower(theta, phi, g, ct).as_text()
    assert "while" in hlo  # image by image (lax.map), not one batched attention matrix
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_lowered_programs_have_no_grouped_convolutions():
    x = jnp.ones((4, 1, 8, 8, 6))
    w = jnp.ones((4, 5, 6, 3, 3))
    ct = jnp.ones((4, 1, 8, 8, 5))
    program = jax.jit(jax.vmap(jax.grad(_loss, argnums=(0, 1))))
    with per_image_lowering("vmap"):
        grouped = program.lower(x, w, ct).as_text()
    assert "feature_group_count = 4" in grouped  # XLA's own batching: grouped convolutions
    for lowering in ("im2col", "shifted", "unrolled"):
        with per_image_lowering(lowering):
            text = jax.jit(jax.vmap(jax.grad(_loss, argnums=(0, 1)))).lower(x, w, ct).as_text()
        assert "feature_group_count = 4" not in text, lowering
        assert "batch_group_count = 4" not in text, lowering


def test_auto_choice_per_backend_and_shape():
    auto = per_image.auto_lowering
    assert auto("cpu", 8, 8, 256, 256, 1) == "im2col"
    assert auto("cpu", 8, 8, 256, 256, 3) == "im2col"  # 128 <= 256 input channels
    assert auto("cpu", 16, 16, 512, 256, 3) == "im2col"  # 512 <= 512
    assert auto("cpu", 16, 16, 256, 128, 3) == "unrolled"
    assert auto("cpu", 64, 64, 64, 32, 3) == "unrolled"
    assert auto("gpu", 64, 64, 64, 32, 3) == "im2col"


def test_unknown_lowering_is_refused():
    with pytest.raises(ValueError, match=r"lowering must be one of .*'unrolled'.*got 'grouped'"):
        per_image.check_lowering("grouped")
    model = reference_model(128)
    with pytest.raises(ValueError, match="lowering must be one of"):
        dgp_jax.restore(model, np.zeros((1, 128, 128, 3)), [0], "colorization",
                        lowering="grouped")  # fmt: skip


# The float64 reference runs with every explicit lowering ('auto', the default, runs all six
# in test_solver.py). inpainting: instance-norm mode in every stage, all groups trained;
# SR: BN mode, groups added stage by stage, the output layer shared. One run each keeps the
# suite short; by hand, vmap matched all six runs and im2col the five at 128 px (BENCHMARKS.md).
@pytest.mark.parametrize(
    "lowering,name",
    [("vmap", "inpainting"), ("shifted", "inpainting"), ("im2col", "SR"), ("unrolled", "SR")],
)
def test_reference_trajectory_with_each_lowering(lowering, name, one_device_mesh):
    traj, meta, config = load_run(128, name)
    model = reference_model(128)
    result = dgp_jax.restore(
        model, traj["target"].transpose(0, 2, 3, 1), traj["class_index"], config,
        z_init=traj["z0"], mesh=one_device_mesh, lowering=lowering,
    )  # fmt: skip
    assert rel(result.history["ftr"][:, 0], traj["ftr_loss"]) < 1e-12
    assert rel(result.history["mse"][:, 0], traj["mse_loss"]) < 1e-12
    assert rel(result.z[0], traj["z_steps"][-1]) < 1e-12
    assert rel(result.images[0], traj["x_final"][0].transpose(1, 2, 0)) < 1e-12


TINY = BigGANConfig(resolution=32, G_ch=4, D_ch=4, n_classes=10, shared_dim=16, dim_z=20,
                    G_attn="32", D_attn="0")  # fmt: skip


@pytest.fixture(scope="module")
def float32_problem(one_device_mesh):
    """A tiny float32 model, 4 images, a 2-stage SR schedule, and the float64 solve of it
    (the same for every lowering, to 1e-12: test_reference_trajectory_with_each_lowering)."""
    model = dgp_jax.random_biggan(TINY, jax.random.PRNGKey(3), dtype=jnp.float32)
    images = np.asarray(jax.random.uniform(jax.random.PRNGKey(4), (4, 32, 32, 3), jnp.float32,
                                           -1, 1))  # fmt: skip
    config = dgp_jax.SolverConfig(
        dgp_mode="SR", iterations=(3, 3), ft_num=(2, 5), lr_ratio=(0.8, 1.0), G_lrs=(5e-4, 2e-4),
        z_lrs=(1e-2, 1e-3), w_D_loss=(1.0, 1.0), w_mse=(1.0, 10.0), w_nll=0.02, ftr_num=(4, 2),
        use_in=(False, True), update_embed=True, select_num=0, factor=2,
    )  # fmt: skip
    z0 = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (4, TINY.effective_dim_z)))
    exact = dgp_jax.restore(model.astype(jnp.float64), images.astype(np.float64), [1, 2, 3, 4],
                            config, z_init=z0, mesh=one_device_mesh)  # fmt: skip
    return model, images, config, z0, exact


@pytest.mark.cheap_compiles  # compile-bound (tests/_compiling.py)
def test_float32_batch_and_each_image_alone_are_float32_rounding_of_float64(
    float32_problem, one_device_mesh
):
    # Not bitwise: Adam's first steps move every weight by about its rate whatever the size
    # of its gradient, so weights and latents whose gradients are at float32 rounding level
    # (their effect removed by instance norm, stage 2 here) step either way, in any two
    # float32 programs: a batch and one image, two lowerings, or float32 and float64 (the
    # 5e-3 the README publishes for float32). Measured: 3 of the 4 images within 5e-6 of
    # float64 together and alone; one 4.3e-3 away in 3 of its 4 float32 runs.
    # One test for both lowerings, so that xdist's workers do not each solve the float64
    # problem (the fixture is most of the cost). Each image alone with the default lowering;
    # with im2col the batch only (each alone would compile another program: test time).
    model, images, config, z0, exact = float32_problem
    for lowering in ("auto", "im2col"):
        kwargs = dict(config=config, mesh=one_device_mesh, lowering=lowering)
        together = dgp_jax.restore(model, images, [1, 2, 3, 4], z_init=z0, **kwargs)
        assert together.images.dtype == np.float32
        for i in range(4):
            results = [(together, i)]
            if lowering == "auto":
                alone = dgp_jax.restore(model, images[i : i + 1], [i + 1],
                                        z_init=z0[i : i + 1], **kwargs)  # fmt: skip
                results.append((alone, 0))
            for result, j in results:
                np.testing.assert_allclose(result.images[j], exact.images[i], rtol=0, atol=5e-3,
                                           err_msg=lowering)  # fmt: skip
                np.testing.assert_allclose(result.z[j], exact.z[i], rtol=0, atol=5e-3,
                                           err_msg=lowering)  # fmt: skip
                assert np.abs(result.images[j] - exact.images[i]).max() > 1e-8  # float32 ran


def test_parameters_no_stage_trains_are_shared_and_returned_unchanged(one_device_mesh):
    model = dgp_jax.random_biggan(TINY, jax.random.PRNGKey(3), dtype=jnp.float64)
    config = dgp_jax.SolverConfig(
        dgp_mode="reconstruct", iterations=(2, 2), ft_num=(1, 2), lr_ratio=(1.0, 1.0),
        G_lrs=(1e-3, 1e-3), z_lrs=(1e-2, 1e-2), w_D_loss=(1.0, 1.0), w_mse=(1.0, 1.0),
        w_nll=0.02, ftr_num=(4, 4), use_in=(False, False), update_embed=False, select_num=0,
    )  # fmt: skip
    images = np.zeros((2, 32, 32, 3))
    result = dgp_jax.restore(model, images, [1, 2], config, jax.random.PRNGKey(0),
                             mesh=one_device_mesh)  # fmt: skip
    original = model.generator["params"]
    for i in range(2):
        for name in ("blocks.1.0", "blocks.2.0", "output_layer.0", "output_layer.2"):
            for a, b in zip(jax.tree.leaves(result.params[name]), jax.tree.leaves(original[name]),
                            strict=True):  # fmt: skip
                np.testing.assert_array_equal(a[i], b)
        # groups 0 (linear) and 1 (blocks.0) were trained
        assert not np.array_equal(result.params["blocks.0.0"]["conv1"]["weight"][i],
                                  original["blocks.0.0"]["conv1"]["weight"])  # fmt: skip
        assert not np.array_equal(result.params["linear"]["weight"][i],
                                  original["linear"]["weight"])  # fmt: skip


def test_layer_benchmark_covers_every_generator_convolution():
    from dgp_jax.nets.biggan import BigGANConfig
    from tests.conftest import load_experiment

    shapes = load_experiment("bench_lowering").generator_conv_shapes(
        BigGANConfig(resolution=64, G_ch=16, D_ch=16)
    )
    assert shapes[:3] == [(8, 256, 256, 3), (8, 256, 256, 1), (16, 256, 128, 3)]
    assert shapes[-1] == (64, 32, 3, 3)  # the output layer
    assert len(shapes) == 12  # 4 blocks x (conv1, conv2, shortcut), deduplicated, + output


def test_layer_benchmark_writes_each_layer_as_it_is_measured(tmp_path, capsys):
    from tests.conftest import load_experiment

    bench = load_experiment("bench_lowering")
    out = tmp_path / "layers.jsonl"
    bench.main(["--resolution", "32", "--ch", "4", "--batch", "1", "--lowerings",
                "vmap,im2col", "--repeats", "1", "--out", str(out)])  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 7  # 32 px: 3 blocks x (conv1, conv2, shortcut), deduplicated, + output
    assert rows[0]["shape"] == "8x8 16->16 k3" and rows[-1]["shape"] == "32x32 16->3 k3"
    assert all(r["batch"] == 1 and r["precision"] == "float32" for r in rows)
    assert all(sorted(r["ms"]) == ["im2col", "vmap"] and r["fastest"] in r["ms"] for r in rows)
    assert "8x8 16->16 k3" in capsys.readouterr().out  # the table, row by row


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch", "8,x"], "--batch: expected integers like 8,32, got '8,x'"),
        (["--precision", "float16"], "--precision: unknown ['float16']"),
        (["--lowerings", "im2col,fast"], "--lowerings: unknown ['fast']"),
    ],
)
def test_layer_benchmark_refuses_bad_flags(argv, message, capsys):
    from tests.conftest import load_experiment

    with pytest.raises(SystemExit) as exit_info:
        load_experiment("bench_lowering").main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.cheap_compiles  # compile-bound (tests/_compiling.py)
def test_solver_step_runs_both_networks_attention_image_by_image(monkeypatch, one_device_mesh):
    # G attends at 32 x 32 (1024 positions), D at 16 x 16 and 8 x 8 (256, 64): the recorded
    # sizes tell the two networks apart. D's attention in the step is traced inside the
    # lowering context (2576322); its features of the targets, outside the step, are not.
    from dgp_jax.nets import layers

    calls = []
    original = layers.attention

    def recording(theta, phi, g):
        calls.append((theta.shape[-2], per_image._ACTIVE.get()))
        return original(theta, phi, g)

    monkeypatch.setattr(layers, "attention", recording)
    config_ = BigGANConfig(resolution=32, G_ch=4, D_ch=4, n_classes=10, shared_dim=16,
                           dim_z=20, G_attn="32", D_attn="16")  # fmt: skip
    model = dgp_jax.random_biggan(config_, jax.random.PRNGKey(3), dtype=jnp.float32)
    config = dgp_jax.SolverConfig(
        dgp_mode="reconstruct", iterations=(1,), ft_num=(1,), lr_ratio=(1.0,), G_lrs=(1e-3,),
        z_lrs=(1e-2,), w_D_loss=(1.0,), w_mse=(1.0,), w_nll=0.02, ftr_num=(4,),
        use_in=(False,), update_embed=False, select_num=0,
    )  # fmt: skip
    dgp_jax.restore(model, np.zeros((2, 32, 32, 3), np.float32), [1, 2], config,
                    jax.random.PRNGKey(0), mesh=one_device_mesh, lowering="im2col")  # fmt: skip
    # G's one attention layer and D's four, all traced in the step with the lowering
    in_step = [call for call in calls if call[1] is not None]
    assert in_step == [(1024, "im2col"), (256, "im2col")] + [(64, "im2col")] * 3, calls
    assert (256, None) in calls  # the targets' features, outside the step


@pytest.mark.cheap_compiles
def test_the_cheap_compiles_marker_lowers_the_optimisation_for_its_test():
    assert setting("jax_disable_most_optimizations") is True


def test_tests_without_the_marker_compile_with_full_optimisation():
    # Also the check that no marked test (or fast_compiles user) leaks the setting.
    assert setting("jax_disable_most_optimizations") is False
