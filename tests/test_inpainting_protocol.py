"""One mask per image in a solve, and experiments/inpainting_protocol.py end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import dgp_jax
from dgp_jax import degradations, masks, solve
from dgp_jax.metrics import registry
from dgp_jax.metrics.inpainting import hole_psnr
from dgp_jax.nets.biggan import BigGANConfig
from tests.conftest import load_experiment

TINY = BigGANConfig(resolution=32, G_ch=4, D_ch=4, n_classes=10, shared_dim=16, dim_z=20,
                    G_attn="0", D_attn="0")  # fmt: skip
EXAMPLES = [f"heldout/{n}.png" for n in ("flora_LadyBird_0", "landscape_EveningGlow_0",
                                         "objects_ColorfulCups_0")]  # fmt: skip


@pytest.mark.cheap_compiles  # compile-bound (tests/_compiling.py)
def test_each_image_of_a_batch_is_solved_with_its_own_mask(one_device_mesh):
    model = dgp_jax.random_biggan(TINY, jax.random.PRNGKey(0), dtype=jnp.float64)
    images = np.asarray(jax.random.uniform(jax.random.PRNGKey(3), (2, 32, 32, 3), jnp.float64,
                                           -1, 1))  # fmt: skip
    keep = masks.bucket_masks(32, masks.parse_buckets("30-40")[0], 2, seed=1)[..., None]
    config = dgp_jax.SolverConfig(dgp_mode="inpainting", iterations=(2, 2), ft_num=(1, 2),
                                  lr_ratio=(1.0, 1.0), G_lrs=(1e-3, 5e-4), z_lrs=(1e-2, 1e-3),
                                  w_D_loss=(1.0, 1.0), w_mse=(1.0, 10.0), ftr_num=(3, 3),
                                  use_in=(True, True), select_num=3, select_batch=3)  # fmt: skip
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(7), i))(jnp.arange(2))
    together = dgp_jax.restore(model, images, [1, 2], config, keys, mesh=one_device_mesh,
                               degradation=degradations.inpainting(keep))  # fmt: skip
    # Image 0 alone with its mask as one (H, W, 1) mask, compiled into the program; image 1
    # alone as a one-image mask stack (the protocol's --batch 1), which is data.
    for i, keep_alone in ((0, keep[0]), (1, keep[1:2])):
        alone = dgp_jax.restore(model, images[i : i + 1], [1 + i], config, keys[i : i + 1],
                                mesh=one_device_mesh,
                                degradation=degradations.inpainting(keep_alone))  # fmt: skip
        np.testing.assert_allclose(together.images[i], alone.images[0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(together.history["loss"][:, i], alone.history["loss"][:, 0],
                                   rtol=1e-12)  # fmt: skip
        np.testing.assert_array_equal(together.degraded[i], images[i] * keep[i])
        # The metrics score each image's own hole.
        expected = hole_psnr(alone.images[0], images[i], keep[i])
        assert together.metrics["psnr"][i] == pytest.approx(expected, rel=1e-12)
        assert alone.metrics["psnr"][0] == pytest.approx(expected, rel=1e-12)
    # Other masks are other data, not another program: at two images, and at one (solving
    # one-image mask stacks once compiled a program per mask, until XLA:CPU ran out of code
    # memory).
    before = solve.TRACE_COUNTS["step"]
    dgp_jax.restore(model, images, [1, 2], config, keys, mesh=one_device_mesh,
                    degradation=degradations.inpainting(keep[::-1].copy()))  # fmt: skip
    first = dgp_jax.restore(model, images[:1], [1], config, keys[:1], mesh=one_device_mesh,
                            degradation=degradations.inpainting(keep[:1]))  # fmt: skip
    assert solve.TRACE_COUNTS["step"] == before
    np.testing.assert_allclose(first.images[0], together.images[0], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="2 per-image masks for 3 images"):
        three = np.concatenate([images, images[:1]])
        dgp_jax.restore(model, three, [1, 2, 3], config, keys[0], mesh=one_device_mesh,
                        degradation=degradations.inpainting(keep))  # fmt: skip
    with pytest.raises(ValueError, match="one mask per image"):
        degradations.compose(degradations.grayscale(), degradations.inpainting(keep))


def observation(observed, degradation, *, seed, config):
    """A registered method for the test: the masked input itself."""
    return observed


def mean_hole_ratio():
    """A set metric for the test: one value per (method, bucket)."""

    def evaluate(restored, reference, masks):
        return {"set_hole_ratio": float(1 - np.mean(masks))}

    return evaluate


def scaled_hole_ratio(scale=1.0):
    """A set metric with an option (--metric-option scaled_ratio.scale=...)."""

    def evaluate(restored, reference, masks):
        return {"scaled_hole_ratio": float(scale) * float(1 - np.mean(masks))}

    return evaluate


@pytest.fixture(scope="module")
def shipped_model():
    return dgp_jax.load_default_biggan()


@pytest.fixture
def protocol(monkeypatch):
    """experiments/inpainting_protocol.py, with this module's method and set metrics
    registered: observation, set_ratio and scaled_ratio."""
    from dgp_jax import baselines

    here = "tests.test_inpainting_protocol"
    monkeypatch.setitem(baselines.METHODS, "observation", f"{here}:observation")
    monkeypatch.setitem(registry.EVALUATORS, "set_ratio", f"{here}:mean_hole_ratio")
    monkeypatch.setitem(registry.EVALUATORS, "scaled_ratio", f"{here}:scaled_hole_ratio")
    return load_experiment("inpainting_protocol")


def test_protocol_on_three_photos_and_two_buckets(tmp_path, shipped_model, one_device_mesh,
                                                   protocol, monkeypatch):  # fmt: skip
    listing = tmp_path / "photos.txt"
    root = protocol.REPO / "examples"
    listing.write_text("".join(f"{root / p} {c}\n" for p, c in zip(EXAMPLES, (0, 1, 2),
                                                                 strict=True)))  # fmt: skip
    out = tmp_path / "out"
    # A tiny schedule: one step fine-tuning G's first block, no start-candidate search.
    argv = ["--out", str(out), "--list", str(listing), "--buckets", "10-20,40-50",
            "--methods", "dgp,mse-only,observation",
            "--metrics", "inpainting_hole,aot_gan,set_ratio", "--set", "iterations=1,0,0,0,0",
            "--set", "select_num=1", "--set", "ft_num=1", "--quiet"]  # fmt: skip
    assert protocol.main(argv, model=shipped_model, mesh=one_device_mesh) == 0

    names = [p.split("/")[1][:-4] for p in EXAMPLES]
    table = json.loads((out / "table.json").read_text())
    rows = {(r["method"], r["bucket"]): r for r in table["table"]}
    assert sorted(rows) == sorted((m, b) for m in ("dgp", "mse-only", "observation")
                                  for b in ("10-20", "40-50"))  # fmt: skip
    for bucket in masks.parse_buckets("10-20,40-50"):
        keep = masks.bucket_masks(64, bucket, 3, seed=0)
        ratios = masks.hole_ratio(keep)
        assert np.all((ratios > bucket.low) & (ratios < bucket.high))
        for i, name in enumerate(names):
            mask_png = np.asarray(Image.open(out / "masks" / bucket.name / f"{i:04d}.png"))
            np.testing.assert_array_equal(mask_png, keep[i] * 255)
            original = np.asarray(Image.open(root / EXAMPLES[i]).convert("RGB"))
            for method in ("dgp", "observation"):
                composite = np.asarray(Image.open(out / method / bucket.name / f"{name}.png"))
                # The composite is the original, bit for bit, wherever the mask keeps.
                kept = keep[i] == 1
                np.testing.assert_array_equal(composite[kept], original[kept])
        row = rows[("dgp", bucket.name)]
        assert row["mean_hole_ratio"] == pytest.approx(float(np.mean(ratios)))
        # A registered set metric reports one value per (method, bucket).
        assert row["mean"]["set_hole_ratio"] == pytest.approx(float(np.mean(ratios)))
        assert set(row["mean"]) == {"hole_psnr", "hole_ssim", "aot_l1", "aot_psnr", "aot_ssim",
                                    "set_hole_ratio"}  # fmt: skip
        # The observation leaves the hole at 0: level 127 in the 8-bit composite.
        for i, name in enumerate(names):
            composite = np.asarray(Image.open(out / "observation" / bucket.name / f"{name}.png"))
            assert np.all(composite[keep[i] == 0] == 127)
    per_image = [r for r in table["per_image"] if r["method"] == "dgp"]
    assert len(per_image) == 6 and all(np.isfinite(r["hole_psnr"]) for r in per_image)
    markdown = (out / "table.md").read_text().splitlines()
    assert markdown[0] == "| metric | method | 10-20 | 40-50 |"
    assert len(markdown) == 2 + 6 * 3 and markdown[2].startswith("| hole PSNR | dgp | ")
    # dB to 2 decimals; fractions (SSIM, LPIPS, P-IDS, this set metric) to 4.
    for head, digits in (("hole PSNR", 2), ("hole SSIM", 4), ("set_hole_ratio", 4)):
        row = next(line for line in markdown if line.startswith(f"| {head} | dgp | "))
        assert [len(c.split(".")[1]) for c in row.strip("| ").split(" | ")[2:]] == [digits] * 2, row
    csv_lines = (out / "table.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,bucket,images,mean_hole_ratio") and len(csv_lines) == 7
    sheet = np.asarray(Image.open(out / "sheet_40-50.png"))
    assert sheet.shape[0] == 3 * 64 and sheet.shape[1] >= 5 * 64  # masked, 3 methods, original

    # Resumable: a rerun solves nothing and writes the same table.
    def no_solve(*args, **kwargs):
        raise AssertionError("a finished image was solved again")

    before = (out / "table.md").read_text()
    monkeypatch.setattr(dgp_jax, "restore", no_solve)
    assert protocol.main(argv, model=shipped_model, mesh=one_device_mesh) == 0
    assert (out / "table.md").read_text() == before
    # Other settings in the same folder are refused.
    other = [a if a != "select_num=1" else "select_num=2" for a in argv]
    assert protocol.main(other, model=shipped_model, mesh=one_device_mesh) == 2
    with pytest.raises(SystemExit, match="unknown nope"):
        protocol.main(argv[:4] + ["--methods", "dgp,nope"], model=shipped_model)


def test_protocol_limit_metric_options_and_force(tmp_path, shipped_model, protocol):
    """--limit takes the list's first images, --metric-option reaches its metric, and a
    folder of other settings is refused unless --force (a method that solves nothing)."""
    listing = tmp_path / "photos.txt"
    listing.write_text("".join(f"{protocol.REPO / 'examples' / p}\n" for p in EXAMPLES))
    out = tmp_path / "out"
    argv = ["--out", str(out), "--list", str(listing), "--buckets", "10-20",
            "--methods", "observation", "--metrics", "inpainting_hole,scaled_ratio",
            "--metric-option", "scaled_ratio.scale=2", "--limit", "2", "--quiet"]  # fmt: skip
    assert protocol.main(argv, model=shipped_model) == 0
    table = json.loads((out / "table.json").read_text())
    assert [r["image"] for r in table["per_image"]] == [p.split("/")[1][:-4] for p in EXAMPLES[:2]]
    keep = masks.bucket_masks(64, masks.parse_buckets("10-20")[0], 2, seed=0)
    row = table["table"][0]
    assert row["mean"]["scaled_hole_ratio"] == pytest.approx(
        2 * float(np.mean(masks.hole_ratio(keep)))
    )
    marker = next((out / "observation" / "10-20").glob("*.done.json"))
    written = marker.read_text()
    # another seed is other settings: refused, then redone with --force
    assert protocol.main([*argv, "--seed", "1"], model=shipped_model) == 2
    assert marker.read_text() == written
    assert protocol.main([*argv, "--seed", "1", "--force"], model=shipped_model) == 0
    redone = json.loads(marker.read_text())
    assert redone["fingerprint"] != json.loads(written)["fingerprint"]
