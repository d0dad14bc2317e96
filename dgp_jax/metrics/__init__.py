"""Image-quality metrics, one module per metric family.

- ``restoration``: PSNR, SSIM, MSE, L1 and the colorization merge, as the reference DGP
  reports them (host-side numpy, per image). Re-exported here, so
  ``dgp_jax.metrics.restoration_metrics`` keeps working.
- ``inception``: FID (pytorch-fid), KID and IS (torch-fidelity), P-IDS/U-IDS (Co-Mod-GAN)
  and ``load_inception`` for the network they run on.

Networks a metric needs live in ``dgp_jax.nets``; this package holds what is computed on
their outputs.
"""

from dgp_jax.metrics.inception import (
    INCEPTION_WEIGHTS,
    fid,
    ids,
    inception_score,
    kid,
    load_inception,
)
from dgp_jax.metrics.restoration import (
    colorization_merge,
    l1,
    mse,
    psnr,
    restoration_metrics,
    ssim,
)

__all__ = [
    "INCEPTION_WEIGHTS",
    "colorization_merge",
    "fid",
    "ids",
    "inception_score",
    "kid",
    "load_inception",
    "l1",
    "mse",
    "psnr",
    "restoration_metrics",
    "ssim",
]
