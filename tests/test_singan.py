"""SinGAN against the official code (tests/fixtures/make_singan.py): networks, one D and one
G optimisation step, imresize and the pyramid on a real photo; then the method end to end on
short schedules."""

import dataclasses
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dgp_jax import baselines, degradations
from dgp_jax.baselines import singan
from dgp_jax.nets import singan as nets

PRE_NORM_BIAS = re.compile(r"(head|block\d)\.conv\.bias")
FIXTURES = Path(__file__).parent / "fixtures" / "singan"
PHOTO = Path(__file__).resolve().parents[1].parent / "shared/images/others/library2.jpeg"


def load(name):
    path = FIXTURES / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run tests/fixtures/make_singan.py")
    return dict(np.load(path))


def state_keys(channels: int, out_channels: int):
    """(key, shape) in torch's state_dict order (num_batches_tracked left out)."""
    keys = []
    in_ch = 3
    for name in ("head", "body.block1", "body.block2", "body.block3"):
        keys += [
            (f"{name}.conv.weight", (channels, in_ch, 3, 3)),
            (f"{name}.conv.bias", (channels,)),
        ]
        keys += [(f"{name}.norm.{k}", (channels,))
                 for k in ("weight", "bias", "running_mean", "running_var")]  # fmt: skip
        in_ch = channels
    tail = "tail.0" if out_channels == 3 else "tail"
    keys += [(f"{tail}.weight", (out_channels, channels, 3, 3)), (f"{tail}.bias", (out_channels,))]
    return keys


def drawn(channels: int, out_channels: int, seed: int):
    """make_singan.random_state's draws."""
    rng = np.random.RandomState(seed)
    state = {}
    for key, shape in state_keys(channels, out_channels):
        if key.endswith("running_var"):
            a = 0.5 + rng.uniform(size=shape)
        elif key.endswith("norm.weight"):
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            a = 0.1 * rng.standard_normal(shape)
        state[key] = a.astype(np.float32)
    return nets.from_state_dict(state)


def assert_tree(ours_params, ours_stats, ref: dict, prefix: str, atol):
    flat = nets.flatten_state_dict(ours_params, ours_stats)
    keys = [k for k in ref if k.startswith(prefix)]
    assert keys
    for k in keys:
        ours = flat[k[len(prefix) :]]
        if PRE_NORM_BIAS.search(k):
            # BatchNorm cancels these biases: their gradient is 0 up to rounding, which
            # Adam's first step scales up to +-lr either way; they may only move by lr.
            np.testing.assert_allclose(ours, ref[k], atol=2.01 * 5e-4, err_msg=k)
            continue
        np.testing.assert_allclose(ours, ref[k], atol=atol, rtol=0, err_msg=k)


@pytest.mark.cheap_compiles  # compile-bound (tests/_compiling.py)
def test_state_keys_and_channels():
    g, gs = nets.init(jax.random.PRNGKey(0), 32, out_channels=3)
    d, ds = nets.init(jax.random.PRNGKey(1), 64, out_channels=1)
    flat = nets.flatten_state_dict(g, gs)
    assert sorted(flat) == sorted(k for k, _ in state_keys(32, 3))
    assert {k: v.shape for k, v in flat.items()} == dict(state_keys(32, 3))
    assert sorted(nets.flatten_state_dict(d, ds)) == sorted(k for k, _ in state_keys(64, 1))
    assert [nets.channels_at(n) for n in range(14)] == [32] * 4 + [64] * 4 + [128] * 6
    with pytest.raises(ValueError, match="unexpected SinGAN key 'head.conv.kernel'"):
        nets.from_state_dict({"head.conv.kernel": np.zeros(3)})


generator = jax.jit(nets.generator, static_argnames=("train", "lowering"))
discriminator = jax.jit(nets.discriminator, static_argnames=("train", "lowering"))


@pytest.mark.cheap_compiles  # compile-bound (tests/_compiling.py)
@pytest.mark.parametrize("lowering", nets.LOWERINGS)
def test_forward_matches_official(lowering):
    ref = load("nets.npz")
    noise = ref["noise_amp"] * ref["noise_"] + ref["prev"]
    for mode, train in (("train", True), ("eval", False)):
        g, gs = drawn(32, 3, 10)
        d, ds = drawn(32, 1, 11)
        y, gs2 = generator(g, gs, jnp.asarray(noise), jnp.asarray(ref["prev"]), train=train,
                           lowering=lowering)  # fmt: skip
        np.testing.assert_allclose(y, ref[f"g_out_{mode}"], atol=2e-5, err_msg=mode)
        assert_tree({}, gs2, ref, f"g_stats_{mode}/", atol=1e-5)
        s, ds2 = discriminator(d, ds, jnp.asarray(ref["real"]), train=train, lowering=lowering)
        assert s.shape == (1, 12, 16, 1)
        np.testing.assert_allclose(s, ref[f"d_out_{mode}"], atol=2e-5, err_msg=mode)
        assert_tree({}, ds2, ref, f"d_stats_{mode}/", atol=1e-5)
    g64, gs64 = drawn(64, 3, 12)
    d64, ds64 = drawn(64, 1, 13)
    y, _ = generator(g64, gs64, jnp.asarray(noise), jnp.asarray(ref["prev"]), train=True,
                     lowering=lowering)  # fmt: skip
    np.testing.assert_allclose(y, ref["g64_out_train"], atol=2e-5)
    s, _ = discriminator(d64, ds64, jnp.asarray(ref["real"]), train=True, lowering=lowering)
    np.testing.assert_allclose(s, ref["d64_out_train"], atol=2e-5)


@pytest.mark.cheap_compiles  # compile-bound (tests/_compiling.py)
def test_reconstruction_and_super_resolution_match_official_generate():
    """manipulate.py SinGAN_generate, deterministic (make_singan.generate_fixture): the
    cascade from stored noise over two scales, and SR.py's six-step chain of the finest G
    with zero noise (SR's only randomness)."""
    ref = load("generate.npz")
    coarser = []
    for i, (seed, amp) in enumerate(zip((10, 16), ref["rec/amps"], strict=True)):
        g, g_stats = drawn(32, 3, seed)
        coarser.append({"g": g, "g_stats": g_stats, "z_opt": jnp.asarray(ref[f"rec/z_opt/{i}"]),
                        "noise_amp": jnp.float32(amp)})  # fmt: skip
    shapes = tuple(tuple(int(n) for n in s) for s in ref["rec/shapes"])
    rec = jax.jit(lambda scales: singan.cascade(scales, shapes, 0.75))(coarser)
    assert rec.shape == (33, 33, 3)
    np.testing.assert_allclose(rec, ref["rec/out"], atol=2e-5)

    g, g_stats = drawn(32, 3, 10)
    _, up, steps = singan.sr_settings(4)
    assert steps == 6 and [r.shape[:2] for r in (ref[f"sr/step/{k}"] for k in range(1, 7))] == [
        tuple(c) for c in ref["sr/chain"]
    ]
    # Each step from the official previous output: imresize's 8-bit quantisation then
    # sees the same values, so the steps agree to float32 rounding.
    quiet = {"g": g, "g_stats": g_stats, "noise_amp": jnp.float32(0)}
    generate = jax.jit(lambda x: singan.sr_step(quiet, x, jnp.zeros_like(x)))
    resize = jax.jit(lambda x: singan.imresize(x, up))  # (jitted: 14 -> 4 s here)
    x = singan.imresize_host(ref["sr/lr"], up)
    for k in range(1, steps + 1):
        if k > 1:
            x = resize(ref[f"sr/step/{k - 1}"])
        np.testing.assert_allclose(generate(x), ref[f"sr/step/{k}"], atol=1e-5, err_msg=f"{k}")

    # The whole chain (super_resolve, noise amplitude 0): float32 rounding flips a few
    # values across an 8-bit level in the five requantisations, and G spreads them.
    batched = lambda tree: jax.tree.map(lambda a: jnp.asarray(a)[None], tree)  # noqa: E731
    finest = {"g": batched(g), "g_stats": batched(g_stats), "noise_amp": jnp.zeros((1,))}
    trained = singan.Trained(plan=None, reals=[ref["sr/lr"][None]], scales=[finest], batch=1)
    out = singan.super_resolve(trained, 4, jax.random.key(0))
    assert out.shape == (1, 64, 64, 3)
    err = np.abs(out[0] - ref["sr/out"])
    assert np.median(err) < 1e-6 and err.max() < 0.03  # measured: 2.7e-7, 0.018


@pytest.mark.cheap_compiles  # compile-bound (tests/_compiling.py)
def test_one_d_step_and_one_g_step_match_official():
    ref = load("nets.npz")
    g, gs = drawn(32, 3, 10)
    d, ds = drawn(32, 1, 11)
    state = {"g": g, "g_stats": gs, "d": d, "d_stats": ds,
             "g_opt": singan.adam_init(g), "d_opt": singan.adam_init(d)}  # fmt: skip
    real, prev = jnp.asarray(ref["real"][0]), jnp.asarray(ref["prev"][0])
    amp = jnp.float32(ref["noise_amp"])
    noise = amp * jnp.asarray(ref["noise_"][0]) + prev
    lr = jnp.float32(5e-4)
    settings = singan.Settings()

    @jax.jit
    def steps(state):
        fake, g_stats = singan._g(state["g"], state["g_stats"], noise, prev, True)
        state = {**state, "g_stats": g_stats}
        state, d_loss, d_parts = singan.d_step(state, real, fake, jnp.float32(ref["mix"]), lr,
                                               settings)  # fmt: skip
        after_d = state
        z_prev = jnp.asarray(ref["z_prev"][0])
        z_rec = amp * jnp.asarray(ref["z_opt"][0]) + z_prev
        state, g_loss, g_parts = singan.g_step(state, real, noise, prev, z_rec, z_prev, lr,
                                               settings)  # fmt: skip
        return fake, after_d, d_parts, state, g_parts

    fake, after_d, d_parts, after_g, g_parts = steps(state)
    np.testing.assert_allclose(fake, ref["fake"][0], atol=2e-5)
    np.testing.assert_allclose(d_parts, [ref["errD_real"], ref["errD_fake"], ref["gp"]],
                               rtol=2e-4, atol=1e-6)  # fmt: skip
    # Adam's first step moves every weight by about lr (5e-4), whatever its gradient: compare
    # to 5% of it (a weight whose gradient is near rounding level may differ that much).
    assert_tree(after_d["d"], {}, ref, "d_after_d/", atol=2.5e-5)
    assert_tree({}, after_d["d_stats"], ref, "d_stats_after_d/", atol=1e-5)
    assert_tree({}, after_d["g_stats"], ref, "g_stats_after_d/", atol=1e-5)
    np.testing.assert_allclose(g_parts, [ref["errG"], ref["rec_loss"]], rtol=2e-4)
    assert_tree(after_g["g"], {}, ref, "g_after_g/", atol=2.5e-5)
    assert_tree({}, after_g["g_stats"], ref, "g_stats_after_g/", atol=1e-5)
    # D's running mean after the G step follows its pre-norm biases (+-lr, see above) by 0.1.
    assert_tree({}, after_g["d_stats"], ref, "d_stats_after_g/", atol=0.1 * 2.01 * 5e-4)
    # the step moved the weights by about lr, so the comparison above is not vacuous
    moved = nets.flatten_state_dict(after_g["g"], {})["head.conv.weight"] - np.asarray(
        g["head"]["conv"]["weight"]
    )
    assert np.median(np.abs(moved)) > 1e-4


def test_pyramid_and_imresize_match_official_on_a_photo():
    ref = load("imresize.npz")
    photo = np.asarray(Image.open(PHOTO).convert("RGB"))
    assert photo.shape[:2] == tuple(ref["photo_shape"])
    image = singan.from_uint8(photo)
    np.testing.assert_allclose(image.astype(np.float64).sum(), ref["photo_sum"], rtol=1e-12)
    the_plan = singan.plan(*photo.shape[:2])
    assert the_plan.shapes == tuple(map(tuple, ref["shapes"]))
    assert the_plan.scale1 == ref["scale1"] and the_plan.scale_factor == ref["scale_factor"]
    reals = singan.pyramid(image, the_plan)
    for i, r in enumerate(reals):
        np.testing.assert_array_equal(r[:32, :32], ref[f"reals/{i}"], err_msg=f"scale {i}")
        np.testing.assert_allclose(r.astype(np.float64).sum(), ref[f"reals_sum/{i}"], rtol=1e-12)
        np.testing.assert_allclose(np.abs(r.astype(np.float64)).sum(), ref[f"reals_abs/{i}"],
                                   rtol=1e-12)  # fmt: skip
    x = ref["float_in"]
    up = 1 / ref["scale_factor"]
    np.testing.assert_array_equal(singan.imresize_host(x, up), ref["float_up"])
    np.testing.assert_array_equal(singan.imresize_host(x, 0.75), ref["float_down"])
    # the in-training (JAX) imresize, float32: the same up to float32 sums
    np.testing.assert_allclose(singan.imresize(jnp.asarray(x), up), ref["float_up"], atol=2e-6)
    np.testing.assert_allclose(jax.jit(lambda x: singan.imresize(x, 0.75))(x), ref["float_down"],
                               atol=2e-6)  # fmt: skip


def test_plans_match_official():
    ref = load("imresize.npz")
    for key in [k for k in ref if k.endswith("/shapes")]:
        kind, size, _ = key.split("/")
        h, w = map(int, size.split("x"))
        if kind == "plan":
            p = singan.plan(h, w)
        else:
            settings, in_scale, steps = singan.sr_settings(4)
            p = singan.plan(h, w, min_size=18, scale_factor=settings.scale_factor, sr=True)
            chain, cur = [], p.shapes[-1]
            for _ in range(steps):
                cur = tuple(singan.resized_length(n, 1 / (1 / in_scale)) for n in cur)
                chain.append(cur)
            assert chain == list(map(tuple, ref[f"plan_sr/{size}/chain"])), size
        assert p.shapes == tuple(map(tuple, ref[key])), key
        np.testing.assert_allclose([p.scale1, p.scale_factor], ref[key[:-6] + "factors"],
                                   rtol=1e-15)  # fmt: skip
    assert singan.sr_settings(4)[1:] == (pytest.approx(4 ** (1 / 6)), 6)


@pytest.mark.cheap_compiles  # compile-bound (tests/_compiling.py)
def test_a_batched_epoch_is_each_image_alone():
    """One training epoch (3 D steps with the gradient penalty's second derivatives, 3 G
    steps) vmapped over two images, each with its own networks, against each image alone,
    in float64: the im2col products batch over the images without changing the values."""
    shapes, settings = ((14, 14),), singan.Settings()
    rng = np.random.default_rng(0)

    def one(seed):
        g, gs = nets.init(jax.random.PRNGKey(seed), 32, out_channels=3, dtype=jnp.float64)
        d, ds = nets.init(jax.random.PRNGKey(seed + 1), 32, out_channels=1, dtype=jnp.float64)
        state = {"g": g, "g_stats": gs, "d": d, "d_stats": ds, "g_opt": singan.adam_init(g),
                 "d_opt": singan.adam_init(d), "z_opt": jnp.zeros((24, 24, 3))}  # fmt: skip
        consts = {"real": jnp.asarray(rng.uniform(-1, 1, (14, 14, 3))),
                  "z_prev": jnp.zeros((24, 24, 3)), "noise_amp": jnp.float64(1.0),
                  "coarser": []}  # fmt: skip
        return state, consts

    states, consts = zip(*(one(s) for s in (0, 2)), strict=True)
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    hp = (jnp.float64(5e-4), jnp.float64(5e-4), jnp.bool_(False))
    epoch = singan._epoch_fn(0, shapes, settings, 0.75)
    stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)  # noqa: E731
    batched, losses = jax.jit(jax.vmap(epoch, in_axes=(0, 0, 0, None, None, None)))(
        stack(states), stack(consts), keys, *hp
    )
    for i in range(2):
        alone, loss = jax.jit(epoch)(states[i], consts[i], keys[i], *hp)
        np.testing.assert_allclose(losses["d_loss"][i], loss["d_loss"], rtol=1e-12)
        np.testing.assert_allclose(losses["g_loss"][i], loss["g_loss"], rtol=1e-12)
        ours = nets.flatten_state_dict(jax.tree.map(lambda a, i=i: a[i], batched["g"]), {})
        for k, v in nets.flatten_state_dict(alone["g"], {}).items():
            # 1e-9: weights whose gradient batch norm cancels take Adam steps of rounding.
            np.testing.assert_allclose(ours[k], v, rtol=0, atol=1e-9, err_msg=k)


def test_the_low_resolution_image_comes_back_exactly_from_the_sr_observation():
    """SR: SinGAN trains on the 8-bit LR image, recovered from DGP's observation (its
    bilinear upsampling, float32 as the solver makes it), every byte exactly."""
    rng = np.random.default_rng(0)
    lr = rng.integers(0, 256, (2, 16, 12, 3), dtype=np.uint8)
    lr[0, :4] = 0  # the ends of the range too
    lr[1, :4] = 255
    for factor in (2, 4):
        observed = degradations.upsample_bilinear(lr / np.float32(127.5) - 1, factor)
        assert observed.shape == (2, 16 * factor, 12 * factor, 3)
        assert observed.dtype == np.float32
        back = singan.low_resolution(np.asarray(observed), factor)
        assert back.dtype == np.uint8
        np.testing.assert_array_equal(back, lr)
    with pytest.raises(ValueError, match="factor 3 does not divide the observation's size 32x24"):
        singan.low_resolution(np.zeros((1, 32, 24, 3)), 3)


def test_restore_errors():
    restore = baselines.get("singan")
    x = np.zeros((1, 32, 32, 3), np.float32)
    with pytest.raises(ValueError, match="singan does super-resolution .* got degradation 'gray'"):
        restore(x, degradations.grayscale(), seed=0, config={})
    with pytest.raises(ValueError, match="unknown config key 'iters'"):
        restore(x, degradations.identity(), seed=0, config={"iters": 2})
    # compare's φ for --task SR is named 'SR' (degradations.for_mode) and gives the factor
    # as the setting it passes to every method declaring one.
    assert "factor" in singan.SETTINGS
    assert singan._task(degradations.for_mode("SR", 64), {"factor": 4}) == ("SR", 4)
    assert singan._task(degradations.super_resolution(2), {}) == ("SR", 2)
    with pytest.raises(ValueError, match="'SR' is super-resolution: pass the setting factor"):
        restore(x, degradations.for_mode("SR", 32), seed=0, config={})
    with pytest.raises(ValueError, match=r"lowering must be one of \['im2col', 'xla'\]"):
        restore(x, degradations.identity(), seed=0, config={"lowering": "grouped"})
    with pytest.raises(ValueError, match=r"uint8 of shape \(B, H, W, 3\)"):
        singan.train(np.zeros((1, 32, 32, 3)), key=jax.random.PRNGKey(0))


@pytest.mark.cheap_compiles  # compile-bound (tests/_compiling.py)
def test_a_pyramid_starting_above_the_image_is_warned_about():
    settings, _, _ = singan.sr_settings(4)
    small = singan.plan(16, 16, min_size=18, scale_factor=settings.scale_factor, sr=True)
    assert small.shapes == ((18, 18), (16, 16)) and small.scale_factor == pytest.approx(1.125)
    assert singan.upscaled_pyramid_warning(small, 16, 16) == (
        "singan: the 16x16 image is smaller than the pyramid's coarsest scale 18x18 (scales "
        "18x18, 16x16): the pyramid upsamples it; at such sizes the official SR.py's outputs "
        "do not follow their input (README)"
    )
    big = singan.plan(32, 32, min_size=18, scale_factor=settings.scale_factor, sr=True)
    assert big.shapes == ((18, 18), (22, 22), (27, 27), (32, 32))
    assert singan.upscaled_pyramid_warning(big, 32, 32) is None
    tiny = dataclasses.replace(settings, iterations=0)
    with pytest.warns(UserWarning, match="16x16 image is smaller than the pyramid's coarsest"):
        singan.train(np.zeros((1, 16, 16, 3), np.uint8), key=jax.random.PRNGKey(0),
                     settings=tiny, sr=True)  # fmt: skip


def test_one_seed_per_image_gives_each_image_the_keys_it_has_alone():
    seeds = [5, 9]
    train_keys, sample_keys = singan.restore_keys(seeds, 2)
    for i, seed in enumerate(seeds):
        train_alone, sample_alone = singan.restore_keys(seed, 1)
        # what train() and the samplers use for the single image of a batch of one
        np.testing.assert_array_equal(train_keys[i], singan._image_keys(train_alone, 1)[0])
        np.testing.assert_array_equal(sample_keys[i], singan._image_keys(sample_alone, 1)[0])
    assert not np.array_equal(train_keys[0], train_keys[1])
    # A batch padded to 4 (the mesh) repeats the last image's keys.
    padded = np.asarray(singan._image_keys(train_keys, 4))
    np.testing.assert_array_equal(padded, np.asarray(train_keys)[[0, 1, 1, 1]])
    # An int seed keeps its meaning: image i folds i into the seed's key.
    one_train, _ = singan.restore_keys(5, 2)
    np.testing.assert_array_equal(one_train, jax.random.split(jax.random.PRNGKey(5))[0])
    with pytest.raises(ValueError, match="singan: 3 seeds for 2 images"):
        singan.restore_keys([1, 2, 3], 2)


def test_the_command_refuses_unreadable_and_mismatched_photos(tmp_path):
    """python -m dgp_jax.baselines.singan: every input read before any training; an
    unreadable file or photos of two sizes (one pyramid for all) end it naming them."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(small)
    Image.fromarray(np.zeros((24, 30, 3), np.uint8)).save(large)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=f"cannot read image {re.escape(str(broken))}"):
        singan.main([str(small), str(broken), "--task", "SR", "--out", str(out)])
    with pytest.raises(SystemExit, match=r"all inputs must have one size .*\(20, 30, 3\).*"
                                         r"\(24, 30, 3\)"):  # fmt: skip
        singan.main([str(small), str(large), "--task", "random_samples", "--out", str(out)])
    assert not out.exists()
