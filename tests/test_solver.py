"""The DGP solver against the reference's short runs (traj_*.npz), step by step, float64.

Each fixture run starts from the reference's own start latent z0 (``z_init``): on a CPU
the reference's select_z keeps the *last* candidate instead of the best one (``z.cpu()``
does not copy there, so every stored candidate aliases z). The candidate scores are
checked separately, and dgp_jax picks the lowest, as the reference does on a GPU.
"""

import json

import numpy as np
import pytest

import dgp_jax
from dgp_jax.checkpoint import state_dict_from_variables
from tests.conftest import fixture_path, reference_model

RUNS = [
    (128, "colorization"),
    (128, "inpainting"),
    (128, "SR"),
    (128, "hybrid"),
    (128, "reconstruct"),
    (256, "colorization"),
]
STAGE_KEYS = ("iterations", "ft_num", "lr_ratio", "G_lrs", "z_lrs", "w_D_loss", "w_mse",
              "w_nll", "ftr_num", "use_in", "update_embed", "select_num", "sample_std")  # fmt: skip


def load_run(res, name):
    traj = np.load(fixture_path(f"traj_{res}_ch8_f64_{name}.npz"))
    meta = json.loads(fixture_path(f"traj_{res}_ch8_f64_{name}.json").read_text())
    config = dgp_jax.SolverConfig(dgp_mode=meta["mode"], **{k: meta[k] for k in STAGE_KEYS})
    return traj, meta, config


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


@pytest.mark.parametrize("res,name", RUNS)
def test_trajectory_matches_reference(res, name, one_device_mesh):
    traj, meta, config = load_run(res, name)
    model = reference_model(res)
    image = traj["target"].transpose(0, 2, 3, 1)
    result = dgp_jax.restore(
        model, image, traj["class_index"], config, z_init=traj["z0"], mesh=one_device_mesh
    )
    np.testing.assert_allclose(
        result.degraded[0], traj["target_degraded"][0].transpose(1, 2, 0), rtol=0, atol=1e-12
    )
    # Every step's losses, at the parameters before that step's update.
    assert result.history["ftr"].shape == (sum(meta["iterations"]), 1)
    assert rel(result.history["ftr"][:, 0], traj["ftr_loss"]) < 1e-10
    assert rel(result.history["mse"][:, 0], traj["mse_loss"]) < 1e-10
    # The final latent (the fixture keeps z after each update; the last one is the result).
    assert rel(result.z[0], traj["z_steps"][-1]) < 1e-10
    assert rel(result.images[0], traj["x_final"][0].transpose(1, 2, 0)) < 1e-10
    # Every generator weight and buffer after the run, by checkpoint key.
    finals = state_dict_from_variables(result.generator(model, 0).generator)
    keys = [k for k in traj.files if k.startswith("G_final.")]
    assert len(keys) == len(finals)
    for key in keys:
        assert rel(finals[key.removeprefix("G_final.")], traj[key]) < 1e-8, key
    # The reference's final metrics.
    final = meta["final"]
    if "psnr" in final:
        for ours, theirs in (("psnr", "psnr"), ("ssim", "ssim"), ("mse", "mse_loss_origin"),
                             ("l1", "l1_loss_origin")):  # fmt: skip
            np.testing.assert_allclose(result.metrics[ours][0], final[theirs], rtol=1e-7)


@pytest.mark.parametrize("res,name", [(128, "colorization"), (128, "hybrid")])
def test_selection_scores_match_reference(res, name, one_device_mesh):
    traj, _, config = load_run(res, name)
    model = reference_model(res)
    cls = int(traj["class_index"][0])
    cands = traj["select_z"][None]
    result = dgp_jax.restore(
        model, traj["target"].transpose(0, 2, 3, 1), [cls], config.replace(iterations=(0, 0, 0)),
        z_candidates=cands, class_candidates=np.full((1, cands.shape[1]), cls),
        mesh=one_device_mesh,
    )  # fmt: skip
    assert rel(result.select_loss[0], traj["select_loss"]) < 1e-10
    best = int(np.argmin(traj["select_loss"]))
    np.testing.assert_array_equal(result.z[0], traj["select_z"][best])
