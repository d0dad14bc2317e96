"""Float64 parity of the FID Inception with pytorch-fid (a one-off check, too slow for CI).

pytorch-fid's ``InceptionV3([3]).double()`` against ``dgp_jax.nets.inception`` in float64 on
the seed-0 random weights, rounded to float32 first as torch does (``load_state_dict``
copies them into the float32 modules before ``.double()``), at 64 and 299 px inputs; and
torch-fidelity's extractor with ``feature_extractor_internal_dtype="float64"`` (it casts its
outputs to float32, so that comparison is bounded by float32 rounding).

Command (repository root; about 4 minutes on the shared 2-core machine)::

    PYTHONPATH=/work/.tv:$PWD python experiments/inception_float64_parity.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import torch
    import tv_shim  # noqa: F401  (torchvision's CUDA wheel on CPU torch)
    from jax.sharding import Mesh
    from pytorch_fid import inception as fid_inception
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from dgp_jax import pth
    from dgp_jax.nets import inception

    state = {
        k: v.astype(np.float32).astype(np.float64)
        for k, v in inception.random_state_dict(0).items()
    }
    torch_state = {k: torch.from_numpy(v) for k, v in state.items()}
    fid_inception.load_state_dict_from_url = lambda *a, **k: torch_state
    reference = fid_inception.InceptionV3([3]).double().eval()
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    params = inception.params_from_state_dict(state, dtype=jnp.float64)
    ours = inception.InceptionV3(params, mesh=mesh)

    def relative(a, b):
        return float(np.abs(a - b).max() / np.abs(b).max())

    for size in (64, 299):
        x = np.random.default_rng(size).uniform(-1, 1, (1, size, size, 3))
        with torch.no_grad():
            nchw = torch.from_numpy((x + 1) / 2).permute(0, 3, 1, 2).contiguous()
            expected = reference(nchw)[0][:, :, 0, 0].numpy()
        print(f"pytorch-fid float64, {size} px: pool3 max rel. diff "
              f"{relative(ours.features(x), expected):.1e}")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.pth"
        pth.write_state_dict(weights, state)
        extractor = FeatureExtractorInceptionV3(
            "inception-v3-compat",
            ["2048", "logits"],
            feature_extractor_weights_path=str(weights),
            feature_extractor_internal_dtype="float64",
        )
    pixels = np.random.default_rng(1064).integers(0, 256, (1, 64, 64, 3), np.uint8)
    with torch.no_grad():
        pool3, logits = extractor(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous())
    tf_model = inception.InceptionV3(params, preprocess="torch-fidelity", mesh=mesh)
    out = tf_model.outputs(pixels / 127.5 - 1)
    print(f"torch-fidelity float64 (outputs cast to float32), 64 px: pool3 "
          f"{relative(out['pool3'], pool3.numpy()):.1e}, logits "
          f"{relative(out['logits'], logits.numpy()):.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
