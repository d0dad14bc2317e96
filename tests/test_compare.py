"""dgp-jax compare: same φ for every method, resumable per method and image, the tables."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dgp_jax import baselines, compare, degradations
from dgp_jax.images import load_image, to_uint8
from dgp_jax.metrics import restoration_metrics
from dgp_jax.run.settings import RunError

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = [str(ROOT / "examples/heldout/flora_FreshFlower_0.png"),
          str(ROOT / "examples/heldout/objects_Wine_by_Jakkub_Mede_0.png")]  # fmt: skip
CALLS: list[tuple[int, object]] = []
SETTINGS = ("factor", "scale")


def fake(observed, degradation, *, seed, config):
    """A cheap stand-in method: records its calls; returns scale * the observation."""
    CALLS.append((len(observed), seed))
    assert degradation.name == "SR"
    return np.asarray(observed) * config.get("scale", 1.0)


@pytest.fixture
def with_fake(monkeypatch):
    monkeypatch.setitem(baselines.METHODS, "fake", "tests.test_compare:fake")
    CALLS.clear()


def _options(out, **kw):
    base = dict(task="SR", methods=["bicubic", "nearest", "observation", "fake"],
                inputs=PHOTOS, out=str(out), progress=False)  # fmt: skip
    return compare.CompareOptions(**{**base, **kw})


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_compare_two_photos_tables_and_resume(tmp_path, with_fake):
    report = compare.execute(_options(tmp_path, batch=2))
    assert report.done == {m: ["flora_FreshFlower_0", "objects_Wine_by_Jakkub_Mede_0"]
                           for m in ("bicubic", "nearest", "observation", "fake")}  # fmt: skip
    assert CALLS[0][0] == 2 and len(CALLS[0][1]) == 2  # one call, one seed per image
    table = _rows(tmp_path / "table.csv")
    assert [r["method"] for r in table] == ["bicubic", "nearest", "observation", "fake"]
    assert list(table[0]) == ["method", "psnr", "ssim", "mse", "l1", "seconds_per_image",
                              "images"]  # fmt: skip
    # The bicubic row: PIL bicubic of the 8-bit x4 target, scored as restore scores SR.
    originals = np.stack([load_image(p, 64) for p in PHOTOS]).astype(np.float32)
    low = degradations.downsample_target(originals, 4)
    up = [np.asarray(Image.fromarray(np.rint((x + 1) * 127.5).astype(np.uint8))
                     .resize((64, 64), Image.Resampling.BICUBIC)) for x in low]  # fmt: skip
    expect = restoration_metrics(np.stack(up) / 255.0 * 2 - 1, originals, "SR")
    assert float(table[0]["psnr"]) == pytest.approx(np.mean(expect["psnr"]), abs=1e-3)
    assert float(table[2]["psnr"]) == float(table[3]["psnr"])  # fake at scale 1 = observation
    per_image = _rows(tmp_path / "per_image.csv")
    assert len(per_image) == 8 and per_image[0]["name"] == "flora_FreshFlower_0"
    record = json.loads((tmp_path / "table.json").read_text())
    assert record["per_image"]["bicubic"]["flora_FreshFlower_0"]["psnr"] == pytest.approx(
        expect["psnr"][0], abs=1e-4)  # fmt: skip
    assert "| bicubic |" in (tmp_path / "table.md").read_text()
    assert Image.open(tmp_path / "sheet.png").size == (6 * 64, 2 * 64)

    # Rerun: nothing redone. Another setting of one method: only that method.
    CALLS.clear()
    again = compare.execute(_options(tmp_path, batch=2))
    assert CALLS == [] and again.skipped["fake"] == report.done["fake"]
    compare.execute(_options(tmp_path, sets=["fake.scale=0.5"]))
    assert len(CALLS) == 2  # batch 1: one call per image, each with its own int seed
    assert all(isinstance(s, int) for _, s in CALLS)
    table = _rows(tmp_path / "table.csv")
    assert float(table[3]["mse"]) != float(table[2]["mse"])
    # A lost marker: that image only.
    (tmp_path / "nearest" / "flora_FreshFlower_0_compare.done.json").unlink()
    CALLS.clear()
    redo = compare.execute(_options(tmp_path))
    assert redo.done["nearest"] == ["flora_FreshFlower_0"] and redo.done["bicubic"] == []


def test_inpainting_pastes_the_known_pixels(tmp_path):
    options = compare.CompareOptions(
        task="inpainting",
        methods=["observation"],
        inputs=PHOTOS[:1],
        out=str(tmp_path),
        progress=False,
    )
    compare.execute(options)
    original = load_image(PHOTOS[0], 64)
    written = np.asarray(Image.open(tmp_path / "observation" / "flora_FreshFlower_0.png"))
    keep = degradations.center_mask(64, 64)[..., 0] > 0
    # byte for byte the pasted float32 image (compare loads photos in float32, as the
    # reference's ToTensor does) written as the reference writes [-1, 1]:
    # uint8(255 * (x + 1) / 2), truncating, so the hole's 0 is 127 and a kept pixel may come
    # back one level under the photo's (the reference's float32 round trip loses it too)
    pasted = np.where(keep[..., None], original.astype(np.float32), np.float32(0))
    np.testing.assert_array_equal(written, to_uint8(pasted))
    np.testing.assert_array_equal(written[~keep], 127)
    source = np.asarray(Image.open(PHOTOS[0]).convert("RGB")).astype(int)
    assert set(np.unique(source[keep] - written[keep])) == {0, 1}


def test_a_free_form_mask_is_scored_on_its_own_hole(tmp_path):
    """The table's PSNR/SSIM and --metrics inpainting_hole score the --mask's hole (they
    scored the centre square whatever the mask, where this mask keeps every pixel: inf)."""
    keep = np.full((64, 64), 255, np.uint8)
    keep[:, :20] = 0  # the hole: the first 20 columns
    Image.fromarray(keep).save(tmp_path / "mask.png")
    options = compare.CompareOptions(
        task="inpainting", methods=["observation"], inputs=PHOTOS[:1], out=str(tmp_path / "out"),
        progress=False, mask=str(tmp_path / "mask.png"), metrics=["inpainting_hole"])  # fmt: skip
    report = compare.execute(options)
    original = load_image(PHOTOS[0], 64).astype(np.float32)
    mask = (keep > 127).astype(np.float32)[None, :, :, None]
    pasted = original[None] * mask  # the observation's hole is 0, the known pixels pasted
    expected = restoration_metrics(pasted, original[None], "inpainting", mask=mask)
    row = _rows(report.table)[0]
    assert float(row["psnr"]) == pytest.approx(float(expected["psnr"][0]), abs=5e-5)
    assert float(row["ssim"]) == pytest.approx(float(expected["ssim"][0]), abs=5e-5)
    assert 8 < float(row["psnr"]) < 9  # 8.50 dB; the centre square gave inf
    assert float(row["hole_psnr"]) == pytest.approx(float(expected["psnr"][0]), abs=5e-5)


def test_per_image_metrics_read_their_weights_from_nets(tmp_path):
    from dgp_jax.metrics import registry
    from tests.test_lpips import FIXTURES as LPIPS_FIXTURES
    from tests.test_lpips import write_trunk

    nets = tmp_path / "nets"
    nets.mkdir()
    write_trunk(nets, "alex")
    (nets / "lpips_v0.1_alex.pth").write_bytes(
        (LPIPS_FIXTURES / "lpips_v0.1_alex.pth").read_bytes()
    )
    options = compare.CompareOptions(task="SR", methods=["bicubic"], inputs=PHOTOS[:1],
                                     out=str(tmp_path / "out"), progress=False, metrics=["lpips"],
                                     nets=str(nets))  # fmt: skip
    report = compare.execute(options)
    (row,) = _rows(report.table)
    # the float result (bicubic is computed in 8 bits, so the written file is the result)
    result = load_image(tmp_path / "out" / "bicubic" / "flora_FreshFlower_0.png", 64)
    expected = registry.build("lpips", nets=str(nets))(
        result[None], load_image(PHOTOS[0], 64)[None]
    )
    assert float(row["lpips"]) == pytest.approx(float(expected["lpips"][0]), abs=5e-5)


def spread_evaluator():
    """A stand-in set metric: one value for all the images it is given (their count, and
    the largest difference from the references)."""

    def evaluate(restored, reference):
        diff = np.abs(np.asarray(restored, np.float64) - np.asarray(reference, np.float64))
        return {"set_size": np.float64(len(restored)), "set_max_diff": np.float64(diff.max())}

    return evaluate


def test_set_metrics_score_each_methods_written_images_together(tmp_path, monkeypatch):
    from dgp_jax.metrics import registry

    monkeypatch.setitem(registry.EVALUATORS, "spread", "tests.test_compare:spread_evaluator")
    monkeypatch.setattr(registry, "SET_METRICS", registry.SET_METRICS | {"spread"})
    options = compare.CompareOptions(task="SR", methods=["observation", "bicubic"],
                                     inputs=PHOTOS, out=str(tmp_path), progress=False,
                                     metrics=["spread"], batch=1)  # fmt: skip
    report = compare.execute(options)  # one image per call: scored per call, it had 1
    rows = {r["method"]: r for r in _rows(report.table)}
    originals = np.stack([load_image(p, 64) for p in PHOTOS])
    for method in ("observation", "bicubic"):
        written = np.stack([load_image(tmp_path / method / f"{Path(p).stem}.png", 64)
                            for p in PHOTOS])  # fmt: skip
        assert rows[method]["set_size"] == "2.0000"
        want = np.abs(written - originals.astype(np.float32)).max()
        assert float(rows[method]["set_max_diff"]) == pytest.approx(want, abs=1e-4)
    columns = list(rows["bicubic"])
    assert columns.index("set_size") > columns.index("l1")  # after the per-image means
    assert "set_size" not in _rows(tmp_path / "per_image.csv")[0]


def brightness_evaluator():
    """A stand-in per-image metric: each result's mean."""
    return lambda restored, reference: {"brightness": np.mean(restored, axis=(1, 2, 3))}


def test_a_rerun_with_more_metrics_scores_the_done_images_from_their_files(tmp_path,
                                                                          monkeypatch):  # fmt: skip
    from dgp_jax.metrics import registry

    monkeypatch.setitem(registry.EVALUATORS, "brightness",
                        "tests.test_compare:brightness_evaluator")  # fmt: skip
    options = compare.CompareOptions(task="SR", methods=["observation"], inputs=PHOTOS,
                                     out=str(tmp_path), progress=False)  # fmt: skip
    compare.execute(options)
    # the added metric had no value for the done images: its column was blank
    report = compare.execute(dataclasses.replace(options, metrics=["brightness"]))
    assert report.skipped["observation"] == [Path(p).stem for p in PHOTOS]
    files = [load_image(tmp_path / "observation" / f"{Path(p).stem}.png", 64) for p in PHOTOS]
    (row,) = _rows(report.table)
    assert float(row["brightness"]) == pytest.approx(np.mean([f.mean() for f in files]), abs=1e-4)
    record = json.loads((tmp_path / "observation" / f"{Path(PHOTOS[0]).stem}_compare.done.json")
                        .read_text())  # fmt: skip
    assert record["evaluators"] == ["restoration", "brightness"]
    assert record["scored_from_file"] == ["brightness"]
    assert {"psnr", "ssim", "brightness"} <= set(record["metrics"])


def test_a_metric_that_fails_fails_those_images_and_the_run_goes_on(tmp_path, monkeypatch):
    from dgp_jax.metrics import registry

    monkeypatch.setitem(registry.EVALUATORS, "broken", "tests.test_evaluate:broken_evaluator")
    options = compare.CompareOptions(task="SR", methods=["observation", "bicubic"],
                                     inputs=PHOTOS, out=str(tmp_path), progress=False,
                                     metrics=["broken"])  # fmt: skip
    report = compare.execute(options)  # it crashed the run with the first method's scores
    for method in ("observation", "bicubic"):
        assert report.failed[method] == {
            Path(p).stem: "scoring: TypeError: a bug in a metric" for p in PHOTOS
        }
        assert report.done[method] == [] and not list(tmp_path.glob(f"{method}/*.done.json"))


def test_metrics_are_refused_before_any_work_where_they_cannot_score(tmp_path, with_fake):
    for metrics, kw, says in (
        (["fid"], {}, "fid needs the Inception weights pt_inception-2015-12-05-6726825d.pth"),
        (["inpainting_hole"], {}, "'inpainting_hole' scores inpainting holes and needs each "
                                  "image's mask: the task SR has none"),
        (["lpips"], {}, "alexnet-owt-7be5be79.pth"),
        (["lpips"], {"nets": str(tmp_path / "nowhere")}, "--nets .*nowhere is not a folder"),
        (["resnet50"], {"nets": str(tmp_path)}, "resnet50-0676ba61.pth"),
    ):  # fmt: skip
        with pytest.raises(RunError, match=says):
            compare.execute(_options(tmp_path / "out", metrics=metrics, **kw))
    assert not (tmp_path / "out").exists() and CALLS == []


def test_the_readme_table_of_the_trivial_baselines(tmp_path):
    """README, "Comparing methods": the six held-out photos, SR x4 and inpainting."""
    heldout = [str(ROOT / "examples/heldout.txt")]
    sr = compare.execute(compare.CompareOptions(
        task="SR", methods=["bicubic", "nearest", "observation"], inputs=heldout,
        out=str(tmp_path / "sr"), progress=False))  # fmt: skip
    inpainting = compare.execute(compare.CompareOptions(
        task="inpainting", methods=["observation"], inputs=heldout,
        out=str(tmp_path / "inpainting"), progress=False))  # fmt: skip
    table = {(task, r["method"]): (round(float(r["psnr"]), 2), round(float(r["ssim"]), 4))
             for task, report in (("SR", sr), ("inpainting", inpainting))
             for r in _rows(report.table)}  # fmt: skip
    assert table == {("SR", "bicubic"): (21.30, 0.6560), ("SR", "nearest"): (19.86, 0.5841),
                     ("SR", "observation"): (20.83, 0.6204),
                     ("inpainting", "observation"): (11.41, 0.1022)}  # fmt: skip


def test_setup_errors_name_the_problem(tmp_path, with_fake):
    with pytest.raises(RunError, match=r"dgp: DGP weights not found: /nowhere/G_ema\.pth"):
        compare.execute(_options(tmp_path / "a", methods=["dgp"],
                                 sets=["dgp.weights=/nowhere/G_ema.pth"]))  # fmt: skip
    with pytest.raises(RunError, match="unknown method 'dipp'"):
        compare.execute(_options(tmp_path / "b", methods=["dipp"]))
    with pytest.raises(RunError, match="dip has no setting 'iters'"):
        compare.execute(_options(tmp_path / "c", methods=["dip"], sets=["dip.iters=3"]))
    with pytest.raises(RunError, match="expected METHOD.KEY=VALUE"):
        compare.execute(_options(tmp_path / "d", sets=["iterations=3"]))
    # Each method's settings are checked before any work (they failed per image, after the
    # observations and tables were written): bad values, a broken weight file, a preset
    # that does not exist, a model of another size than the comparison's.
    (tmp_path / "G_ema.pth").write_bytes(b"")
    for method, sets, says in (
        ("dip", ["dip.iterations=abc"], "dip: iterations must be an integer >= 1, got 'abc'"),
        ("dip", ["dip.iterations=-3"], "dip: iterations must be an integer >= 1, got -3"),
        ("dip", ["dip.lr=0"], "dip: lr must be a finite number > 0, got 0"),
        ("dip", ["dip.lowering=bogus"], "dip: lowering must be one of"),
        ("dip", ["dip.preset=nosuch"], "dip: unknown preset 'nosuch'"),
        ("dgp", ["dgp.preset=nosuch"], "dgp: unknown preset 'nosuch'"),
        ("dgp", ["dgp.select_num=-1"], "dgp: select_num must be an integer >= 0, got -1"),
        ("mse-only", ["mse-only.iterations=1.5"], "iterations must be an integer >= 0, got 1.5"),
        ("dgp", [f"dgp.weights={tmp_path / 'G_ema.pth'}"], f"{tmp_path / 'G_ema.pth'} is empty"),
        ("singan", ["singan.min_size=big"], "singan: min_size must be int, got 'big'"),
    ):  # fmt: skip
        with pytest.raises(RunError, match=re.escape(says)):
            compare.execute(_options(tmp_path / "f", methods=[method], sets=sets))
    for resolution in (0, -32):  # named by its flag (degradations named it "resolution")
        with pytest.raises(RunError, match=f"^--resolution must be a positive integer, got "
                           f"{resolution}$"):  # fmt: skip
            compare.execute(_options(tmp_path / "f", methods=["observation"],
                                     resolution=resolution))  # fmt: skip
    for batch in (0, -2):  # as restore refuses it (compare ran these as --batch 1)
        with pytest.raises(RunError, match=f"^--batch must be >= 1, got {batch}$"):
            compare.execute(_options(tmp_path / "f", methods=["observation"], batch=batch))
    with pytest.raises(RunError, match="the model is 64 px but the images are compared at 32 px"):
        compare.execute(_options(tmp_path / "f", methods=["dgp"], resolution=32))
    # Results written among the inputs would be compared on the next run.
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.open(PHOTOS[0]).save(inputs / "a.png")
    with pytest.raises(RunError, match=f"--out {re.escape(str(inputs))} is an input folder"):
        compare.execute(_options(inputs, methods=["observation"], inputs=[str(inputs)]))
    assert sorted(p.name for p in inputs.iterdir()) == ["a.png"]
    assert not any((tmp_path / name).exists() for name in "abcdf") and CALLS == []
    # Bicubic on a task without an SR factor fails per image, the others finish.
    report = compare.execute(_options(tmp_path / "e", task="colorization",
                                      methods=["bicubic", "observation"]))  # fmt: skip
    assert "apply to super-resolution" in report.failed["bicubic"]["flora_FreshFlower_0"]
    assert len(report.done["observation"]) == 2


@pytest.mark.cheap_compiles  # compile-bound (tests/_compiling.py): 3 programs, 5 steps
def test_dgp_and_its_ablations_solve_the_observation_with_the_task_preset(tmp_path):
    """compare's dgp, latent-only and mse-only (the paper's comparison rows): the shipped
    model's SR preset (shortened by the settings) solves compare's observation, image i
    with its own seed's key: what dgp_jax.restore gives for it, as the PNG holds it."""
    import dgp_jax
    from dgp_jax.baselines import dgp as dgp_methods
    from dgp_jax.baselines.common import image_keys

    methods = list(dgp_methods.ABLATIONS)
    sets = [f"{m}.{k}" for m in methods for k in ("iterations=1", "select_num=2")]
    report = compare.execute(_options(tmp_path, methods=methods, sets=sets, batch=2))
    names = ["flora_FreshFlower_0", "objects_Wine_by_Jakkub_Mede_0"]
    assert report.done == {m: names for m in methods} and not report.failed
    assert [r["method"] for r in _rows(tmp_path / "table.csv")] == methods

    originals = np.stack([load_image(p, 64) for p in PHOTOS]).astype(np.float32)
    phi = degradations.for_mode("SR", 64, factor=4)
    observed = np.asarray(phi.target_fn(originals)).astype(np.float32)
    preset = dgp_jax.SolverConfig.preset("wallpapers_64/SR")
    preset = preset.replace(iterations=(1,) * preset.num_stages, select_num=2)
    keys = image_keys([compare._seed_of(0, n) for n in names], 2)
    # each image's key is the one compare --batch 1 gives it (its seed alone, as an int)
    for i, n in enumerate(names):
        np.testing.assert_array_equal(keys[i], image_keys(compare._seed_of(0, n), 1)[0])
    results = {}
    for m in methods:
        want = dgp_jax.restore(dgp_methods._model(None), observed, np.array([-1, -1]),
                               dgp_methods.ablation_config(preset, m), keys,
                               degradation=phi, observed=True)  # fmt: skip
        for n, image in zip(names, np.asarray(want.images), strict=True):
            with Image.open(tmp_path / m / f"{n}.png") as saved:  # as the reference saves
                np.testing.assert_array_equal(np.asarray(saved), to_uint8(image), err_msg=m)
        results[m] = np.asarray(want.images)
    # three different solutions: G frozen (latent-only), no feature loss (mse-only)
    for a, b in (("dgp", "latent-only"), ("dgp", "mse-only"), ("latent-only", "mse-only")):
        assert np.abs(results[a] - results[b]).max() > 0.05, (a, b)


def test_compare_command_line(tmp_path, with_fake, capsys, monkeypatch):
    """dgp-jax compare: its flags reach the run, it prints the table, and exits 1 when a
    method failed on an image (0 otherwise)."""
    from dgp_jax import cli, runner

    caches = []
    monkeypatch.setattr(runner, "configure_compilation_cache", caches.append)
    out = tmp_path / "sr"
    argv = ["compare", *PHOTOS, "--task", "SR", "--methods", "fake,bicubic", "--out", str(out),
            "--resolution", "32", "--factor", "2", "--seed", "5", "--batch", "2",
            "--set", "fake.scale=0.5", "--no-progress", "--cache-dir", "none"]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| fake |" in printed and "| bicubic |" in printed and f"table: {out}" in printed
    names = ("flora_FreshFlower_0", "objects_Wine_by_Jakkub_Mede_0")
    assert CALLS == [(2, [compare._seed_of(5, n) for n in names])]  # one call, each its seed
    record = json.loads((out / "fake" / "flora_FreshFlower_0_compare.done.json").read_text())
    assert record["config"] == {"scale": 0.5, "factor": 2}
    # the observation at 32 px, x2 (float32, saved as the reference saves), and the fake's
    # result, half of it
    original = load_image(PHOTOS[0], 32).astype(np.float32)
    want = np.asarray(degradations.super_resolution(2).target_fn(original[None])[0])
    for path, image in (("observed", want), ("fake", want * np.float32(0.5))):
        with Image.open(out / path / "flora_FreshFlower_0.png") as saved:
            np.testing.assert_array_equal(np.asarray(saved), to_uint8(image), err_msg=path)

    # bicubic needs an SR factor: on colorization it fails on each image, the others finish
    argv = ["compare", *PHOTOS, "--task", "colorization", "--methods", "bicubic,observation",
            "--out", str(tmp_path / "color"), "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 1
    assert "| observation |" in capsys.readouterr().out
    assert caches == ["none", None]  # as restore: None is $DGP_JAX_CACHE or ~/.cache


STOP = {"how": "ctrl-c"}


def stopping(observed, degradation, *, seed, config):
    """``fake``, stopped on its second call: by Ctrl-C, or by a SIGTERM sent to this process
    (``STOP["how"]``)."""
    if CALLS:
        if STOP["how"] == "sigterm":
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)
        raise KeyboardInterrupt
    return fake(observed, degradation, seed=seed, config=config)


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_interrupted_compare_keeps_what_finished_and_resumes(
    tmp_path, with_fake, monkeypatch, capsys, stop
):
    """Ctrl-C or SIGTERM on the second image: exit 130 saying how to resume, the first
    image's result and marker kept and in the table, no temp or lock files; the rerun does
    only the second image."""
    import signal

    from dgp_jax import cli

    monkeypatch.setitem(baselines.METHODS, "stopping", "tests.test_compare:stopping")
    monkeypatch.setitem(STOP, "how", stop)
    out = tmp_path / "sr"
    argv = ["compare", *PHOTOS, "--task", "SR", "--methods", "observation,stopping",
            "--out", str(out), "--no-progress"]  # fmt: skip
    handler = signal.getsignal(signal.SIGTERM)
    assert cli.main(argv) == 130
    assert signal.getsignal(signal.SIGTERM) is handler  # put back
    printed = capsys.readouterr()
    assert "interrupted: rerun the same command to resume" in printed.err
    assert "| stopping |" in printed.out
    first, second = "flora_FreshFlower_0", "objects_Wine_by_Jakkub_Mede_0"
    assert (out / "stopping" / f"{first}.png").is_file()
    assert not (out / "stopping" / f"{second}.png").exists()
    rows = {r["method"]: r for r in _rows(out / "table.csv")}
    assert rows["stopping"]["images"] == "1" and rows["observation"]["images"] == "2"
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temp or lock file left
    assert not (out / "sheet.png").exists()

    CALLS.clear()
    monkeypatch.setitem(baselines.METHODS, "stopping", "tests.test_compare:fake")
    assert cli.main(argv) == 0
    assert len(CALLS) == 1  # the second image only
    rows = {r["method"]: r for r in _rows(out / "table.csv")}
    assert rows["stopping"]["images"] == "2" and (out / "sheet.png").is_file()


def test_seeds_are_an_int_or_one_int_per_image():
    """The baselines' seed: an int, or one per image, each giving the image its key alone."""
    from dgp_jax.baselines.common import image_keys

    np.testing.assert_array_equal(image_keys([7, 3], 2), np.concatenate(
        [image_keys(7, 1), image_keys(3, 1)]))  # fmt: skip
    for seed in (1.5, None, "ab", [1, 2.5], [True, 1]):
        with pytest.raises(ValueError, match="seed must be an int or one int per image"):
            image_keys(seed, 2)
    with pytest.raises(ValueError, match="3 seeds for 2 images"):
        image_keys([1, 2, 3], 2)


def test_trivial_methods_refuse_observations_they_would_get_wrong():
    """An (H, W, 3) image came back as a (16, 32, 3) one, 0..255 or NaN ones as they were."""
    phi = degradations.super_resolution(2)
    for method in ("bicubic", "nearest", "observation"):
        restore = baselines.get(method)
        for bad, says in ((np.zeros((16, 16, 3), np.float32), r"\(B, H, W, 3\), got shape"),
                          (np.full((1, 16, 16, 3), 200.0), r"got values in \[200, 200\]"),
                          (np.zeros((1, 16, 16, 3), np.uint8), r"point .*, got dtype uint8"),
                          (np.full((1, 16, 16, 3), np.nan), "observed holds NaN")):  # fmt: skip
            with pytest.raises(ValueError, match=says):
                restore(bad, phi, seed=0, config={})
