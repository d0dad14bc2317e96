"""Image-quality metrics, one module per metric family.

- ``restoration``: PSNR, SSIM, MSE, L1 and the colorization merge, as the reference DGP
  reports them (host-side numpy, per image). Re-exported here, so
  ``dgp_jax.metrics.restoration_metrics`` keeps working.
- ``inception``: FID (pytorch-fid), KID and IS (torch-fidelity), P-IDS/U-IDS (Co-Mod-GAN)
  and ``load_inception`` for the network they run on.
- ``classification``: ResNet-50 top-1 / top-5 accuracy (the DGP paper's colorization
  score), :func:`load_resnet50`.
- ``niqe_metric``: NIQE as the LIVE MATLAB code, :func:`niqe`, :func:`load_niqe_params`,
  :func:`fit_niqe_params`, :func:`save_niqe_params`.
- ``lpips``: LPIPS (vgg, alex) as the ``lpips`` package computes it (:func:`load_lpips`).

Networks a metric needs live in ``dgp_jax.nets``; this package holds what is computed on
their outputs.
"""

from dgp_jax.metrics.classification import accuracy, load_resnet50, topk_correct
from dgp_jax.metrics.inception import (
    INCEPTION_WEIGHTS,
    fid,
    ids,
    inception_score,
    kid,
    load_inception,
)
from dgp_jax.metrics.lpips import LPIPS, load_lpips
from dgp_jax.metrics.niqe_metric import fit_niqe_params, load_niqe_params, niqe, save_niqe_params
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
    "LPIPS",
    "accuracy",
    "colorization_merge",
    "fid",
    "fit_niqe_params",
    "ids",
    "inception_score",
    "kid",
    "l1",
    "load_inception",
    "load_lpips",
    "load_niqe_params",
    "load_resnet50",
    "mse",
    "niqe",
    "psnr",
    "restoration_metrics",
    "save_niqe_params",
    "ssim",
    "topk_correct",
]
