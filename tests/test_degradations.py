"""Degradations φ against the PyTorch reference's fixtures, plus unit checks.

The fixtures (float64, NCHW) hold the reference's φ(target) and G's final output with the
losses the reference measured on it, so both sides of φ are checked: target_fn must
reproduce ``target_degraded``, and generator_fn(x_final) must give the reference's
``mse_loss`` / ``l1_loss`` against it.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgp_jax import degradations as dg
from tests.conftest import fixture_path

CASES = [
    "128_ch8_f64_colorization",
    "128_ch8_f64_inpainting",
    "128_ch8_f64_SR",
    "128_ch8_f64_hybrid",
    "128_ch8_f64_reconstruct",
    "256_ch8_f64_colorization",
]


def load_case(tag: str) -> tuple[dict[str, np.ndarray], dict]:
    """The fixture's arrays, transposed to NHWC, and its json."""
    path = fixture_path(f"traj_{tag}.npz")  # missing fixtures fail the test, not skip it
    with np.load(path) as data:
        arrays = {
            k: np.transpose(data[k], (0, 2, 3, 1)) for k in ("target", "target_degraded", "x_final")
        }
    meta = json.loads(path.with_suffix(".json").read_text())
    return arrays, meta


# ---------------------------------------------------------------------------------------------
# Against the reference fixtures
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", CASES)
def test_target_side_matches_reference(tag: str) -> None:
    arrays, meta = load_case(tag)
    target = arrays["target"]
    deg = dg.for_mode(meta["mode"], target.shape[1])
    out = deg.target_fn(target)
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float64 and out.shape == target.shape
    np.testing.assert_allclose(out, arrays["target_degraded"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("tag", CASES)
def test_generator_side_matches_reference_losses(tag: str) -> None:
    arrays, meta = load_case(tag)
    deg = dg.for_mode(meta["mode"], arrays["target"].shape[1])
    x_map = np.asarray(jax.jit(deg.generator_fn)(jnp.asarray(arrays["x_final"])))
    assert x_map.dtype == np.float64 and x_map.shape == arrays["x_final"].shape
    diff = x_map - arrays["target_degraded"]
    # The reference reports its [-1, 1] losses rescaled to the [0, 1] scale.
    np.testing.assert_allclose(np.mean(diff**2) / 4, meta["final"]["mse_loss"], rtol=1e-9)
    np.testing.assert_allclose(np.mean(np.abs(diff)) / 2, meta["final"]["l1_loss"], rtol=1e-9)


def test_sr_target_quantises_like_the_reference() -> None:
    # The reference's SR target goes through uint8 and float32 (pil_to_np) before coming
    # back to the input dtype: a float64 result must carry exactly that rounding.
    arrays, _ = load_case("128_ch8_f64_SR")
    low = dg.downsample_target(arrays["target"], 4)
    assert low.shape == (1, 32, 32, 3) and low.dtype == np.float64
    codes = (low + 1) / 2
    np.testing.assert_array_equal(codes, (np.round(codes * 255) / 255).astype(np.float32))


def test_sr_target_refuses_nan_instead_of_quantising_it_to_black() -> None:
    image = np.zeros((2, 8, 8, 3))
    image[1, 2, 5, 0] = np.nan
    with pytest.raises(ValueError, match=r"\(2, 8, 8, 3\) hold NaN at \[1, 2, 5, 0\]"):
        dg.downsample_target(image, 2)
    with pytest.raises(ValueError, match="hold NaN"):
        dg.super_resolution(2).target_fn(image)
    # an infinity is clipped to the 8-bit range like any value out of [-1, 1]
    image[1, 2, 5, 0] = np.inf
    low = dg.downsample_target(image, 2)
    assert low.shape == (2, 4, 4, 3) and np.isfinite(low).all() and low[1, 1, 2, 0] > 0


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_lanczos2_kernel_shape_sum_symmetry(factor: int) -> None:
    k = dg.lanczos2_kernel(factor)
    assert k.shape == (4 * factor, 4 * factor) and k.dtype == np.float64
    np.testing.assert_allclose(k.sum(), 1.0, rtol=0, atol=1e-14)
    np.testing.assert_allclose(k, k[::-1, :], rtol=0, atol=1e-16)
    np.testing.assert_allclose(k, k[:, ::-1], rtol=0, atol=1e-16)
    np.testing.assert_allclose(k, k.T, rtol=0, atol=1e-16)
    # Separable: the outer product of its own (normalised) marginal.
    taps = k.sum(axis=0)
    np.testing.assert_allclose(k, np.outer(taps, taps), rtol=0, atol=1e-15)


def test_lanczos2_kernel_factor1_closed_form() -> None:
    # With factor 1 the taps sit at distances 1.5 and 0.5, where Lanczos-2 is in the ratio
    # -1 : 9, i.e. the classic [-1, 9, 9, -1] / 16 half-pixel filter.
    taps = np.array([-1.0, 9.0, 9.0, -1.0]) / 16
    np.testing.assert_allclose(dg.lanczos2_kernel(1), np.outer(taps, taps), rtol=0, atol=1e-15)


def test_upsample_bilinear_by_hand() -> None:
    # align_corners=False, x2: output pixel centres map to -0.25 (clamped to 0), 0.25, 0.75,
    # 1.25 (upper neighbour clamped), so each row/column interpolates with weights
    # (1, 0), (0.75, 0.25), (0.25, 0.75), (0, 1).
    x = np.array([[0.0, 1.0], [2.0, 3.0]])[None, :, :, None]
    expected = np.array(
        [
            [0.0, 0.25, 0.75, 1.0],
            [0.5, 0.75, 1.25, 1.5],
            [1.5, 1.75, 2.25, 2.5],
            [2.0, 2.25, 2.75, 3.0],
        ]
    )
    out = np.asarray(dg.upsample_bilinear(jnp.asarray(x), 2))
    assert out.shape == (1, 4, 4, 1) and out.dtype == np.float64
    np.testing.assert_array_equal(out[0, :, :, 0], expected)


def test_upsample_bilinear_agrees_with_jax_resize() -> None:
    # jax.image.resize's bilinear upsampling is the same map (not bitwise the same sums).
    x = np.random.default_rng(0).uniform(-1, 1, (2, 8, 6, 3))
    ours = np.asarray(dg.upsample_bilinear(jnp.asarray(x), 4))
    theirs = np.asarray(jax.image.resize(jnp.asarray(x), (2, 32, 24, 3), "bilinear"))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-14)


def test_downsample_generator_shape_dtype_and_constant() -> None:
    x = jnp.full((2, 16, 24, 3), 0.25, dtype=jnp.float32)
    out = dg.downsample_generator(x, 4)
    assert out.shape == (2, 4, 6, 3) and out.dtype == jnp.float32
    # Kernel sums to 1 and the padding replicates, so a constant image stays constant.
    np.testing.assert_allclose(np.asarray(out), 0.25, rtol=0, atol=1e-6)


def test_to_gray_and_center_mask() -> None:
    x = np.random.default_rng(1).uniform(-1, 1, (2, 5, 5, 3))
    gray = np.asarray(dg.to_gray(jnp.asarray(x)))
    expected = 0.2989 * x[..., 0] + 0.5870 * x[..., 1] + 0.1140 * x[..., 2]
    for c in range(3):
        np.testing.assert_allclose(gray[..., c], expected, rtol=0, atol=1e-15)

    assert dg.hole_box(128, 128) == (43, 85)  # 42 px hole
    assert dg.hole_box(256, 256) == (85, 171)  # 86 px hole
    mask = dg.center_mask(128, 128, np.float64)
    assert mask.shape == (128, 128, 1) and mask.dtype == np.float64
    assert mask.sum() == 128 * 128 - 42 * 42
    assert np.all(mask[43:85, 43:85] == 0)
    assert mask[42, 42] == 1 and mask[85, 85] == 1


def test_apply_mask_per_image_masks() -> None:
    x = jnp.ones((2, 4, 4, 3))
    masks = np.ones((2, 4, 4, 1))
    masks[0, 0, 0] = 0
    masks[1, 3, 3] = 0
    out = np.asarray(dg.apply_mask(x, masks))
    assert out[0, 0, 0].tolist() == [0, 0, 0] and out[0, 3, 3].tolist() == [1, 1, 1]
    assert out[1, 3, 3].tolist() == [0, 0, 0] and out[1, 0, 0].tolist() == [1, 1, 1]


def test_compose_order_and_custom() -> None:
    def add(v: float) -> dg.Degradation:
        return dg.custom(lambda x: x + v, name=f"add{v}")

    def mul(v: float) -> dg.Degradation:
        return dg.custom(lambda x: x * v, name=f"mul{v}")

    deg = dg.compose(add(1.0), mul(2.0))  # (x + 1) * 2, not x * 2 + 1
    assert deg.name == "add1.0+mul2.0"
    x = np.zeros((1, 2, 2, 3))
    out_t = deg.target_fn(x)
    assert isinstance(out_t, np.ndarray) and out_t.dtype == np.float64
    np.testing.assert_array_equal(out_t, 2.0)
    np.testing.assert_array_equal(np.asarray(deg.generator_fn(jnp.asarray(x))), 2.0)
    assert dg.compose().name == "identity"
    # for_mode('hybrid') is SR, then gray, then mask.
    hybrid = dg.for_mode("hybrid", 16)
    manual = dg.compose(dg.super_resolution(2), dg.grayscale(), dg.inpainting(None, 16, 16))
    y = np.random.default_rng(2).uniform(-1, 1, (1, 16, 16, 3))
    np.testing.assert_array_equal(hybrid.target_fn(y), manual.target_fn(y))
    np.testing.assert_array_equal(
        np.asarray(hybrid.generator_fn(jnp.asarray(y))),
        np.asarray(manual.generator_fn(jnp.asarray(y))),
    )


@pytest.mark.parametrize(
    "mode", ["reconstruct", "defense", "defence", "jitter", "morphing", "category_transfer"]
)
def test_identity_modes(mode: str) -> None:
    y = np.random.default_rng(3).uniform(-1, 1, (1, 8, 8, 3))
    deg = dg.for_mode(mode, 8)
    np.testing.assert_array_equal(deg.target_fn(y), y)
    np.testing.assert_array_equal(np.asarray(deg.generator_fn(jnp.asarray(y))), y)


# ---------------------------------------------------------------------------------------------
# Differentiability and batching
# ---------------------------------------------------------------------------------------------


def test_grad_through_composed_degradation_is_finite() -> None:
    deg = dg.compose(dg.super_resolution(4), dg.grayscale(), dg.inpainting(None, 32, 32))
    x = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (2, 32, 32, 3)))
    target = jnp.asarray(deg.target_fn(np.asarray(x) * 0.5))

    def loss(v: jax.Array) -> jax.Array:
        return jnp.mean((deg.generator_fn(v) - target) ** 2)

    g = jax.jit(jax.grad(loss))(x)
    assert g.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(g)))
    assert float(jnp.abs(g).max()) > 0

    # The mask alone hides the hole from the loss entirely (in the composition above the
    # SR blur reaches across the hole's edge, so there it does not).
    mask_only = dg.inpainting(None, 32, 32)
    g_mask = jax.grad(lambda v: jnp.sum(mask_only.generator_fn(v) ** 2))(x)
    assert float(jnp.abs(g_mask[:, 11:21, 11:21]).max()) == 0.0
    assert float(jnp.abs(g_mask[:, :11]).min()) > 0.0


def test_vmap_equals_batched() -> None:
    deg = dg.for_mode("hybrid", 32)
    x = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, (3, 32, 32, 3)))
    fn = jax.jit(deg.generator_fn)
    batched = np.asarray(fn(x))
    mapped = np.asarray(jax.jit(jax.vmap(deg.generator_fn))(x))  # each call sees (H, W, 3)
    single = np.stack([np.asarray(fn(x[i : i + 1]))[0] for i in range(3)])
    np.testing.assert_allclose(mapped, batched, rtol=0, atol=1e-15)
    np.testing.assert_allclose(single, batched, rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_unknown_mode_lists_valid_modes() -> None:
    with pytest.raises(ValueError, match="'deblur'") as info:
        dg.for_mode("deblur", 128)
    for mode in ("reconstruct", "colorization", "inpainting", "SR", "hybrid"):
        assert mode in str(info.value)


def test_mismatched_mask_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(64, 64, 1\).*128x128"):
        dg.for_mode("inpainting", 128, mask=np.ones((64, 64, 1)))
    deg = dg.inpainting(np.ones((64, 64, 1)))
    with pytest.raises(ValueError, match=r"\(64, 64, 1\).*\(1, 32, 32, 3\)"):
        deg.generator_fn(jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match=r"\(64, 64, 1\).*\(1, 32, 32, 3\)"):
        deg.target_fn(np.zeros((1, 32, 32, 3)))
    # three masks for two images: named, where broadcasting failed inside
    with pytest.raises(ValueError, match=r"3 masks \(3, 8, 8, 1\) for 2 images \(2, 8, 8, 3\)"):
        dg.apply_mask(jnp.zeros((2, 8, 8, 3)), jnp.ones((3, 8, 8, 1)))
    # values: a 0/255 mask scaled the kept pixels by 255, a NaN one poisoned them, silently
    for mask, says in ((np.full((8, 8), 255, np.uint8), r"got \[255, 255\] \(a 0/255 mask: "),
                       (np.full((8, 8), np.nan), r"got \[nan, nan\] with NaN"),
                       (-np.ones((8, 8)), r"got \[-1, -1\]")):  # fmt: skip
        with pytest.raises(ValueError, match=r"mask values must be finite and in \[0, 1\] "
                                             r"\(1 = keep, 0 = hole\), " + says):  # fmt: skip
            dg.inpainting(mask)
    assert dg.inpainting(np.full((8, 8), 0.5)).mask.max() == 0.5  # soft masks stay allowed
    with pytest.raises(ValueError, match="image size must be integers, got height=32.5"):
        dg.inpainting(height=32.5, width=32.5)


def test_factor_must_divide_size() -> None:
    with pytest.raises(ValueError, match="factor 3 .*resolution 128"):
        dg.for_mode("SR", 128, factor=3)
    with pytest.raises(ValueError, match="factor 3 .*30x32"):
        dg.downsample_generator(jnp.zeros((1, 30, 32, 3)), 3)
    with pytest.raises(ValueError, match="factor 4 .*30x32"):
        dg.super_resolution(4).target_fn(np.zeros((1, 30, 32, 3)))
    with pytest.raises(ValueError, match="0"):
        dg.super_resolution(0)


def test_float32_follows_input_and_degradation_is_a_static_argument() -> None:
    deg = dg.for_mode("hybrid", 32)
    x64 = np.random.default_rng(6).uniform(-1, 1, (2, 32, 32, 3))
    x32 = x64.astype(np.float32)
    assert deg.target_fn(x32).dtype == np.float32
    np.testing.assert_allclose(deg.target_fn(x32), deg.target_fn(x64), rtol=0, atol=1e-6)

    # Frozen dataclass, hence hashable: it can be a static argument of jit.
    apply = jax.jit(lambda d, v: d.generator_fn(v), static_argnums=0)
    out32 = apply(deg, jnp.asarray(x32))
    out64 = apply(deg, jnp.asarray(x64))
    assert out32.dtype == jnp.float32 and out64.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out32), np.asarray(out64), rtol=0, atol=1e-5)


@pytest.mark.cheap_compiles  # compile-bound (tests/_compiling.py)
def test_a_custom_degradation_is_what_the_solver_fits(one_device_mesh):
    """restore(..., degradation=custom(fn)): the observation is fn(image), and the MSE the
    solver reports at its first step is between fn(G(z0)) and it. A φ that changes the
    image size is refused, naming it (the feature loss runs D on φ(G(z)))."""
    import dgp_jax

    def pool2(x):  # 2x2 average pooling
        *lead, h, w, c = x.shape
        return x.reshape(*lead, h // 2, 2, w // 2, 2, c).mean(axis=(-4, -2))

    def blocky(x):  # a user's φ: 2x2 blocks, at the image's size
        return jnp.repeat(jnp.repeat(pool2(x), 2, axis=-3), 2, axis=-2)

    config = dgp_jax.BigGANConfig(resolution=32, G_ch=4, D_ch=4, n_classes=10, shared_dim=16,
                                  dim_z=20, G_attn="0", D_attn="0")  # fmt: skip
    model = dgp_jax.random_biggan(config, jax.random.PRNGKey(3), dtype=jnp.float32)
    images = np.asarray(jax.random.uniform(jax.random.PRNGKey(4), (2, 32, 32, 3), jnp.float32,
                                           -1, 1))  # fmt: skip
    z0 = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (2, 20), jnp.float32))
    classes = np.array([1, 2])
    solver = dgp_jax.SolverConfig(
        dgp_mode="reconstruct", iterations=(2,), ft_num=(2,), lr_ratio=(1.0,), G_lrs=(1e-4,),
        z_lrs=(1e-3,), w_D_loss=(1.0,), w_mse=(1.0,), w_nll=0.02, ftr_num=(2,), use_in=(False,),
        update_embed=False, select_num=0,
    )  # fmt: skip
    result = dgp_jax.restore(model, images, classes, solver, 0, z_init=z0,
                             degradation=dg.custom(blocky, name="blocky"),
                             mesh=one_device_mesh)  # fmt: skip
    want = np.asarray(blocky(images))
    assert want.shape == (2, 32, 32, 3) and not np.allclose(want, images, atol=0.1)
    np.testing.assert_allclose(result.degraded, want, rtol=0, atol=1e-6)
    first = np.asarray(blocky(model.generate(z0, classes)))
    first = np.mean(np.square(first - want), axis=(1, 2, 3))
    np.testing.assert_allclose(result.history["mse"][0], first, rtol=1e-5)

    with pytest.raises(
        ValueError,
        match=r"degradation 'pool2' turns \(32, 32, 3\) images into "
        r"\(16, 16, 3\) observations; φ must keep the model's image size",
    ):
        dgp_jax.restore(model, images, classes, solver, 0, z_init=z0,
                        degradation=dg.custom(pool2, name="pool2"))  # fmt: skip
    # observed=True never runs target_fn: the JAX side is traced on its own, before any solve
    with pytest.raises(
        ValueError,
        match=r"degradation 'pool2': its generator_fn turns \(1, 32, 32, 3\) images into "
        r"\(1, 16, 16, 3\); φ\(G\(z\)\) must keep the model's image size",
    ):
        dgp_jax.restore(model, images, classes, solver, 0, z_init=z0, observed=True,
                        degradation=dg.custom(pool2, name="pool2"))  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"degradation 'numpy': its generator_fn fails on a \(1, 32, 32, 3\) float32 "
        r"image: The numpy.ndarray conversion method __array__\(\) was called on traced array",
    ):
        numpy_phi = dg.custom(lambda x: np.asarray(x) * 0.5, name="numpy")
        dgp_jax.restore(model, images, classes, solver, 0, z_init=z0, observed=True,
                        degradation=numpy_phi)  # fmt: skip
