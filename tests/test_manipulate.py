"""Jitter, morphing and category transfer on a solved tiny float64 BigGAN.

Every check compares against a *direct render*: ``model.generate(z_i, e_i, params=W_i)``
with the result's final z, embedding and fine-tuned params of image i (not
``result.images``, which is G's output at the last step, before the final update).
The calls share a few shapes so that each compiled function is traced once or twice.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from dgp_jax import (
    BigGAN,
    BigGANConfig,
    SolverConfig,
    SolveResult,
    manipulate,
    random_biggan,
    restore,
)
from dgp_jax.manipulate import category_transfer, jitter, morph, morph_batch

TINY = BigGANConfig(
    resolution=32, G_ch=4, D_ch=4, n_classes=10, shared_dim=16, dim_z=20, G_attn="0", D_attn="0"
)
SOLVER = SolverConfig(
    dgp_mode="reconstruct", iterations=(2,), ft_num=(9,), lr_ratio=(1.0,), G_lrs=(1e-3,),
    z_lrs=(1e-2,), w_D_loss=(1.0,), w_mse=(1.0,), w_nll=0.02, ftr_num=(3,), use_in=(False,),
    select_num=2, select_batch=2,
)  # fmt: skip
CLASSES = np.array([1, 2, 3])
TOL = 1e-12
# Shared shapes: jitter renders 2 stds x 2 samples = 4 per image, as the 4 transfer classes.
STDS, SAMPLES = (0.0, 0.5), 2
TRANSFER = [2, 0, 1, 9]


@pytest.fixture(scope="module")
def solved():
    # One device: the sharded solve is tested elsewhere, and 8 host devices cost time here.
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    model = random_biggan(TINY, jax.random.PRNGKey(0), dtype=jnp.float64)
    images = jax.random.uniform(jax.random.PRNGKey(1), (3, 32, 32, 3), jnp.float64, -1.0, 1.0)
    result = restore(model, np.asarray(images), CLASSES, SOLVER, jax.random.PRNGKey(2), mesh=mesh)
    return model, result


def params_of(result: SolveResult, i: int) -> dict:
    return jax.tree.map(lambda a: a[i], result.params)


def direct(model: BigGAN, params: dict, z, embedding) -> np.ndarray:
    """One image rendered straight from its final state: (dim_z,), (shared_dim,) -> (R, R, 3)."""
    z, embedding = jnp.asarray(z)[None], jnp.asarray(embedding)[None]
    return np.asarray(model.generate(z, embedding, params=params))[0]


def render(model: BigGAN, result: SolveResult, i: int) -> np.ndarray:
    """Image i of ``result`` rendered directly from its final z, embedding and params."""
    return direct(model, params_of(result, i), result.z[i], result.embeddings[i])


def close(a, b, tol: float = TOL) -> None:
    np.testing.assert_allclose(a, b, rtol=0, atol=tol)


def test_solved_params_are_per_image(solved):
    # The manipulations only mean something if the fine-tuned generators differ per image.
    _, result = solved
    w = np.asarray(result.params["linear"]["weight"])
    assert w.shape[0] == 3 and not np.allclose(w[0], w[1])


# --------------------------------------------------------------------------- morph
def test_morph_endpoints_reproduce_both_images(solved):
    model, result = solved
    frames = morph(model, result, 0, result, 2)  # default: 11 frames, alpha = i / 10
    assert frames.shape == (11, 32, 32, 3)
    close(frames[0], render(model, result, 0))  # alpha 0: image a
    close(frames[-1], render(model, result, 2))  # alpha 1: image b
    assert np.abs(frames[0] - frames[-1]).max() > 1e-3


def test_morph_interpolates_every_weight_latent_and_embedding(solved):
    model, result = solved
    alphas = np.linspace(-0.5, 1.5, 11)  # extrapolation is allowed; same shape as default
    frames = morph(model, result, 1, result, 0, alphas)
    for k in (2, 10):  # alpha 0 (inside) and 1.5 (extrapolated)
        a = alphas[k]
        mix = lambda x, y, a=a: (1 - a) * x + a * y  # noqa: E731
        params = jax.tree.map(mix, params_of(result, 1), params_of(result, 0))
        z = mix(result.z[1], result.z[0])
        emb = mix(result.embeddings[1], result.embeddings[0])
        close(frames[k], direct(model, params, z, emb))


def test_morph_between_two_results(solved):
    model, result = solved
    flipped = jax.tree.map(lambda a: a[::-1], result)  # image i of flipped = image 2 - i
    frames = morph(model, result, 0, flipped, 0)
    close(frames[0], render(model, result, 0))
    close(frames[-1], render(model, result, 2))


def test_morph_batch_equals_per_pair_morph(solved):
    model, result = solved
    pairs = [(0, 1), (2, 0)]
    # Warm the default 11-frame morph here, so the count below does not depend on which
    # tests ran before: batch_size 11 chunks the 22 frames in that shape, no new compile.
    single = {pair: morph(model, result, pair[0], result, pair[1]) for pair in pairs}
    before = manipulate.TRACE_COUNTS["morph"]
    batched = morph_batch(model, result, pairs, batch_size=11)
    assert manipulate.TRACE_COUNTS["morph"] == before
    assert batched.shape == (2, 11, 32, 32, 3)
    for p, pair in enumerate(pairs):
        close(batched[p], single[pair])


# --------------------------------------------------------------------------- jitter
def test_jitter_shape_std0_and_noise_convention(solved):
    model, result = solved
    key = jax.random.PRNGKey(7)
    out = jitter(model, result, key, stds=STDS, samples=SAMPLES)
    assert out.shape == (3, 2, 2, 32, 32, 3)
    assert np.all(np.abs(out) <= 1.0)
    for i in range(3):
        for s in range(SAMPLES):
            close(out[i, 0, s], render(model, result, i))  # std 0: the solved image
    assert np.abs(out[0, 1, 0] - out[0, 1, 1]).max() > 1e-3  # a new eps per sample
    # Documented convention: image i's eps is normal(fold_in(key, i), (stds, samples, dim_z)).
    eps = jax.random.normal(jax.random.fold_in(key, 2), (2, SAMPLES, 20), jnp.float64)
    z = result.z[2] + 0.5 * np.asarray(eps[1, 1])
    close(out[2, 1, 1], direct(model, params_of(result, 2), z, result.embeddings[2]))


def test_jitter_is_reproducible_and_independent_of_chunking(solved):
    model, result = solved
    key = jax.random.PRNGKey(3)
    first = jitter(model, result, key, stds=STDS, samples=SAMPLES)
    np.testing.assert_array_equal(first, jitter(model, result, key, stds=STDS, samples=SAMPLES))
    other = jitter(model, result, jax.random.PRNGKey(4), stds=STDS, samples=SAMPLES)
    assert np.abs(first[:, 1] - other[:, 1]).max() > 1e-3
    before = manipulate.TRACE_COUNTS["render"]
    chunked = jitter(model, result, key, stds=STDS, samples=SAMPLES, batch_size=4)
    assert manipulate.TRACE_COUNTS["render"] - before <= 1  # 3 chunks, one compile
    close(chunked, first)


def test_jitter_draws_different_noise_per_image(solved):
    model, result = solved
    # Three copies of image 0: any difference between them comes from the noise alone.
    same = jax.tree.map(lambda a: jnp.repeat(jnp.asarray(a)[:1], 3, axis=0), result)
    out = jitter(model, same, jax.random.PRNGKey(5), stds=STDS, samples=SAMPLES)
    close(out[1, 0], out[0, 0])  # std 0: identical
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert np.abs(out[i, 1] - out[j, 1]).max() > 1e-3


# --------------------------------------------------------------------------- transfer
def test_category_transfer(solved):
    model, result = solved
    out = category_transfer(model, result, TRANSFER)
    assert out.shape == (3, 4, 32, 32, 3)
    table = np.asarray(model.generator["params"]["shared"]["weight"])
    for i in range(3):
        for c, cls in enumerate(TRANSFER):
            close(out[i, c], direct(model, params_of(result, i), result.z[i], table[cls]))
    # Own class (update_embed False): the table row, i.e. what result.generator renders.
    g1 = result.generator(model, 1)
    close(out[1, 0], np.asarray(g1.generate(jnp.asarray(result.z[1:2]), jnp.asarray([2])))[0])
    close(out[1, 0], render(model, result, 1))


def test_category_transfer_uses_fine_tuned_own_embedding(solved):
    model, result = solved
    # As if solved with update_embed: the own class renders with result.embeddings[i].
    shift = 0.3 * np.asarray(jax.random.normal(jax.random.PRNGKey(6), result.embeddings.shape))
    tuned = result.replace(embeddings=result.embeddings + shift)
    plain = category_transfer(model, result, TRANSFER)
    out = category_transfer(model, tuned, TRANSFER)
    for i, cls in enumerate(CLASSES):
        for c, other in enumerate(TRANSFER):
            if other == cls:
                close(out[i, c], render(model, tuned, i))
                assert np.abs(out[i, c] - plain[i, c]).max() > 1e-6
            else:  # the table row, untouched by fine-tuning
                close(out[i, c], plain[i, c])
    # ... which is what the result's own generator (its class row replaced) renders.
    g0 = tuned.generator(model, 0)
    close(out[0, 2], np.asarray(g0.generate(jnp.asarray(result.z[:1]), jnp.asarray([1])))[0])


# --------------------------------------------------------------------------- errors
def test_errors(solved):
    model, result = solved
    # were raw JAX errors (one key per image of a batch of 1 too: jitter folds in the index)
    for key in (1.5, None, np.zeros(3, np.uint32), np.zeros((1, 2), np.uint32)):
        with pytest.raises(ValueError, match="key must be an int seed or one PRNG key"):
            jitter(model, result, key, stds=[0.1], samples=1)
    with pytest.raises(IndexError, match=r"index_b=3 .*3 images"):
        morph(model, result, 0, result, 3)
    with pytest.raises(IndexError, match=r"index_a=-1"):
        morph(model, result, -1, result, 0)
    with pytest.raises(TypeError, match="index_a"):
        morph(model, result, 0.5, result, 0)
    with pytest.raises(IndexError, match=r"\[5\].*3 images"):
        morph_batch(model, result, [(0, 5)])
    with pytest.raises(ValueError, match="pairs"):
        morph_batch(model, result, [0, 1])
    with pytest.raises(ValueError, match="alphas must be finite"):
        morph(model, result, 0, result, 1, [0.0, np.nan])
    with pytest.raises(ValueError, match="alphas"):
        morph(model, result, 0, result, 1, [[0.0, 1.0]])
    with pytest.raises(ValueError, match="different dtypes"):
        single = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), result.params)
        morph(model, result, 0, result.replace(params=single), 1)
    # Results of another architecture.
    with pytest.raises(ValueError, match=r"result_b.z .*different model"):
        morph(model, result, 0, result.replace(z=np.zeros((3, 40))), 1)
    bad_params = {k: v for k, v in result.params.items() if k != "linear"}
    with pytest.raises(ValueError, match=r"result.params .*different model"):
        jitter(model, result.replace(params=bad_params), jax.random.PRNGKey(0))
    wide = jax.tree.map(lambda a: jnp.concatenate([a, a], axis=-1), result.params)
    with pytest.raises(ValueError, match=r"result.params\['blocks.0.0'\].*has shape"):
        category_transfer(model, result.replace(params=wide), [0])
    with pytest.raises(ValueError, match="embeddings"):
        category_transfer(model, result.replace(embeddings=np.zeros((3, 8))), [0])
    # Argument checks.
    with pytest.raises(ValueError, match=r"classes \[10, -1\] out of range \[0, 10\)"):
        category_transfer(model, result, [0, 10, -1])
    with pytest.raises(TypeError, match="integers"):
        category_transfer(model, result, [0.5])
    with pytest.raises(ValueError, match="stds"):
        jitter(model, result, jax.random.PRNGKey(0), stds=(-0.1,))
    with pytest.raises(ValueError, match="samples"):
        jitter(model, result, jax.random.PRNGKey(0), samples=0)
    with pytest.raises(ValueError, match="batch_size"):
        jitter(model, result, jax.random.PRNGKey(0), batch_size=0)


# --------------------------------------------------------------------------- faithfulness
def test_render_is_where_every_manipulation_starts(solved):
    model, result = solved
    assert result.final_use_in is False
    start = manipulate.render(model, result)
    assert start.shape == (3, 32, 32, 3)
    for i in range(3):
        close(start[i], render(model, result, i))


def _short(name: str) -> SolverConfig:
    """Preset ``name`` with one step per stage, on the tiny model."""
    base = SolverConfig.preset(name)
    return base.replace(dgp_mode="reconstruct", resolution=None, select_num=2, select_batch=2,
                        iterations=(1,) * base.num_stages)  # fmt: skip


def test_every_preset_renders_faithfully_or_is_refused(tmp_path_factory):
    """For every preset: the manipulations reproduce the solved images (jitter at std 0,
    morph at alpha 0 and 1, the transfer to the own class), or, where the schedule ends in
    instance-norm mode, they refuse, and so does a batch run (before solving anything).

    Presets with the same stages, use_in and update_embed run the same code with other
    numbers: one solve per such group (one step per stage), every preset checked."""
    from dgp_jax import preset_names, runner
    from tests._compiling import fast_compiles, session_cache_dir

    # Four solver programs: compiled cheaply, and once per session (tests/_compiling.py).
    with fast_compiles(session_cache_dir(tmp_path_factory)):
        _every_preset(preset_names, runner)


def _every_preset(preset_names, runner) -> None:
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    model = random_biggan(TINY, jax.random.PRNGKey(0), dtype=jnp.float64)
    images = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 3), jnp.float64,
                                           -1.0, 1.0))  # fmt: skip
    kinds = ("jitter", "morph", "transfer")
    groups: dict[tuple, list[str]] = {}
    for name in preset_names():
        config = _short(name)
        for kind in kinds:
            if config.use_in[-1]:
                with pytest.raises(runner.RunError, match="ends in instance-norm mode"):
                    runner.build_config("reconstruct", 32, name, ["resolution=none"], kind=kind)
            else:
                runner.build_config("reconstruct", 32, name, ["resolution=none"], kind=kind)
        groups.setdefault((config.num_stages, config.use_in, config.update_embed), []).append(name)
    assert len(groups) == 6
    bn = [names for (_, use_in, _), names in groups.items() if not use_in[-1]]
    assert len(bn) == 4
    for names in bn:
        result = restore(model, images, np.array([1, 2]), _short(names[0]), 0, mesh=mesh)
        assert result.final_use_in is False, names
        start = manipulate.render(model, result)
        # The render differs from G's output at the last step by that step's update only.
        assert np.abs(start - result.images).max() < 0.5
        out = jitter(model, result, 0, stds=(0.0,), samples=1)
        frames = morph(model, result, 0, result, 1, alphas=(0.0, 1.0))
        own = category_transfer(model, result, [1, 2])
        for i in range(2):
            close(out[i, 0, 0], start[i])
            close(frames[i], start[i])
            close(own[i, i], start[i])
    # A result that ended in instance-norm mode (restore sets the flag from the last stage
    # that ran, see the next test) is refused by every manipulation.
    in_mode = result.replace(final_use_in=True)
    calls = (lambda: manipulate.render(model, in_mode),
             lambda: jitter(model, in_mode, 0, stds=(0.0,), samples=1),
             lambda: morph(model, result, 0, in_mode, 1),
             lambda: category_transfer(model, in_mode, [1]))  # fmt: skip
    for call in calls:
        with pytest.raises(ValueError, match="ran in instance-norm mode"):
            call()


def test_final_use_in_is_the_mode_of_the_last_stage_that_ran():
    from dgp_jax.solve import _final_use_in

    def config(use_in, iterations):
        n = len(use_in)
        return SOLVER.replace(iterations=iterations, use_in=use_in, ft_num=(9,) * n,
                              lr_ratio=(1.0,) * n, G_lrs=(1e-3,) * n, z_lrs=(1e-2,) * n,
                              w_D_loss=(1.0,) * n, w_mse=(1.0,) * n, ftr_num=(3,) * n)  # fmt: skip

    assert _final_use_in(config((True, False), (1, 1))) is False  # a BN stage clears IN
    assert _final_use_in(config((False, True), (1, 1))) is True
    assert _final_use_in(config((False, True), (1, 0))) is False  # the IN stage never ran
    assert _final_use_in(config((True, False), (1, 0))) is True
    assert _final_use_in(config((True,), (0,))) is False  # no steps: G's plain render


def test_restore_takes_int_seeds_and_refuses_what_is_not_in_range(solved):
    model, _ = solved
    images = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (1, 32, 32, 3), jnp.float64,
                                           -1.0, 1.0))  # fmt: skip
    config = SOLVER.replace(iterations=(0,))
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    by_int = restore(model, images, [1], config, 3, mesh=mesh)
    by_key = restore(model, images, [1], config, jax.random.PRNGKey(3), mesh=mesh)
    np.testing.assert_array_equal(by_int.z, by_key.z)
    assert not np.array_equal(by_int.z, restore(model, images, [1], config, 4, mesh=mesh).z)
    as_uint8 = ((images + 1) * 127.5).astype(np.uint8)
    with pytest.raises(ValueError, match=r"floating point in \[-1, 1\], got dtype uint8.*127.5"):
        restore(model, as_uint8, [1], config, 0, mesh=mesh)
    with pytest.raises(ValueError, match=r"in \[-1, 1\], got values in \[0, 25"):
        restore(model, as_uint8.astype(np.float64), [1], config, 0, mesh=mesh)


def test_restore_hints_at_observed_for_gray_colorization_inputs(solved):
    from dgp_jax.solve import GrayInputWarning

    model, _ = solved
    gray = np.repeat(np.linspace(-1, 1, 32 * 32).reshape(1, 32, 32, 1), 3, axis=-1)
    config = SOLVER.replace(dgp_mode="colorization", iterations=(0,), select_num=0)
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    with pytest.warns(GrayInputWarning, match=r"images \[0\] are gray.*observed=True"):
        restore(model, gray, [1], config, 0, mesh=mesh)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GrayInputWarning)
        restore(model, gray, [1], config, 0, mesh=mesh, observed=True)  # no warning
