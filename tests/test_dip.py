"""Deep Image Prior against the official code (tests/fixtures/make_dip.py), and the method."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgp_jax import degradations
from dgp_jax.baselines import common, dip
from dgp_jax.nets import dip_skip
from tests._dip import seeded_arrays, seeded_params

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "dip" / "skip_parity.npz"
REG_NOISE_STD = 0.03


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(FIXTURE))


def _params(spec):
    return {k: jnp.asarray(v) for k, v in seeded_params(spec).items()}


@pytest.mark.parametrize("preset", ["inpainting", "inpainting-vase", "inpainting-library"])
def test_forward_matches_official_skip(reference, preset):
    spec = dip_skip.PRESETS[preset]
    data = seeded_arrays(spec)
    out = np.asarray(jax.jit(dip_skip.apply, static_argnums=1)(_params(spec), spec, data["input"]))
    if out.shape[1] > 64:
        out = out[:, ::4, ::4]
    np.testing.assert_allclose(out, reference[f"{preset}_out"], rtol=0, atol=1e-10)


@pytest.mark.cheap_compiles  # compile-bound (tests/_compiling.py)
@pytest.mark.parametrize("lowering", dip_skip.CONV_LOWERINGS)
def test_super_resolution_forward_and_one_adam_step_match_official(reference, lowering):
    """The notebook's closure (input + noise * reg_noise_std, MSE through the lanczos2
    Downsampler) and one torch Adam step, on the super-resolution network (also the
    denoising one), with XLA's convolutions and with the im2col products batched runs use."""
    spec = dip_skip.PRESETS["super-resolution"]
    data = seeded_arrays(spec)
    measure = dip.measure_fn(degradations.super_resolution(4), 4)
    target = data["low"] * 2 - 1
    inp = data["input"] + data["noise"] * REG_NOISE_STD

    @jax.jit
    def run(params):
        out = dip_skip.apply(params, spec, data["input"], lowering)
        loss, grads = jax.value_and_grad(dip.loss_fn)(params, spec, inp, target, measure,
                                                      lowering)  # fmt: skip
        params, _ = dip.adam_step(params, dip._adam().init(params), grads, 0.01)
        return out, loss, dip_skip.apply(params, spec, data["input"], lowering)

    out, loss, stepped = run(_params(spec))
    np.testing.assert_allclose(np.asarray(out), reference["super-resolution_out"], atol=1e-10)
    np.testing.assert_allclose(float(loss), reference["super-resolution_step_loss"], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(stepped), reference["super-resolution_step_out"],
                               atol=1e-9)  # fmt: skip


def test_inpainting_step_matches_official(reference):
    """One step of the inpainting notebook (MSE(out * mask, img * mask), input + noise *
    reg_noise_std, torch Adam) through what ``dip.step`` runs (``loss_fn``, ``adam_step``;
    the noise is the fixture's draw), with the mask as the φ of DGP's inpainting task and
    the masked image as its observation."""
    spec = dip_skip.PRESETS["inpainting"]
    data = seeded_arrays(spec)
    phi = degradations.inpainting(data["mask"][0])
    measure = dip.measure_fn(phi, None)
    observed = (data["image"] * 2 - 1) * data["mask"]
    inp = data["input"] + data["noise"] * REG_NOISE_STD

    @jax.jit
    def run(params):
        loss, grads = jax.value_and_grad(dip.loss_fn)(params, spec, inp, observed, measure)
        params, _ = dip.adam_step(params, dip._adam().init(params), grads, 0.01)
        return loss, dip_skip.apply(params, spec, data["input"])

    loss, out = run(_params(spec))
    np.testing.assert_allclose(float(loss), reference["inpainting_step_loss"], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(out), reference["inpainting_step_out"], atol=1e-9)


@pytest.mark.cheap_compiles  # compile-bound (tests/_compiling.py)
def test_a_batch_is_each_image_alone(one_device_mesh, monkeypatch):
    """Two images in one program (im2col products batched over the images) give what each
    gives alone (XLA's convolutions), in float64; its own key per image. The inpainting
    preset's layout (strided downs, skips, nearest upsampling) at three levels of 16
    channels: what is compared is the batching; the official network is tested above."""
    monkeypatch.setattr(dip, "_mesh", lambda batch: one_device_mesh)
    narrow = dip_skip.SkipSpec(32, (16,) * 3, (16,) * 3, (4,) * 3, upsample_mode="nearest")
    monkeypatch.setitem(dip_skip.PRESETS, "inpainting", narrow)
    rng = np.random.default_rng(1)
    observed = rng.uniform(-1, 1, (2, 32, 32, 3))
    phi = degradations.inpainting(None, 32, 32)
    observed = phi.target_fn(observed)
    keys = common.image_keys(5, 2)
    config = {"iterations": 2}
    assert dip.conv_lowering("auto", 1, "cpu") == "im2col"
    assert dip.conv_lowering("auto", 1, "gpu") == "xla"
    assert dip.conv_lowering("auto", 2, "gpu") == "im2col"
    together = dip.restore_with_keys(observed, phi, keys, config)
    for i in range(2):
        alone = dip.restore_with_keys(observed[i : i + 1], phi, keys[i : i + 1],
                                      {**config, "lowering": "xla"})  # fmt: skip
        # 1e-9, the official step's tolerance above: the conv biases that batch norm
        # cancels get rounding-noise gradients, which Adam's first steps scale to its rate.
        np.testing.assert_allclose(together[i], alone[0], rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="lowering must be one of"):
        dip.restore_with_keys(observed, phi, keys, {"lowering": "grouped"})


def test_key_table_and_errors():
    spec = dip_skip.PRESETS["super-resolution"]
    shapes = dip_skip.param_shapes(spec)
    # Level 0's skip conv, the second level's strided conv, the final 1x1 conv.
    assert shapes["1.0.1.1.weight"] == (4, 32, 1, 1)
    assert shapes["1.1.7.1.1.1.1.weight"] == (128, 128, 3, 3)
    assert shapes["9.1.weight"] == (3, 128, 1, 1)
    assert len(shapes) == 2 * len(dip_skip.layer_table(spec))
    params = {k: np.zeros(v) for k, v in shapes.items()}
    dip_skip.check_params(params, spec)
    bad = {**params, "9.1.weight": params["9.1.weight"][:2]}
    with pytest.raises(ValueError, match=r"'9.1.weight' has shape \(2, 128, 1, 1\)"):
        dip_skip.check_params(bad, spec)
    with pytest.raises(ValueError, match="missing key '1.0.1.1.weight'"):
        dip_skip.check_params({k: v for k, v in params.items() if k != "1.0.1.1.weight"}, spec)
    with pytest.raises(ValueError, match="divisible by 32, got 48x64"):
        dip_skip.apply(params, spec, jnp.zeros((1, 48, 64, 32)))
    with pytest.raises(ValueError, match="unknown setting 'iters'"):
        dip.restore(np.zeros((1, 64, 64, 3)), None, seed=0, config={"iters": 3})


def test_the_notebooks_schedules_and_which_task_gets_which():
    """README, "Comparing methods": Adam at lr 0.01; 2000 steps for x4 SR (x8: 4000), 6001
    for inpainting, 3000 (denoising's) otherwise; the notebooks' input noise."""
    table = {name: (s.network, s.iterations, s.reg_noise_std, s.input, s.final_input)
             for name, s in dip.SCHEDULES.items()}  # fmt: skip
    assert table == {
        "super-resolution": ("super-resolution", 2000, 0.03, "noise", "noisy"),
        "super-resolution-x8": ("super-resolution", 4000, 0.05, "noise", "noisy"),
        "inpainting": ("inpainting", 6001, 0.03, "noise", "clean"),
        "inpainting-vase": ("inpainting-vase", 5001, 0.03, "meshgrid", "clean"),
        "inpainting-library": ("inpainting-library", 3001, 0.0, "noise", "clean"),
        "denoising": ("denoising", 3000, 1 / 30, "noise", "noisy"),
    }
    assert dip.LR == 0.01
    hole = degradations.for_mode("inpainting", 64)
    gray = degradations.for_mode("colorization", 64)
    picks = [dip.default_preset(None, 4), dip.default_preset(None, 2), dip.default_preset(None, 8),
             dip.default_preset(hole, None), dip.default_preset(gray, None),
             dip.default_preset(None, None)]  # fmt: skip
    assert picks == ["super-resolution", "super-resolution", "super-resolution-x8", "inpainting",
                     "denoising", "denoising"]  # fmt: skip


def test_low_resolution_recovers_the_sr_target():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 64, 64, 3))
    observed = degradations.super_resolution(4).target_fn(x)
    low = degradations.downsample_target(x, 4)
    np.testing.assert_allclose(common.low_resolution(observed, 4), low, atol=1e-12)
