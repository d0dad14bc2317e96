"""The BigGAN trainer (dgp_jax.train, dgp_jax.data) on a tiny model and generated images.

Every training run here shares one architecture, one step configuration and the one-device
mesh, so the train step compiles once for the whole file.
"""

import importlib.util
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import dgp_jax
from dgp_jax import checkpoint
from dgp_jax.data import BatchIterator, DataError, image_folder, list_file, open_dataset
from dgp_jax.nets.biggan import BigGANConfig, Discriminator, Generator
from dgp_jax.nets.layers import BUFFERS, PARAMS, BatchNorm, ConditionalBatchNorm
from dgp_jax.train import (
    TrainConfig,
    Trainer,
    ema_update,
    hinge_d_loss,
    hinge_g_loss,
    init_state,
    latest_checkpoint,
    train,
)
from tests._torch import require_torch

CFG = BigGANConfig(
    resolution=32, G_ch=4, D_ch=4, n_classes=4, shared_dim=8, dim_z=20, G_attn="0", D_attn="0"
)
TC = TrainConfig(
    batch_size=4, num_D_steps=2, ema_decay=0.9, ema_start=3, steps=4, log_every=1,
    sample_every=2, save_every=2, keep_checkpoints=3,
)  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]


# The train step compiles once per session, not once per xdist worker that runs these.
pytestmark = pytest.mark.usefixtures("cheap_compilation_cache")


def _write_images(root: Path, classes, per_class, seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = rng.integers(34, 60, size=2)
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return _write_images(tmp_path_factory.mktemp("images"), ["a", "b", "c", "d"], 2)


@pytest.fixture(scope="module")
def dataset(image_dir):
    return image_folder(image_dir)


@pytest.fixture(scope="module")
def run(tmp_path_factory, dataset, one_device_mesh):
    out = tmp_path_factory.mktemp("run") / "run"
    trainer, summary = train(CFG, TC, dataset, out, mesh=one_device_mesh, log=None, workers=1)
    return out, trainer, summary


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


# --------------------------------------------------------------------------- arithmetic
def test_hinge_losses_on_known_values():
    real = jnp.array([2.0, 0.5, -1.0])  # relu(1 - real) = 0, 0.5, 2
    fake = jnp.array([-3.0, 0.25, 1.0])  # relu(1 + fake) = 0, 1.25, 2
    loss_real, loss_fake = hinge_d_loss(real, fake)
    np.testing.assert_allclose(loss_real, 2.5 / 3, rtol=1e-12)
    np.testing.assert_allclose(loss_fake, 3.25 / 3, rtol=1e-12)
    np.testing.assert_allclose(hinge_g_loss(fake), 1.75 / 3, rtol=1e-12)


def test_ema_update_formula():
    ema, src = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, -1.0])}
    np.testing.assert_allclose(ema_update(ema, src, 5, 0.9, 3)["w"], [1.2, 1.7], rtol=1e-12)
    # Before ema_start the copy is pegged to the source, as BigGAN's ema.update(itr).
    np.testing.assert_array_equal(ema_update(ema, src, 2, 0.9, 3)["w"], src["w"])


@pytest.mark.parametrize(
    "field,says",
    [
        ({"batch_size": 2.5}, "TrainConfig.batch_size must be int, got 2.5"),
        ({"augment": 1}, "TrainConfig.augment must be bool, got 1"),
        ({"batch_size": 0}, "TrainConfig.batch_size must be >= 1, got 0"),
        ({"save_every": -1}, "TrainConfig.save_every must be >= 0, got -1"),
        ({"G_lr": -1e-4}, "TrainConfig.G_lr must be a finite number >= 0, got -0.0001"),
        ({"D_lr": float("nan")}, "TrainConfig.D_lr must be a finite number >= 0, got nan"),
        ({"adam_eps": 0.0}, "TrainConfig.adam_eps must be a finite number > 0, got 0.0"),
        ({"z_std": float("inf")}, "TrainConfig.z_std must be a finite number > 0, got inf"),
        ({"G_B2": 1.0}, r"TrainConfig.G_B2 must be in \[0, 1\), got 1.0"),
        ({"D_B1": -0.5}, r"TrainConfig.D_B1 must be in \[0, 1\), got -0.5"),
        ({"ema_decay": 1.5}, r"TrainConfig.ema_decay must be in \[0, 1\], got 1.5"),
    ],
)
def test_bad_training_settings_are_named(field, says):
    """Before any step: a negative rate trained away from the data, a beta of 1 divided by
    zero, a float batch failed deep inside the data code."""
    with pytest.raises(ValueError, match=says):
        TrainConfig(**field)
    with pytest.raises(ValueError, match=says):  # a resumed run's overrides too
        TC.replace(**field)
    assert TrainConfig(G_lr=0.0, D_lr=0, G_B1=0.5).G_lr == 0.0  # a frozen G is allowed


# --------------------------------------------------------------------------- a short run
def test_short_run_trains_logs_samples_and_checkpoints(run):
    out, trainer, summary = run
    rows = summary["rows"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and trainer.step == 4
    for r in rows:
        assert all(np.isfinite(r[k]) for k in ("G_loss", "D_loss_real", "D_loss_fake"))
    assert len({r["G_loss"] for r in rows}) == 4  # the losses move
    log = np.genfromtxt(out / "log.csv", delimiter=",", names=True)
    np.testing.assert_array_equal(log["step"], [1, 2, 3, 4])
    np.testing.assert_array_equal(log["G_loss"], [r["G_loss"] for r in rows])
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == [
        "step_00000002", "step_00000004"]  # fmt: skip
    for step in (2, 4):
        sheet = Image.open(out / "samples" / f"step_{step:08d}.png")
        assert sheet.size == (8 * 34 + 2, 4 * 34 + 2)  # 8 columns, one row per class
    state = _host(trainer.state)
    # Training mode ran: G's running BN statistics and every power-iteration u moved.
    start = _host(init_state(CFG, TC))
    assert not np.allclose(state["G"][BUFFERS]["output_layer.0"]["stored_mean"], 0)
    for net in ("G", "D"):
        flat = jax.tree_util.tree_flatten_with_path(state[net][BUFFERS])[0]
        before = dict(jax.tree_util.tree_flatten_with_path(start[net][BUFFERS])[0])
        for path, value in flat:
            if path[-1].key == "u0" and value.size > 1:  # a (1, 1) u stays ±1
                assert not np.array_equal(value, before[path]), path


def test_resume_equals_uninterrupted_run(run, dataset, one_device_mesh, tmp_path):
    out, trainer, summary = run
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    shutil.rmtree(cut / "checkpoints" / "step_00000004")  # interrupted after step 2's save
    assert latest_checkpoint(cut / "checkpoints").name == "step_00000002"
    with pytest.raises(ValueError, match="cannot change"):
        Trainer.resume(cut, mesh=one_device_mesh, batch_size=8)
    resumed = Trainer.resume(cut, mesh=one_device_mesh)
    assert resumed.step == 2 and resumed.data_position == 16
    rest = resumed.fit(dataset, log=None, workers=1)
    keys = ("step", "G_loss", "D_loss_real", "D_loss_fake")
    assert [[r[k] for k in keys] for r in rest["rows"]] == [
        [r[k] for k in keys] for r in summary["rows"][2:]
    ]
    assert _equal(_host(resumed.state), _host(trainer.state))
    log = np.genfromtxt(cut / "log.csv", delimiter=",", names=True)
    np.testing.assert_array_equal(log["step"], [1, 2, 3, 4])  # steps 3, 4 once each


def test_interrupt_saves_a_checkpoint(dataset, one_device_mesh, tmp_path):
    trainer = Trainer(CFG, TC.replace(save_every=0, sample_every=0), tmp_path, mesh=one_device_mesh)

    def stop(step, row):
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.fit(dataset, callback=stop, log=None, workers=1)
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_00000001"
    assert Trainer.resume(tmp_path, mesh=one_device_mesh).step == 1


def test_ema_follows_the_formula_in_the_step(dataset, one_device_mesh, tmp_path):
    trainer = Trainer(CFG, TC, tmp_path, mesh=one_device_mesh)
    batches = BatchIterator(dataset, TC.images_per_step, 32, prefetch=0, workers=1)
    states = [_host(trainer.state)]
    for _ in range(3):
        trainer.train_step(*next(batches))
        states.append(_host(trainer.state))
    # itr 1, 2 < ema_start = 3: G_ema is a copy of G.
    assert _equal(states[1]["G_ema"], states[1]["G"])
    assert _equal(states[2]["G_ema"], states[2]["G"])
    assert not _equal(states[2]["G"], states[3]["G"])
    want = jax.tree.map(
        lambda e, g: e * np.float32(0.9) + g * np.float32(1 - 0.9),
        states[2]["G_ema"], states[3]["G"],
    )  # fmt: skip
    for got, exp in zip(jax.tree.leaves(states[3]["G_ema"]), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got, exp, rtol=1e-6, atol=1e-7)
    assert int(states[3]["step"]) == 3 and int(states[3]["opt_G"][0].count) == 3
    assert int(states[3]["opt_D"][0].count) == 3 * TC.num_D_steps


# --------------------------------------------------------------------------- training mode
def _power_iteration(weight, u, eps):
    """BigGAN-PyTorch's power_iteration (one singular vector), in numpy."""
    w = np.asarray(weight, np.float64).reshape(weight.shape[0], -1)
    v = u @ w
    v = v / max(np.linalg.norm(v), eps)
    u_new = v @ w.T
    u_new = u_new / max(np.linalg.norm(u_new), eps)
    return u_new, (v @ w.T @ u_new.T)[0, 0]


def test_power_iteration_updates_in_training_only():
    variables = _host(init_state(CFG, TC)["D"])
    # Orthogonal weights have all singular values 1 and leave any u in place: perturb them.
    rng = np.random.default_rng(0)
    variables[PARAMS] = jax.tree.map(
        lambda w: w + 0.5 * rng.standard_normal(w.shape).astype(w.dtype), variables[PARAMS]
    )
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3), jnp.float32)
    y = jnp.array([0, 3])
    apply = jax.jit(
        lambda v, train: Discriminator(CFG).apply(v, x, y, train=train, mutable=[BUFFERS]),
        static_argnums=1,
    )
    (logits_eval, _), eval_state = apply(variables, False)
    (logits_train, _), train_state = apply(variables, True)
    assert _equal(_host(eval_state[BUFFERS]), variables[BUFFERS])  # evaluation writes nothing
    # Same one-iteration sigma either way, so the same logits; training stores u' and sigma.
    np.testing.assert_allclose(logits_train, logits_eval, rtol=1e-6)
    for path in (("embed",), ("blocks.1.0", "conv1"), ("linear",)):
        old, new, params = variables[BUFFERS], _host(train_state[BUFFERS]), variables[PARAMS]
        for p in path:
            old, new, params = old[p], new[p], params[p]
        u_new, sigma = _power_iteration(params["weight"], old["u0"], CFG.SN_eps)
        if old["u0"].size > 1:  # D's last linear has a (1, 1) u: it stays ±1
            assert not np.allclose(new["u0"], old["u0"])
        np.testing.assert_allclose(new["u0"], u_new, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(new["sv0"], [sigma], rtol=1e-5)


def test_batchnorm_uses_batch_statistics_in_training():
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 4, 4, 5), jnp.float32) * 2 + 1
    bn = BatchNorm(eps=1e-5)
    variables = _host(bn.init(jax.random.PRNGKey(0), x))
    variables[PARAMS] = {"gain": np.linspace(0.5, 1.5, 5, dtype=np.float32),
                         "bias": np.linspace(-1, 1, 5, dtype=np.float32)}  # fmt: skip
    out_eval, eval_state = bn.apply(variables, x, mutable=[BUFFERS])
    out, state = bn.apply(variables, x, train=True, mutable=[BUFFERS])
    xs = np.asarray(x, np.float64).reshape(-1, 5)
    mean, var = xs.mean(0), xs.var(0)  # biased, for normalising
    want = (np.asarray(x) - mean) / np.sqrt(var + 1e-5) * variables[PARAMS]["gain"]
    np.testing.assert_allclose(out, want + variables[PARAMS]["bias"], rtol=1e-5, atol=1e-5)
    stats = state[BUFFERS]
    np.testing.assert_allclose(stats["stored_mean"], 0.1 * mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats["stored_var"], 0.9 + 0.1 * xs.var(0, ddof=1), rtol=1e-5)
    # Evaluation: the stored statistics (0, 1), untouched.
    np.testing.assert_allclose(
        out_eval, np.asarray(x) / np.sqrt(1 + 1e-5) * variables[PARAMS]["gain"]
        + variables[PARAMS]["bias"], rtol=1e-5, atol=1e-6,
    )  # fmt: skip
    assert _equal(_host(eval_state[BUFFERS]), variables[BUFFERS])


def test_conditional_batchnorm_matches_torch_batch_norm():
    torch = require_torch()
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 2, 2, 6), jnp.float32) * 3 - 1
    cond = jax.random.normal(jax.random.PRNGKey(4), (4, 7), jnp.float32)
    cbn = ConditionalBatchNorm(eps=1e-5, sn_eps=1e-6)
    variables = _host(cbn.init(jax.random.PRNGKey(0), x, cond))
    variables[BUFFERS]["stored_mean"] = np.full(6, 0.3, np.float32)
    variables[BUFFERS]["stored_var"] = np.full(6, 2.0, np.float32)
    for k in ("gain", "bias"):  # not orthogonal, so that the power iteration moves u
        variables[PARAMS][k]["weight"] = variables[PARAMS][k]["weight"] + np.float32(0.3)
    out, state = cbn.apply(variables, x, cond, train=True, mutable=[BUFFERS])
    # The reference: ccbn.forward in training = F.batch_norm(training=True) * gain + bias.
    run_mean, run_var = torch.full((6,), 0.3), torch.full((6,), 2.0)
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    normed = torch.nn.functional.batch_norm(xt, run_mean, run_var, None, None, True, 0.1, 1e-5)
    gain_w, bias_w = (variables[PARAMS][k]["weight"] for k in ("gain", "bias"))
    sigma = lambda w, u: _power_iteration(w, u, 1e-6)[1]  # noqa: E731
    gain = 1 + np.asarray(cond) @ (gain_w / sigma(gain_w, variables[BUFFERS]["gain"]["u0"])).T
    bias = np.asarray(cond) @ (bias_w / sigma(bias_w, variables[BUFFERS]["bias"]["u0"])).T
    want = normed.numpy().transpose(0, 2, 3, 1) * gain[:, None, None] + bias[:, None, None]
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state[BUFFERS]["stored_mean"], run_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(state[BUFFERS]["stored_var"], run_var.numpy(), rtol=1e-5)
    # The SN layers inside advanced too.
    assert not np.allclose(state[BUFFERS]["gain"]["u0"], variables[BUFFERS]["gain"]["u0"])


def test_generator_training_mode_differs_from_evaluation_only_when_asked():
    g = _host(init_state(CFG, TC)["G"])
    # Batch 2, as in test_saved_model_loads_and_generates: one compile of BigGAN.generate.
    z = jax.random.normal(jax.random.PRNGKey(5), (2, CFG.effective_dim_z), jnp.float32)
    y = jnp.array([0, 3])
    apply = jax.jit(
        lambda v, train: Generator(CFG).apply(v, z, y, train=train, mutable=[BUFFERS]),
        static_argnums=1,
    )
    x_eval, s_eval = apply(g, False)
    x_train, s_train = apply(g, True)
    np.testing.assert_array_equal(x_eval, dgp_jax.BigGAN(CFG, g).generate(z, y))
    assert _equal(_host(s_eval[BUFFERS]), g[BUFFERS])
    assert not np.allclose(x_train, x_eval, atol=1e-3)  # batch statistics, not (0, 1)
    new = s_train[BUFFERS]["blocks.0.0"]["bn1"]
    assert not np.allclose(new["stored_mean"], 0) and not np.allclose(new["stored_var"], 1)


# --------------------------------------------------------------------------- the model
def test_saved_model_loads_and_generates(run, tmp_path):
    out, trainer, _ = run
    model = dgp_jax.load_biggan(out / "model")
    assert model.config == CFG and model.discriminator is not None
    state = _host(trainer.state)
    assert _equal(model.generator, state["G_ema"]) and _equal(model.discriminator, state["D"])
    z = jax.random.normal(jax.random.PRNGKey(6), (2, CFG.effective_dim_z), jnp.float32)
    images = np.asarray(model.generate(z, jnp.array([1, 2])))
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()
    assert np.abs(images).max() <= 1
    logits, _ = model.discriminate(jnp.asarray(images), jnp.array([1, 2]))
    assert np.isfinite(np.asarray(logits)).all()
    assert checkpoint.read_meta(out / "model")["metadata"]["trained_steps"] == 4
    # ... and exports to BigGAN-PyTorch's .pth files, which load back to the same model.
    checkpoint.export_pth(out / "model", tmp_path / "G_ema.pth", tmp_path / "D.pth")
    again = dgp_jax.load_biggan(tmp_path / "G_ema.pth", tmp_path / "D.pth")
    assert again.config == CFG
    assert _equal(again.generator, model.generator)


def test_cli_trains_and_resumes(image_dir, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "train_biggan", ROOT / "experiments" / "train_biggan.py"
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "cli"
    common = ["--out", str(out), "--devices", "1", "--workers", "1"]
    args = [
        "--data", str(image_dir), "--resolution", "32", "--G_ch", "4", "--D_ch", "4",
        "--dim_z", "20", "--shared_dim", "8", "--batch", "4", "--num_D_steps", "2",
        "--ema_decay", "0.9", "--ema_start", "3", "--steps", "1", "--log_every", "1",
    ]  # fmt: skip
    # bad settings are named before the data is opened or a folder made
    with pytest.raises(SystemExit, match="training settings: TrainConfig.G_lr must be a finite"):
        cli.main(args + common + ["--G_lr", "-1"])
    with pytest.raises(SystemExit, match="model settings: resolution 48 is not a BigGAN"):
        cli.main(args + common + ["--resolution", "48"])
    assert not out.exists()
    assert cli.main(args + common) == 0
    text = capsys.readouterr().out
    assert "4 classes" in text and "step 1/1" in text and "done: step 1" in text
    with pytest.raises(SystemExit, match="already holds a run"):
        cli.main(args + common)
    assert cli.main(["--resume", "--steps", "2"] + common) == 0  # the data spec is recorded
    assert "resuming" in capsys.readouterr().out
    log = np.genfromtxt(out / "log.csv", delimiter=",", names=True)
    np.testing.assert_array_equal(log["step"], [1, 2])
    assert dgp_jax.load_biggan(out / "model").config == CFG


# --------------------------------------------------------------------------- data
def test_folder_and_list_inputs(tmp_path):
    root = _write_images(tmp_path / "folder", ["cats", "dogs"], 3, seed=1)
    ds = image_folder(root)
    assert ds.class_names == ["cats", "dogs"] and len(ds) == 6
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 1, 1])
    batches = BatchIterator(ds, 4, 32, seed=3, prefetch=0, workers=1)
    images, labels = next(batches)
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.float32
    assert labels.dtype == np.int32 and -1 <= images.min() and images.max() <= 1
    second = next(batches)
    # Deterministic in (seed, position): an iterator started at 4 continues the stream,
    # across the epoch boundary (6 images) and with the background prefetch on.
    with BatchIterator(ds, 4, 32, seed=3, start=4, workers=2) as resumed:
        again = next(resumed)
    np.testing.assert_array_equal(again[0], second[0])
    np.testing.assert_array_equal(again[1], second[1])
    other = next(BatchIterator(ds, 4, 32, seed=4, prefetch=0))
    assert not np.array_equal(other[0], images)
    epoch = [next(BatchIterator(ds, 6, 32, seed=s, prefetch=0))[1] for s in (3, 4)]
    assert all(sorted(e.tolist()) == [0, 0, 0, 1, 1, 1] for e in epoch)  # each image once

    (root / "train.txt").write_text("# path class\ncats/0.png 0\n\ndogs/2.png 2\n")
    listed = list_file(root / "train.txt")
    assert len(listed) == 2 and listed.n_classes == 3
    np.testing.assert_array_equal(listed.labels, [0, 2])
    assert open_dataset(root / "train.txt").sources == listed.sources
    assert next(BatchIterator(listed, 2, 32, augment=False, prefetch=0))[0].shape == (2, 32, 32, 3)
    (root / "bad.txt").write_text("cats/0.png zero\n")
    with pytest.raises(DataError, match="not an integer"):
        list_file(root / "bad.txt")


def test_empty_folder_and_missing_tfds_are_clear_errors(tmp_path, monkeypatch):
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    (tmp_path / "empty" / "cats" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images found in .*empty"):
        image_folder(tmp_path / "empty")
    with pytest.raises(DataError, match="neither a folder"):
        open_dataset(tmp_path / "missing")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(DataError, match="pip install tensorflow-datasets"):
        open_dataset("tfds:cifar10")
