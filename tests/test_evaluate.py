"""dgp-jax evaluate end to end, and --metrics in restore runs and the ImageNet protocol."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dgp_jax import cli
from dgp_jax.images import load_image
from dgp_jax.metrics import (
    load_resnet50,
    niqe,
    psnr,
    registry,
    restoration_metrics,
    ssim,
    topk_correct,
)
from dgp_jax.metrics.niqe_metric import NIQEParams, gaussian_window
from tests._resnet import resnet50_weights_folder
from tests.test_runner import make_photos, tiny_model_files

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "images" / "others"
NIQE_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "niqe" / "pristine.npz"
FAST = ["--set", "iterations=1", "--set", "select_num=1", "--set", "resolution=none"]


def level_evaluator(offset: float = 0.0):
    """A registry factory for the wiring tests: each image's mean value (+ offset) and, for
    the set, the number of images."""

    def evaluate(restored, reference=None):
        values = [float(np.mean(im)) + offset for im in restored]
        return {"level": np.asarray(values), "images_seen": len(values)}

    return evaluate


def label_evaluator():
    """A registry factory that takes labels: each image's class, as a per-image value."""

    def evaluate(restored, reference=None, labels=None):
        return {"seen_label": np.asarray(labels, np.float64)}

    return evaluate


def broken_evaluator():
    """A metric with a bug: it raises what no metric is expected to raise."""

    def evaluate(restored, reference=None):
        raise TypeError("a bug in a metric")

    return evaluate


@pytest.fixture()
def level_metric(monkeypatch):
    monkeypatch.setitem(registry.EVALUATORS, "level", "tests.test_evaluate:level_evaluator")
    monkeypatch.setitem(registry.EVALUATORS, "seen_label", "tests.test_evaluate:label_evaluator")
    monkeypatch.setitem(registry.EVALUATORS, "broken", "tests.test_evaluate:broken_evaluator")


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> Path:
    """resnet50-0676ba61.pth (seeded weights) and a modelparameters.mat (the NIQE model
    fitted on the fixture's photos)."""
    from scipy.io import savemat

    folder = resnet50_weights_folder(tmp_path_factory)
    if not (folder / "modelparameters.mat").is_file():
        data = np.load(NIQE_FIXTURE)
        savemat(folder / "modelparameters.mat",
                {"mu_prisparam": data["mu"][None], "cov_prisparam": data["cov"]})  # fmt: skip
    return folder


@pytest.fixture()
def photo_sets(tmp_path) -> tuple[Path, Path]:
    """results/ (two 192 px images: NIQE needs two 96 px blocks) and originals/ (a 230 px
    photo whose centre crop and resize is a's reference, and b's 192 px original)."""
    results, originals = tmp_path / "results", tmp_path / "originals"
    results.mkdir()
    originals.mkdir()
    for name, file, top in (("a", "window2.jpg", 10), ("b", "library1.jpg", 30)):
        photo = np.asarray(Image.open(PHOTOS / file).convert("RGB"))
        size = 230 if name == "a" else 192
        original = photo[top : top + size, 60 : 60 + size]
        Image.fromarray(original).save(originals / f"{name}.png")
        rng = np.random.default_rng(len(name) + top)
        base = np.asarray(Image.fromarray(original).resize((192, 192), Image.BILINEAR))
        noisy = np.clip(base.astype(int) + rng.integers(-12, 13, base.shape), 0, 255)
        Image.fromarray(noisy.astype(np.uint8)).save(results / f"{name}.png")
    return results, originals


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.float64) / 255 * 2 - 1


def test_evaluate_command_end_to_end(tmp_path, photo_sets, nets, capsys):
    results, originals = photo_sets
    restored = np.stack([_read(results / "a.png"), _read(results / "b.png")])
    reference = np.stack([load_image(originals / "a.png", 192), _read(originals / "b.png")])
    logits = load_resnet50(nets, batch_size=2).logits(restored)
    labels = [int(np.argmax(logits[0])), int(np.argmin(logits[1]))]  # a right, b wrong
    (tmp_path / "labels.txt").write_text(f"a.png {labels[0]}\nb.png {labels[1]}\n")
    out = tmp_path / "scores"
    argv = ["evaluate", str(results), "--reference", str(originals), "--metrics",
            "psnr,ssim,niqe,resnet50", "--nets", str(nets), "--labels",
            str(tmp_path / "labels.txt"), "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| images | psnr | ssim | niqe | resnet50_top1 | resnet50_top5 |\n" in printed

    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert [r["name"] for r in rows] == ["a", "b"]
    assert [int(r["label"]) for r in rows] == labels
    want = {
        "psnr": psnr(restored, reference),
        "ssim": ssim(restored, reference),
        "niqe": niqe(restored, NIQEParams(*_niqe_model(), gaussian_window())),
        "resnet50_top1": topk_correct(logits, np.asarray(labels), 1).astype(float),
        "resnet50_top5": topk_correct(logits, np.asarray(labels), 5).astype(float),
    }
    for column, values in want.items():
        got = [float(r[column]) for r in rows]
        np.testing.assert_allclose(got, values, rtol=1e-12, err_msg=column)
    assert want["resnet50_top1"].tolist() == [1.0, 0.0]

    table = json.loads((out / "table.json").read_text())
    assert table["images"] == 2
    for column, values in want.items():
        assert table["metrics"][column] == pytest.approx(float(np.mean(values)), rel=1e-12)
    csv_rows = list(csv.DictReader((out / "table.csv").open()))
    assert float(csv_rows[0]["psnr"]) == pytest.approx(table["metrics"]["psnr"], rel=1e-12)
    assert "| 2 |" in (out / "table.md").read_text()


def test_evaluate_mode_inpainting_scores_the_centre_hole(tmp_path, photo_sets):
    from dgp_jax.degradations import hole_box

    results, originals = photo_sets
    restored = np.stack([_read(results / "a.png"), _read(results / "b.png")])
    reference = np.stack([load_image(originals / "a.png", 192), _read(originals / "b.png")])
    out = tmp_path / "scores"
    argv = ["evaluate", str(results), "--reference", str(originals), "--metrics", "psnr,ssim",
            "--mode", "inpainting", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    begin, end = hole_box(192, 192)  # rows and columns 64..127
    assert (begin, end) == (64, 128)
    hole = (slice(None), slice(begin, end), slice(begin, end))
    want = {"psnr": psnr(restored[hole], reference[hole]),
            "ssim": ssim(restored[hole], reference[hole])}  # fmt: skip
    for column, values in want.items():
        np.testing.assert_allclose([float(r[column]) for r in rows], values, rtol=1e-12)
    # not the whole image's numbers (the noise is uniform, so they differ by 0.002-0.02 dB)
    assert np.abs(want["psnr"] - psnr(restored, reference)).min() > 1e-4


def _niqe_model():
    data = np.load(NIQE_FIXTURE)
    return data["mu"], data["cov"]


def test_evaluate_errors(tmp_path, photo_sets, nets, capsys, level_metric):
    results, originals = photo_sets

    def run(*args: str) -> str:
        assert cli.main(["evaluate", str(results), *args]) == 2
        # refused before any image is read: no evaluation folder is left behind
        assert sorted(p.name for p in results.iterdir()) == ["a.png", "b.png"]
        return capsys.readouterr().err

    err = run("--metrics", "psnr,fidd")
    assert "unknown metrics ['fidd']" in err and "level" in err and "resnet50" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = run("--metrics", "resnet50", "--nets", str(empty))
    assert str(empty / "resnet50-0676ba61.pth") in err and "'resnet50'" in err
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in err
    err = run("--metrics", "niqe", "--nets", str(empty))
    assert "modelparameters.mat" in err and "'niqe'" in err
    assert "compare with reference images" in run("--metrics", "ssim")
    assert "'aot_gan' scores inpainting holes and needs each image's mask" in run(
        "--metrics", "aot_gan", "--reference", str(originals)
    )  # it was a traceback and exit 1
    assert "need each image's class" in run("--metrics", "resnet50", "--nets", str(nets))
    labels = tmp_path / "labels.txt"
    labels.write_text("a.png 3\nb.png 5000\n")
    err = run("--metrics", "resnet50", "--nets", str(nets), "--labels", str(labels))
    assert f"{labels}:2: class 5000 is not an ImageNet class index [0, 1000)" in err
    # references matched by name: one missing, two of one name, a size that cannot be
    # matched (another size is read as the solver reads inputs for square results only)
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.new("RGB", (8, 8)).save(refs / "a.png")
    assert f"no reference image in {refs} for ['b']" in run("--metrics", "psnr",
                                                             "--reference", str(refs))  # fmt: skip
    for suffix in (".png", ".jpg"):
        Image.new("RGB", (8, 8)).save(refs / f"b{suffix}")
    err = run("--metrics", "psnr", "--reference", str(refs))
    assert f"{refs} holds two images named 'b': b.jpg and b.png" in err
    wide, wide_refs = tmp_path / "wide", tmp_path / "wide_refs"
    wide.mkdir(), wide_refs.mkdir()
    Image.new("RGB", (24, 16)).save(wide / "c.png")
    Image.new("RGB", (48, 32)).save(wide_refs / "c.png")
    argv = ["evaluate", str(wide), "--reference", str(wide_refs), "--metrics", "psnr"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{wide_refs / 'c.png'} is 48x32, its result 24x16: sizes must match" in err
    assert sorted(p.name for p in wide.iterdir()) == ["c.png"]  # no evaluation/ left
    # an --out where the tables cannot go is named before any scoring
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    err = run("--metrics", "psnr", "--reference", str(originals), "--out", str(blocker / "t"))
    assert f"output folder {blocker / 't'} is not writable" in err
    assert err.rstrip().endswith("choose another --out (the tables' folder)")
    # Any registered name works, including ones added after this module was written.
    assert cli.main(["evaluate", str(results), "--metrics", "level",
                     "--out", str(tmp_path / "lv")]) == 0  # fmt: skip
    table = json.loads((tmp_path / "lv" / "table.json").read_text())
    assert table["metrics"]["images_seen"] == 2.0 and table["set_metrics"] == ["images_seen"]


@pytest.mark.usefixtures("cheap_compilation_cache")
def test_restore_metrics_add_summary_columns(tmp_path, tmp_path_factory, level_metric, nets,
                                             capsys):  # fmt: skip
    tiny = tiny_model_files(tmp_path_factory)
    photos = tmp_path / "photos"
    make_photos(photos, 2)
    out = tmp_path / "out"
    # The settings of tests/test_cli.py's restore, so the session compiles the solver once.
    base = ["restore", "--weights", str(tiny["folder"]), "--task", "colorization", str(photos),
            "--out", str(out), "--class", "3", "--batch", "2", "--quiet", *FAST]  # fmt: skip
    # Checked before any work: an unknown name, a missing weight file.
    assert cli.main([*base, "--metrics", "nope"]) == 2
    assert cli.main([*base, "--metrics", "resnet50", "--nets", str(tmp_path)]) == 2
    assert cli.main([*base, "--metrics", "inpainting_hole"]) == 2  # it crashed after solving
    err = capsys.readouterr().err
    assert "unknown metrics ['nope']" in err and "resnet50-0676ba61.pth" in err
    assert ("'inpainting_hole' scores inpainting holes and needs each image's mask: the task "
            "colorization has none (inpainting and hybrid have" in err)  # fmt: skip
    assert not out.exists()

    assert cli.main([*base, "--metrics", "level,psnr"]) == 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert list(rows[0])[5:11] == ["psnr", "ssim", "mse", "l1", "level", "seconds"]
    summary = json.loads((out / "summary.json").read_text())
    for row in rows:
        result = _read(out / summary["images"][row["name"]]["files"][0])
        assert float(row["level"]) == pytest.approx(float(np.mean(result)), rel=1e-12)
    assert summary["mean"]["images_seen"] == 2
    assert summary["mean"]["level"] == pytest.approx(np.mean([float(r["level"]) for r in rows]))

    # evaluate on the run's folder: its inputs are the references, its classes the labels
    scores = tmp_path / "scores"
    assert cli.main(["evaluate", str(out), "--metrics", "psnr,seen_label", "--out",
                     str(scores)]) == 0  # fmt: skip
    scored = list(csv.DictReader((scores / "per_image.csv").open()))
    assert [r["name"] for r in scored] == ["p0", "p1"]
    assert [int(r["label"]) for r in scored] == [3, 3]
    assert [float(r["seen_label"]) for r in scored] == [3.0, 3.0]
    for r, photo in zip(scored, ("p0", "p1"), strict=True):
        result = _read(out / f"{photo}_colorization.png")
        want = psnr(result, load_image(photos / f"{photo}.png", 32))
        assert float(r["psnr"]) == pytest.approx(float(want), rel=1e-12)

    # evaluate on the run's folder: its results, with its inputs (read as the solver read
    # them) as references.
    assert cli.main(["evaluate", str(out), "--metrics", "mse,level"]) == 0
    scored = list(csv.DictReader((out / "evaluation" / "per_image.csv").open()))
    assert [r["name"] for r in scored] == ["p0", "p1"]
    assert [r["reference"] for r in scored] == [str(photos / "p0.png"), str(photos / "p1.png")]
    for r in scored:
        result = _read(Path(r["result"]))
        reference = load_image(photos / f"{r['name']}.png", 32)
        assert float(r["mse"]) == pytest.approx(float(np.mean((result - reference) ** 2)) / 4)

    # Rerun (done images are skipped) with a metric that cannot score 32 px images: the
    # results stay, the summary says why its columns are missing.
    assert cli.main([*base, "--metrics", "niqe", "--nets", str(nets)]) == 0
    assert "--metrics could not score the results: NIQE needs" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert "at least 96x96" in summary["extra_metrics"]["error"] and summary["done"] == 2
    # ... and a metric's bug does not cost the summary either (it escaped, unwritten)
    (out / "summary.json").unlink()
    assert cli.main([*base, "--metrics", "broken"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["extra_metrics"]["error"] == "TypeError: a bug in a metric"
    assert summary["done"] == 2


def test_protocol_passes_metrics_and_its_table_gains_columns(tmp_path, monkeypatch,
                                                            level_metric):  # fmt: skip
    """The protocol's part: --nets/--metrics reach each task's restore run (whose summary
    columns test_restore_metrics_add_summary_columns checks), and the table takes every
    mean the summary has. The model and the run are stubbed: nothing to compile."""
    from dgp_jax import runner
    from tests.conftest import load_experiment

    protocol = load_experiment("imagenet_protocol")
    val = tmp_path / "val"
    make_photos(val, 2)
    names = sorted(p.name for p in val.iterdir())
    (tmp_path / "list.txt").write_text("".join(f"{n} {k}\n" for k, n in enumerate(names)))
    seen = []

    def execute(options, model=None, **_):
        seen.append((options.task, options.metrics, options.nets))
        summary = Path(options.out) / "summary.json"
        summary.parent.mkdir(parents=True)
        mean = {"psnr": 20.0, "ssim": 0.5, "mse": 0.01, "l1": 0.05, "images_seen": 2,
                "level": 0.25}  # fmt: skip
        summary.write_text(json.dumps({"done": 2, "total": 2, "failed": 0, "mean": mean}))
        return runner.Report(total=2, summary=summary)

    monkeypatch.setattr(runner, "execute", execute)
    monkeypatch.setattr(runner, "load_model", lambda weights: None)
    out = tmp_path / "protocol"
    argv = ["--weights", "G_ema_128.pth", "--imagenet-dir", str(val), "--list",
            str(tmp_path / "list.txt"), "--out", str(out), "--tasks", "colorization,inpainting",
            "--quiet", "--cache-dir", "none", "--nets", str(tmp_path)]  # fmt: skip
    assert protocol.main([*argv, "--metrics", "level"]) == 0
    assert seen == [("colorization", "level", str(tmp_path)),
                    ("inpainting", "level", str(tmp_path))]  # fmt: skip
    rows = list(csv.DictReader((out / "table.csv").open()))
    columns = ["task", "done", "total", "failed", "psnr", "ssim", "mse", "l1"]
    assert list(rows[0]) == [*columns, "images_seen", "level"]
    assert [r["level"] for r in rows] == ["0.25", "0.25"]
    header = "| task | images | PSNR | SSIM | MSE | L1 | images_seen | level |"
    assert header in (out / "table.md").read_text()
    # --nets alone: every registered metric.
    seen.clear()
    out = tmp_path / "protocol2"
    argv[argv.index(str(tmp_path / "protocol"))] = str(out)
    assert protocol.main(argv) == 0
    masked = ("restoration", "inpainting_hole", "aot_gan")  # (restore has no masks)
    assert seen[0][1].split(",") == [n for n in registry.names() if n not in masked]


def test_the_registry_marks_the_metrics_that_need_masks_or_a_whole_set():
    assert registry.SET_METRICS | registry.MASK_METRICS <= set(registry.names())
    for name in registry.MASK_METRICS:
        assert registry.needs_masks(registry.build(name)), name
    # the restoration metrics take masks where they have them (compare, the protocol):
    # inpainting scores the mask's hole, the other modes the whole image
    rng = np.random.default_rng(0)
    x, ref = rng.uniform(-1, 1, (2, 2, 32, 32, 3))
    masks = np.ones((2, 32, 32, 1))
    masks[:, :, :10] = 0
    inpainting = registry.build("restoration", mode="inpainting")
    assert registry.takes_masks(inpainting) and not registry.needs_masks(inpainting)
    hole = restoration_metrics(x, ref, "inpainting", mask=masks)
    centre = restoration_metrics(x, ref, "inpainting")
    np.testing.assert_array_equal(inpainting(x, ref, masks=masks)["psnr"], hole["psnr"])
    np.testing.assert_array_equal(inpainting(x, ref)["psnr"], centre["psnr"])
    assert not np.array_equal(hole["psnr"], centre["psnr"])
    sr = registry.build("restoration", mode="SR")
    np.testing.assert_array_equal(sr(x, ref, masks=masks)["psnr"], sr(x, ref)["psnr"])


def mean_gap(nets=None):
    """A set metric for the tests (a stand-in for KID, whose weights are not here)."""
    return lambda x, ref: {"mean_gap": float(np.mean(x) - np.mean(ref))}


def test_evaluators_split_into_per_image_and_set_parts_built_once(monkeypatch):
    """compare runs the set metrics apart (once every method has run): split keeps each
    part's evaluators (not rebuilt) and the metric names each part answers for."""
    from dgp_jax.evaluate import Evaluators

    monkeypatch.setitem(registry.EVALUATORS, "kid", "tests.test_evaluate:mean_gap")
    built = Evaluators("psnr,ssim,l1,kid", mode="SR")
    per_image, sets = built.split(registry.SET_METRICS)
    assert built.names == ["restoration", "kid"]
    assert (per_image.names, per_image.metrics) == (["restoration"], ["psnr", "ssim", "l1"])
    assert (sets.names, sets.metrics) == (["kid"], ["kid"])
    assert per_image.evaluators[0] is built.evaluators[0]
    assert sets.evaluators[0] is built.evaluators[1]
    rng = np.random.default_rng(0)
    x, ref = rng.uniform(-1, 1, (2, 3, 16, 16, 3))
    columns, set_values = per_image(x, ref)
    assert list(columns) == ["psnr", "ssim", "l1"] and set_values == {}
    np.testing.assert_array_equal(columns["l1"], restoration_metrics(x, ref, "SR")["l1"])
    assert sets(x, ref) == ({}, {"mean_gap": float(np.mean(x) - np.mean(ref))})
    nothing, everything = built.split(["restoration", "kid"])
    assert nothing.names == [] and everything.names == built.names


def test_one_mask_for_every_result_must_be_their_size(tmp_path):
    """score(mask=) (restore --metrics' hole): the mask of the run, refused when the
    results are another size, naming both."""
    from dgp_jax.evaluate import Entry, EvaluationError, Evaluators, score

    for name in "ab":
        Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(tmp_path / f"{name}.png")
    entries = [Entry(n, tmp_path / f"{n}.png", tmp_path / f"{n}.png") for n in "ab"]
    keep = np.ones((32, 32, 1))
    keep[8:24, 8:24] = 0
    scores = score(entries, Evaluators("inpainting_hole", masks=True), mask=keep)
    np.testing.assert_array_equal(scores.per_image["hole_psnr"], [np.inf, np.inf])
    says = r"the mask is \(16, 16\), the results \[\(32, 32\)\]: one mask scores results"
    with pytest.raises(EvaluationError, match=says):
        score(entries, Evaluators("inpainting_hole", masks=True), mask=keep[:16, :16])


def test_evaluate_with_masks_scores_each_masks_hole(tmp_path, capsys):
    """--masks: psnr/ssim on each mask's hole and the mask metrics, as the registry's
    evaluators give them with those masks (they were refused without a way to give them)."""
    rng = np.random.default_rng(3)
    results, originals, masks = tmp_path / "results", tmp_path / "originals", tmp_path / "masks"
    for folder in (results, originals, masks):
        folder.mkdir()
    keep = np.full((2, 32, 32), 255, np.uint8)
    keep[0, :, :12] = 0  # image a: a hole on the left
    keep[1, 20:, :] = 0  # image b: a hole at the bottom
    for i, name in enumerate("ab"):
        for folder in (results, originals):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}.png")
        Image.fromarray(keep[i]).save(masks / f"{name}.png")
    metrics = "psnr,ssim,inpainting_hole,aot_gan"
    argv = ["evaluate", str(results), "--reference", str(originals), "--masks", str(masks),
            "--metrics", metrics, "--out", str(tmp_path / "t")]  # fmt: skip
    assert cli.main(argv) == 0
    rows = list(csv.DictReader((tmp_path / "t" / "per_image.csv").open()))
    x = np.stack([_read(results / f"{n}.png") for n in "ab"])
    ref = np.stack([_read(originals / f"{n}.png") for n in "ab"])
    mask = (keep > 127).astype(np.float64)[..., None]
    want = {**restoration_metrics(x, ref, "inpainting", mask=mask),
            **registry.build("inpainting_hole")(x, ref, masks=mask),
            **registry.build("aot_gan")(x, ref, masks=mask)}  # fmt: skip
    for column in ("psnr", "ssim", "hole_psnr", "aot_l1"):
        np.testing.assert_allclose([float(r[column]) for r in rows], want[column], rtol=1e-12)
    np.testing.assert_allclose([float(r["psnr"]) for r in rows], want["hole_psnr"], rtol=1e-12)
    # a result without a mask, and a mask of another size, are named; nothing is written
    (masks / "b.png").unlink()
    assert cli.main(argv) == 2
    assert f"no mask in {masks} for ['b']" in capsys.readouterr().err
    Image.fromarray(np.full((16, 32), 255, np.uint8)).save(masks / "b.png")
    assert cli.main(argv) == 2
    assert f"mask {masks / 'b.png'} is 32x16, its result 32x32: sizes must match" in (
        capsys.readouterr().err
    )
    (masks / "b.png").write_bytes(b"not a png")
    assert cli.main(argv) == 2
    assert f"mask {masks / 'b.png'} is not a readable image" in capsys.readouterr().err
    assert cli.main([*argv[:-2], "--mode", "colorization", "--out", str(tmp_path / "c")]) == 2
    assert "--masks scores inpainting holes; --mode colorization has none" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "c").exists()
