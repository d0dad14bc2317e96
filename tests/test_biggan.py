"""The Flax BigGAN against the PyTorch reference's forward passes (forward_*.npz)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import dgp_jax
from dgp_jax.model import _generate, _orthogonal
from dgp_jax.nets.biggan import BigGANConfig
from tests.conftest import fixture_path, reference_model

# Forward passes: compile-bound, so compiled cheaply (tests/_compiling.py); the float64
# values still agree to 1e-13 (the module alone, one process: 164 s, against 194 s).
pytestmark = pytest.mark.cheap_compiles


def nhwc(a):
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.fixture(scope="module", params=[128, 256])
def case(request):
    res = request.param
    return res, np.load(fixture_path(f"forward_{res}_ch8_f64.npz"))


@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-13), (jnp.float32, 1e-4)])
def test_generator_matches_reference(case, dtype, tol):
    res, ref = case
    model = reference_model(res, dtype)
    z, y = jnp.asarray(ref["z"], dtype), jnp.asarray(ref["y"])
    assert z.shape[1] == model.config.effective_dim_z == (120 if res == 128 else 119)
    programs = _generate._cache_size()
    out = model.generate(z, y)
    assert out.shape == (2, res, res, 3) and out.dtype == dtype
    assert rel_err(out, nhwc(ref["G_out"])) < tol
    # Embeddings instead of classes (morphing interpolates them): the same images, from the
    # same compiled program (classes are looked up before it).
    assert rel_err(model.generate(z, model.embed(y)), out) < 1e-12
    assert _generate._cache_size() - programs <= 1


@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-13), (jnp.float32, 1e-4)])
def test_instance_norm_mode_matches_reference(case, dtype, tol):
    res, ref = case
    model = reference_model(res, dtype)
    z, y = jnp.asarray(ref["z"], dtype), jnp.asarray(ref["y"])
    # The reference captures the IN statistics of each image alone; ours are per sample,
    # so one batched call gives the same.
    out, state = model.generate(z, y, use_in=True)
    assert rel_err(out, nhwc(ref["G_out_use_in"])) < tol
    assert bool(state["captured"])
    # Held statistics: a second call with other latents keeps the captured affines.
    out2, state2 = model.generate(z * 0.5, y, use_in=True, instance_norm=state)
    leaves = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.array_equal(a, b), state, state2))
    assert all(bool(x) for x in leaves)
    fresh, _ = model.generate(z * 0.5, y, use_in=True)
    assert rel_err(out2, fresh) > 1e-3


@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-13), (jnp.float32, 1e-4)])
def test_discriminator_matches_reference(case, dtype, tol):
    res, ref = case
    model = reference_model(res, dtype)
    logits, feats = model.discriminate(
        jnp.asarray(nhwc(ref["G_out"]), dtype), jnp.asarray(ref["y"])
    )
    assert logits.shape == (2, 1)
    assert rel_err(logits, ref["D_logit_Gout_y"]) < tol
    assert len(feats) == model.config.num_d_features == (8 if res == 128 else 9)
    for i, f in enumerate(feats):
        assert rel_err(f, nhwc(ref[f"D_feat{i}_Gout"])) < tol, i
    logits, feats = model.discriminate(jnp.asarray(nhwc(ref["D_in_random"]), dtype))
    assert rel_err(logits, ref["D_logit_random_noy"]) < tol
    for i, f in enumerate(feats):
        assert rel_err(f, nhwc(ref[f"D_feat{i}_random"])) < tol, i


def test_frozen_discriminator_matches_reference(case):
    """D with its spectrally normalised weights computed once (the solver's frozen D):
    every SN layer's W / sigma is stored (conv kernels in HWIO), no raw weight is read,
    and the features equal the reference's as the recomputing D's do."""
    from dgp_jax.nets.biggan import Discriminator
    from dgp_jax.nets.layers import PARAMS, SPECTRAL_NORMALIZED, freeze_spectral_norm

    res, ref = case
    model = reference_model(res, jnp.float64)
    x = jnp.asarray(nhwc(ref["D_in_random"]), jnp.float64)
    disc = Discriminator(model.config)
    # Jitted as the solver does (solve._cached_freeze): op by op it took 15 s at 128 px.
    frozen = jax.jit(lambda v: freeze_spectral_norm(disc, v, x[:1]))(model.discriminator)
    stored = traverse_util.flatten_dict(frozen[SPECTRAL_NORMALIZED], sep=".")
    weights = [k for k in traverse_util.flatten_dict(model.discriminator[PARAMS], sep=".")
               if k.endswith(".weight") and "embed" not in k]  # fmt: skip
    # The class embedding is not used without classes, so it is not frozen either.
    assert sorted({k.rsplit(".", 1)[0] for k in stored}) == sorted(
        k.rsplit(".", 1)[0] for k in weights)  # fmt: skip
    # Convolutions keep their kernel in HWIO and the input gradient's kernel beside it.
    convs = [k for k in stored if k.endswith(".weight_hwio")]
    assert len(convs) == len([k for k in stored if k.endswith(".weight_hwio_t")]) > 0
    w = model.discriminator[PARAMS]["blocks.0.0"]["conv1"]["weight"]
    hwio = stored["blocks.0.0.conv1.weight_hwio"]
    assert hwio.shape == w.shape[2:] + w.shape[1::-1]
    np.testing.assert_array_equal(stored["blocks.0.0.conv1.weight_hwio_t"],
                                  np.transpose(hwio, (0, 1, 3, 2))[::-1, ::-1])  # fmt: skip
    # The raw weights are not read: zeroing them changes nothing.
    flat = traverse_util.flatten_dict(frozen[PARAMS])
    flat = {k: (jnp.zeros_like(v) if k[-1] == "weight" else v) for k, v in flat.items()}
    zeroed = {**frozen, PARAMS: traverse_util.unflatten_dict(flat)}
    _, feats = jax.jit(disc.apply)(zeroed, x)
    for i, f in enumerate(feats):
        assert rel_err(f, nhwc(ref[f"D_feat{i}_random"])) < 1e-13, i

    # The input gradient (the solver's loss reaches G through it) is the recomputing D's.
    def loss(variables, images):
        return sum(jnp.sum(jnp.sin(f)) for f in disc.apply(variables, images)[1])

    input_gradient = jax.jit(jax.grad(loss, argnums=1))
    expected = input_gradient(model.discriminator, x)
    assert rel_err(input_gradient(zeroed, x), expected) < 1e-12


def test_spectral_norm_gradient_flows_through_sigma_only():
    from dgp_jax.nets.layers import spectral_normalize

    w = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3, 3), jnp.float64)
    u = jax.random.normal(jax.random.PRNGKey(1), (1, 4), jnp.float64)
    u = u / jnp.linalg.norm(u)

    def sigma_of(weight):
        return jnp.sum(weight) / jnp.sum(spectral_normalize(weight, u, 1e-6))

    # With u, v held fixed, sigma = v W^T u' is linear in W: its gradient is u'^T v.
    wm = w.reshape(4, -1)
    v = u @ wm
    v = v / jnp.linalg.norm(v)
    u2 = v @ wm.T
    u2 = u2 / jnp.linalg.norm(u2)
    grad = jax.grad(sigma_of)(w).reshape(4, -1)
    # Summing the normalised weight cancels, so compare to 1e-6; a gradient through u or
    # v would be off by O(1).
    np.testing.assert_allclose(grad, (u2.T @ v), rtol=1e-6)


@pytest.mark.parametrize(
    "resolution,blocks,features", [(32, 3, 5), (64, 4, 6), (128, 5, 8), (256, 6, 9), (512, 7, None)]
)
def test_architecture_tables(resolution, blocks, features):
    cfg = BigGANConfig(resolution=resolution, G_ch=4, D_ch=4)
    assert cfg.num_g_blocks == blocks
    assert cfg.effective_dim_z == (120 // (blocks + 1)) * (blocks + 1)
    if features is None:
        with pytest.raises(ValueError, match="no discriminator at 512"):
            _ = cfg.num_d_features
    else:
        assert cfg.num_d_features == features


def test_bad_shapes_are_named():
    model = reference_model(128)
    with pytest.raises(ValueError, match=r"z must be \(batch, 120\)"):
        model.generate(jnp.zeros((1, 119)), jnp.zeros((1,), int))
    with pytest.raises(ValueError, match=r"\(batch, 128, 128, 3\) NHWC"):
        model.discriminate(jnp.zeros((1, 3, 128, 128)))
    with pytest.raises(ValueError, match="not a BigGAN resolution"):
        BigGANConfig(resolution=100)
    z = jnp.zeros((2, 120))
    with pytest.raises(ValueError, match=r"z holds 2 latents \(2, 120\) but y 3 classes"):
        model.generate(z, jnp.array([1, 2, 3]))
    # past the embedding table a class gave NaN images (negative ones wrapped round)
    # (checked on the values as given: device arrays, host arrays, lists)
    for as_given in (jnp.array, np.array, list):
        for classes, bad in (([999, 1000], "[1000]"), ([-1, 5], "[-1]")):
            message = re.escape(f"classes {bad} out of range [0, 1000)")
            with pytest.raises(ValueError, match=message):
                model.generate(z, as_given(classes))
            with pytest.raises(ValueError, match=message):
                model.embed(as_given(classes))
    with pytest.raises(ValueError, match=r"BigGANConfig.hier must be bool, got 'yes'"):
        BigGANConfig(hier="yes")
    with pytest.raises(ValueError, match=r"BigGANConfig.G_ch must be int, got True"):
        BigGANConfig(G_ch=True)


@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (40, 20), (5, 7)])  # wide, tall, wide 2-D
def test_orthogonal_weight_is_torch_orthogonal_of_the_same_draw(shape):
    # torch.nn.init.orthogonal_: the (out, rest) view is the Q of QR(A) for a normal draw A
    # (of A's transpose when out < rest), with R's diagonal made positive by Q's signs.
    w = _orthogonal(np.random.default_rng(0), shape, np.float64)
    rows, cols = shape[0], int(np.prod(shape[1:]))
    a = np.random.default_rng(0).standard_normal((rows, cols))
    q, a = (w.reshape(rows, cols).T, a.T) if rows < cols else (w.reshape(rows, cols), a)
    np.testing.assert_allclose(q.T @ q, np.eye(q.shape[1]), rtol=0, atol=1e-14)
    r = q.T @ a  # A = Q R
    np.testing.assert_allclose(np.tril(r, -1), 0, rtol=0, atol=1e-13)
    assert np.all(np.diag(r) > 0)


def test_layer_orthogonal_init_draws_narrow_dtypes_in_float32():
    # QR has no bfloat16 kernel; flax evaluates a layer's initialiser (abstractly) on every
    # apply to check a stored weight's shape, which jax 0.11 refused at bfloat16 precision
    # (the solver's step on an H200). The draw is float32's, cast.
    from dgp_jax.nets.layers import orthogonal_init

    key = jax.random.PRNGKey(3)
    wide = orthogonal_init(key, (8, 4, 3, 3), jnp.float32)
    narrow = orthogonal_init(key, (8, 4, 3, 3), jnp.bfloat16)
    assert narrow.dtype == jnp.bfloat16 and narrow.shape == (8, 4, 3, 3)
    np.testing.assert_array_equal(np.asarray(narrow), np.asarray(wide.astype(jnp.bfloat16)))
    abstract = jax.eval_shape(lambda k: orthogonal_init(k, (5, 7), jnp.bfloat16), key)
    assert abstract.dtype == jnp.bfloat16 and abstract.shape == (5, 7)
    flat = np.asarray(orthogonal_init(key, (6, 2), jnp.float64))  # float64 stays float64
    assert flat.dtype == np.float64
    np.testing.assert_allclose(flat.T @ flat, np.eye(2), rtol=0, atol=1e-14)


@pytest.mark.parametrize("init", ["ortho", "N02"])
def test_random_biggan_init(init):
    cfg = BigGANConfig(resolution=32, G_ch=4, D_ch=4, n_classes=10, shared_dim=16, dim_z=20)
    model = dgp_jax.random_biggan(cfg, jax.random.PRNGKey(0), dtype=jnp.float64, init=init)
    again = dgp_jax.random_biggan(cfg, jax.random.PRNGKey(0), dtype=jnp.float64, init=init)
    other = dgp_jax.random_biggan(cfg, jax.random.PRNGKey(1), dtype=jnp.float64, init=init)
    for net in ("generator", "discriminator"):
        # Weights and buffers only: no frozen spectral norm (init makes every collection
        # mutable; one that slipped in made the solver's D all zeros).
        assert sorted(getattr(model, net)) == ["buffers", "params"]
        flat = traverse_util.flatten_dict(dict(getattr(model, net)), sep=".")
        same = traverse_util.flatten_dict(dict(getattr(again, net)), sep=".")
        assert all(np.array_equal(flat[k], same[k]) for k in flat)
        weights = {k: np.asarray(v) for k, v in flat.items() if k.endswith(".weight")}
        assert len(weights) > 10 and all(v.dtype == np.float64 for v in weights.values())
        for name, w in weights.items():
            w = w.reshape(w.shape[0], -1)
            if init == "N02":
                assert 0.01 < w.std() < 0.03 and abs(w.mean()) < 0.01, name
            else:
                gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
                np.testing.assert_allclose(gram, np.eye(len(gram)), rtol=0, atol=1e-12)
        other_w = traverse_util.flatten_dict(dict(getattr(other, net)), sep=".")
        assert not np.array_equal(other_w["params.linear.weight"], flat["params.linear.weight"])
        # Everything else as the modules initialise it.
        for name, value in flat.items():
            last = name.rsplit(".", 1)[-1]
            if last == "u0":
                np.testing.assert_allclose(np.linalg.norm(value), 1.0, rtol=1e-12)
            elif last in ("sv0", "stored_var", "gain"):
                np.testing.assert_array_equal(value, 1.0)
            elif last in ("bias", "stored_mean", "gamma"):
                np.testing.assert_array_equal(value, 0.0, name)
    with pytest.raises(ValueError, match="init must be 'ortho' or 'N02', got 'xavier'"):
        dgp_jax.random_biggan(cfg, jax.random.PRNGKey(0), init="xavier")


def test_random_biggan_takes_an_int_seed_and_names_a_bad_key():
    config = BigGANConfig(resolution=32, G_ch=4, D_ch=4, n_classes=10, shared_dim=16, dim_z=20,
                          G_attn="0", D_attn="0")  # fmt: skip
    seeded = dgp_jax.random_biggan(config, 3, discriminator=False)
    keyed = dgp_jax.random_biggan(config, jax.random.PRNGKey(3), discriminator=False)
    for a, b in zip(jax.tree.leaves(seeded.generator), jax.tree.leaves(keyed.generator),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    for key in (1.5, None, np.zeros(3, np.uint32), np.zeros(2, np.float32)):
        with pytest.raises(ValueError, match="key must be an int seed or one PRNG key"):
            dgp_jax.random_biggan(config, key)
    with pytest.raises(TypeError, match="config must be a BigGANConfig, got dict"):
        dgp_jax.random_biggan({"resolution": 32}, 0)
