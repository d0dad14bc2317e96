"""dgp_jax.attacks: FGSM and PGD checked against a closed-form classifier, and the
differentiable ResNet-50 input path against the metric's eval transform."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgp_jax import attacks
from dgp_jax.metrics import classification
from dgp_jax.nets import resnet
from tests._resnet import random_resnet50_state

SHAPE = (4, 6, 5, 3)  # four 6x5 images
CLASSES = 7


def linear_logits(params, images):
    return images.reshape(len(images), -1) @ params["w"] + params["b"]


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((int(np.prod(SHAPE[1:])), CLASSES)).astype(np.float32),
              "b": rng.standard_normal(CLASSES).astype(np.float32)}  # fmt: skip
    images = rng.uniform(-1, 1, SHAPE).astype(np.float32)
    images[0, 0, 0] = [1.0, -1.0, 0.99]  # values at and near the range's ends
    labels = np.argmax(linear_logits(params, images), axis=1)
    return params, images, labels


def input_gradient(params, images, labels):
    """d cross-entropy / d image, by hand: W (softmax - onehot), in float64."""
    logits = images.reshape(len(images), -1).astype(np.float64) @ params["w"] + params["b"]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    probs[np.arange(len(images)), labels] -= 1
    return (probs @ params["w"].T.astype(np.float64)).reshape(images.shape)


def reference_bim(params, images, labels, eps, step_size, steps):
    """Iterative FGSM in numpy, [-1, 1] units: 2 * eps, 2 * step_size."""
    low = np.maximum(images - 2 * np.float32(eps), -1)
    high = np.minimum(images + 2 * np.float32(eps), 1)
    x = images.copy()
    for _ in range(steps):
        g = input_gradient(params, x, labels)
        x = np.clip(x + 2 * np.float32(step_size) * np.sign(g).astype(np.float32), low, high)
    return x


def test_fgsm_is_one_signed_gradient_step_clipped_to_the_range(problem):
    params, images, labels = problem
    eps = 8 / 255
    adv = attacks.fgsm(linear_logits, params, images, labels, eps=eps)
    signs = np.sign(input_gradient(params, images, labels)).astype(np.float32)
    expected = np.clip(images + 2 * np.float32(eps) * signs, -1, 1)
    np.testing.assert_allclose(adv, expected, rtol=0, atol=1e-6)
    assert adv.dtype == np.float32 and adv.shape == SHAPE
    moved = np.abs(adv - images)
    inside = np.abs(expected) < 1
    np.testing.assert_allclose(moved[inside], 2 * eps, rtol=0, atol=1e-6)  # a full step
    assert adv[0, 0, 0, 0] <= 1.0 and adv[0, 0, 0, 1] >= -1.0


def test_iterative_fgsm_matches_a_numpy_reference_and_stays_in_the_ball(problem):
    params, images, labels = problem
    eps, step, steps = 4 / 255, 1 / 255, 6
    adv = attacks.pgd_linf(linear_logits, params, images, labels, eps=eps, steps=steps,
                           step_size=step)  # fmt: skip
    np.testing.assert_allclose(adv, reference_bim(params, images, labels, eps, step, steps),
                               rtol=0, atol=1e-6)  # fmt: skip
    assert np.abs(adv - images).max() <= 2 * eps + 1e-6
    assert adv.min() >= -1 and adv.max() <= 1
    # The budget is reached: steps * step > eps, so the walk ends on the ball's edge.
    assert np.isclose(np.abs(adv - images).max(), 2 * eps, atol=1e-6)


def test_pgd_flips_every_prediction_and_its_random_start_is_seeded(problem):
    params, images, labels = problem
    eps = 32 / 255  # this classifier's margins are wide: 8/255 flips two of the four
    clean = np.argmax(linear_logits(params, images), axis=1)
    adv = attacks.pgd_linf(linear_logits, params, images, labels, eps=eps, steps=10,
                           key=jax.random.PRNGKey(0))  # fmt: skip
    assert np.all(np.argmax(linear_logits(params, adv), axis=1) != clean)
    again = attacks.pgd_linf(linear_logits, params, images, labels, eps=eps, steps=10,
                             key=jax.random.PRNGKey(0))  # fmt: skip
    np.testing.assert_array_equal(adv, again)
    other = attacks.pgd_linf(linear_logits, params, images, labels, eps=eps, steps=10,
                             key=jax.random.PRNGKey(1))  # fmt: skip
    assert not np.array_equal(adv, other)
    assert np.abs(other - images).max() <= 2 * eps + 1e-6


def test_bad_input_is_named(problem):
    params, images, labels = problem
    with pytest.raises(ValueError, match=r"images must have shape \(N, H, W, 3\)"):
        attacks.fgsm(linear_logits, params, images[..., :2], labels, eps=0.1)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        attacks.fgsm(linear_logits, params, images, labels[:3], eps=0.1)
    with pytest.raises(ValueError, match="eps must be positive"):
        attacks.pgd_linf(linear_logits, params, images, labels, eps=0.0)


def test_resnet50_on_images_is_the_tensor_eval_transform_then_resnet50():
    params = jax.tree.map(jnp.asarray, resnet.params_from_state_dict(random_resnet50_state()))
    rng = np.random.default_rng(1)
    # 64x48: upsampled to 341x256 then cropped; 256x260: short side already 256, no resize.
    for h, w in ((64, 48), (256, 260)):
        images = rng.uniform(-1, 1, (2, h, w, 3)).astype(np.float32)
        want = classification.ResNet50(params, backend="tensor").logits(images)
        got = np.asarray(jax.jit(attacks.resnet50_on_images(h, w))(params, images))
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale, err_msg=f"{h}x{w}")
        assert np.array_equal(got.argmax(1), want.argmax(1))


def test_fgsm_on_resnet50_raises_each_images_loss():
    params = jax.tree.map(jnp.asarray, resnet.params_from_state_dict(random_resnet50_state()))
    images = np.random.default_rng(2).uniform(-1, 1, (2, 64, 48, 3)).astype(np.float32)
    logits_fn = attacks.resnet50_on_images(64, 48)
    labels = np.asarray(logits_fn(params, images)).argmax(1)
    adv = attacks.fgsm(logits_fn, params, images, labels, eps=2 / 255)
    assert np.abs(adv - images).max() <= 2 * 2 / 255 + 1e-6

    def loss(x):
        logits = np.asarray(logits_fn(params, x), np.float64)
        return np.log(np.exp(logits).sum(1)) - logits[np.arange(2), labels]

    assert np.all(loss(adv) > loss(images) + 0.01), (loss(images), loss(adv))


# --------------------------------------------------------------------------- dgp-jax attack
def test_attack_command_writes_the_images_their_labels_and_a_record(tmp_path, tmp_path_factory,
                                                                   capsys):  # fmt: skip
    from dgp_jax import attacks, cli
    from dgp_jax.images import load_image, read_image
    from tests._resnet import resnet50_weights_folder
    from tests.test_runner import make_photos

    photos = make_photos(tmp_path / "photos", 3)
    (tmp_path / "photos" / "list.txt").write_text("p1.png 417\n")  # p0, p2: no class given
    out, eps = tmp_path / "attacked", "4/255"
    argv = ["attack", str(tmp_path / "photos"), "--out", str(out), "--resolution", "32",
            "--nets", str(resnet50_weights_folder(tmp_path_factory)), "--method", "fgsm",
            "--eps", eps, "--batch", "2"]  # fmt: skip
    compiled = attacks._pgd._cache_size()
    assert cli.main(argv) == 0
    # Batches of 2 and 1: the short one ran the program of the full one (no other test
    # attacks 32 px images, so this run compiled exactly one).
    assert attacks._pgd._cache_size() == compiled + 1
    assert sorted(p.name for p in out.iterdir()) == ["attack.json", "labels.lst", "p0.png",
                                                     "p1.png", "p2.png"]  # fmt: skip
    record = json.loads((out / "attack.json").read_text())
    assert record["method"] == "fgsm" and record["steps"] == 1 and record["images"] == 3
    assert record["eps"] == 4 / 255 and record["step_size"] == 4 / 255
    lines = (out / "labels.lst").read_text().splitlines()
    assert lines[1] == "p1.png 417"  # the input's class; p0's is the clean prediction
    assert record["top1_clean"] >= 0.5  # p0's label is the clean answer: a hit
    for photo in photos:
        clean = load_image(photo, 32)
        attacked = read_image(out / photo.name)
        assert attacked.shape == (32, 32, 3)
        # Within the budget plus half a level (the file holds the attack rounded to 8
        # bits), and moved.
        levels = np.abs(attacked - clean) * 127.5
        assert levels.max() <= 4 + 0.5 + 1e-6 and levels.mean() > 1
    # A second run into the same folder is refused: finished work is never overwritten.
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    assert cli.main(argv) == 2
    assert f"--out {out} is not empty: choose a new folder" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


def test_the_commands_defaults_are_the_readmes(tmp_path, monkeypatch):
    """attack: PGD, eps 8/255, 10 steps of Madry's 2.5 eps / steps, seed 0, batches of 8;
    masks: AOT-GAN's buckets. (The command tests above pass each of these explicitly.)"""
    from dgp_jax import attacks, cli, masks
    from dgp_jax.run import attack

    seen = []
    monkeypatch.setattr(attack, "run_attack", lambda options: seen.append(options) or {
        "images": 0, "top1_clean": 0.0, "top1_attacked": 0.0})  # fmt: skip
    argv = ["attack", str(tmp_path), "--out", str(tmp_path / "o"), "--nets", str(tmp_path),
            "--resolution", "64"]  # fmt: skip
    assert cli.main(argv) == 0
    (options,) = seen
    assert (options.method, options.eps, options.steps) == ("pgd", 8 / 255, 10)
    assert (options.step_size, options.seed, options.batch) == (None, 0, 8)
    assert attacks.default_step_size(8 / 255, 10) == pytest.approx(2 / 255, rel=1e-15)
    args = cli.build_parser().parse_args(["masks", "--size", "64", "--per-bucket", "1",
                                          "--out", str(tmp_path / "m")])  # fmt: skip
    assert masks.parse_buckets(args.buckets) == masks.parse_buckets("aot-gan")


def test_attack_command_refuses_bad_input_before_any_work(tmp_path, capsys):
    from dgp_jax import cli
    from tests.test_runner import make_photos

    make_photos(tmp_path / "photos", 1)
    out = tmp_path / "attacked"
    base = ["attack", str(tmp_path / "photos"), "--out", str(out), "--resolution", "32",
            "--nets", str(tmp_path)]  # fmt: skip
    cases = [
        (["--eps", "eight"], "--eps must be a number or a fraction such as 8/255, got 'eight'"),
        (["--eps", "0"], "--eps must be in (0, 1]"),
        (["--step-size", "2"], "--step-size must be in (0, 1]"),
        (["--method", "cw"], "--method must be one of pgd, fgsm, got 'cw'"),
        (["--steps", "0"], "--resolution, --steps and --batch must be positive"),
        ([], "resnet50-0676ba61.pth"),  # the missing weight file, named
    ]
    for extra, message in cases:
        assert cli.main(base + extra) == 2, extra
        assert message in capsys.readouterr().err, extra
        assert not out.exists(), extra  # nothing left behind
    # A class the classifier does not have is named with its file (-1 alone means unknown).
    for cls in (1000, -2):
        (tmp_path / "photos" / "list.txt").write_text(f"p0.png {cls}\n")
        assert cli.main(base) == 2
        err = capsys.readouterr().err
        assert f"p0.png (class {cls}): ResNet-50 has 1000 classes" in err, cls
        assert not out.exists()
    (tmp_path / "photos" / "list.txt").unlink()
    missing = ["attack", str(tmp_path / "nothing.png"), "--out", str(out), "--resolution", "32",
               "--nets", str(tmp_path)]  # fmt: skip
    assert cli.main(missing) == 2
    assert "no input file or folder at" in capsys.readouterr().err and not out.exists()
    # An unreadable image among readable ones: named, and nothing written for the others.
    (tmp_path / "photos" / "broken.png").write_bytes(b"not a png")
    assert cli.main(base) == 2
    assert "broken.png" in capsys.readouterr().err and not out.exists()
