"""The Flax BigGAN against the PyTorch reference's forward passes (forward_*.npz)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgp_jax.nets.biggan import BigGANConfig
from tests.conftest import fixture_path, reference_model


def nhwc(a):
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.fixture(scope="module", params=[128, 256])
def case(request):
    res = request.param
    return res, np.load(fixture_path(f"forward_{res}_ch8_f64.npz"))


@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-10), (jnp.float32, 1e-4)])
def test_generator_matches_reference(case, dtype, tol):
    res, ref = case
    model = reference_model(res, dtype)
    z, y = jnp.asarray(ref["z"], dtype), jnp.asarray(ref["y"])
    assert z.shape[1] == model.config.effective_dim_z == (120 if res == 128 else 119)
    out = model.generate(z, y)
    assert out.shape == (2, res, res, 3) and out.dtype == dtype
    assert rel_err(out, nhwc(ref["G_out"])) < tol
    # Embeddings instead of classes give the same images (morphing interpolates them).
    assert rel_err(model.generate(z, model.embed(y)), out) < 1e-12


@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-10), (jnp.float32, 1e-4)])
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


@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-10), (jnp.float32, 1e-4)])
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
