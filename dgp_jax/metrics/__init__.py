"""Image-quality metrics, one module per metric family.

- ``restoration``: PSNR, SSIM, MSE, L1 and the colorization merge, as the reference DGP
  reports them (host-side numpy, per image). Re-exported here, so
  ``dgp_jax.metrics.restoration_metrics`` keeps working.
- ``lpips``: LPIPS (vgg, alex) as the ``lpips`` package computes it (:func:`load_lpips`).

Networks a metric needs live in ``dgp_jax.nets``; this package holds what is computed on
their outputs.
"""

from dgp_jax.metrics.lpips import LPIPS, load_lpips
from dgp_jax.metrics.restoration import (
    colorization_merge,
    l1,
    mse,
    psnr,
    restoration_metrics,
    ssim,
)

__all__ = [
    "LPIPS",
    "load_lpips",
    "colorization_merge",
    "l1",
    "mse",
    "psnr",
    "restoration_metrics",
    "ssim",
]
