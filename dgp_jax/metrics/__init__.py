"""Image-quality metrics, one module per metric family.

- ``restoration``: PSNR, SSIM, MSE, L1 and the colorization merge, as the reference DGP
  reports them (host-side numpy, per image). Re-exported here, so
  ``dgp_jax.metrics.restoration_metrics`` keeps working.
- ``classification``: ResNet-50 top-1 / top-5 accuracy (the DGP paper's colorization
  score), :func:`load_resnet50`.

Networks a metric needs live in ``dgp_jax.nets``; this package holds what is computed on
their outputs.
"""

from dgp_jax.metrics.classification import accuracy, load_resnet50, topk_correct
from dgp_jax.metrics.restoration import (
    colorization_merge,
    l1,
    mse,
    psnr,
    restoration_metrics,
    ssim,
)

__all__ = [
    "accuracy",
    "load_resnet50",
    "topk_correct",
    "colorization_merge",
    "l1",
    "mse",
    "psnr",
    "restoration_metrics",
    "ssim",
]
