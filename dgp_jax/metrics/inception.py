"""The Inception metrics: FID, KID, Inception Score and P-IDS/U-IDS, each as the code
everyone cites computes it.

``fid``              pytorch-fid 0.3.0 (``calculate_activation_statistics`` +
                     ``calculate_frechet_distance``): float64 mean and covariance of pool3,
                     ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b))`` with scipy's
                     ``sqrtm``, ``1e-6`` added to the diagonals when the product is singular.
``kid``              torch-fidelity 0.4.0 (``kid_features_to_metric``): unbiased MMD^2 with
                     the cubic polynomial kernel ``(x.y / d + 1)^3`` over 100 subsets of 1000
                     drawn with ``RandomState(2020)``; (mean, std).
``inception_score``  torch-fidelity 0.4.0 (``isc_features_to_metric``): the samples shuffled by
                     ``RandomState(2020).permutation``, 10 splits ``[i N // 10, (i+1) N // 10)``,
                     ``exp(mean KL(p(y|x) || p(y)))`` in float64; (mean, std). torch-fidelity
                     feeds it the logits WITHOUT the fc bias: ``model.logits(x,
                     fc_bias=False)``.
``ids``              Co-Mod-GAN's ``metrics/inception_discriminative_score.py``: scikit-learn
                     ``LinearSVC(dual=False)`` fitted on pool3 features, reals labelled 1 and
                     fakes 0. U-IDS = 1 - its accuracy on that training set; P-IDS = the
                     fraction of pairs (real_i, fake_i) where the fake scores higher.

All of them run on the host (numpy/scipy/scikit-learn) on features that
:class:`dgp_jax.nets.inception.InceptionV3` extracts on the devices; pass float32 features
(what the extractor returns) to reproduce the references' own arithmetic.

The network's weights: ``pt_inception-2015-12-05-6726825d.pth`` (see
:data:`INCEPTION_WEIGHTS`); torch-fidelity's copy, ``weights-inception-2015-12-05-6726825d.pth``,
loads too.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from dgp_jax.checks import integer_at_least, is_int
from dgp_jax.nets import inception as inception_net

Array = Any


@dataclasses.dataclass(frozen=True)
class WeightFile:
    """A canonical weight file: its name, where it is published, its sha256 prefix."""

    name: str
    url: str
    sha256_prefix: str
    alternatives: tuple[str, ...] = ()

    def missing(self, path: str | os.PathLike, metric: str) -> FileNotFoundError:
        return FileNotFoundError(
            f"{metric} needs the Inception weights {self.name} (sha256 {self.sha256_prefix}...), "
            f"not found at {os.fspath(path)}. Download it from {self.url} and pass its path "
            "(or the folder holding it)."
        )


INCEPTION_WEIGHTS = WeightFile(
    name="pt_inception-2015-12-05-6726825d.pth",
    url=(
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
        "pt_inception-2015-12-05-6726825d.pth"
    ),
    sha256_prefix="6726825d",
    alternatives=("weights-inception-2015-12-05-6726825d.pth",),  # torch-fidelity's name
)


def inception_weights_path(path: str | os.PathLike, metric: str = "fid") -> Path:
    """``path`` itself if it is a file; if a folder, the weight file inside it (either name).

    A missing file raises FileNotFoundError naming the file, its URL and sha256 prefix and
    ``metric``.
    """
    path = Path(path)
    if path.is_dir():
        for name in (INCEPTION_WEIGHTS.name, *INCEPTION_WEIGHTS.alternatives):
            if (path / name).is_file():
                return path / name
        raise INCEPTION_WEIGHTS.missing(path / INCEPTION_WEIGHTS.name, metric)
    if not path.is_file():
        raise INCEPTION_WEIGHTS.missing(path, metric)
    return path


def load_inception(
    path: str | os.PathLike,
    *,
    dtype=jnp.float32,
    preprocess: str = "pytorch-fid",
    batch_size: int = 32,
    mesh=None,
    metric: str = "fid",
) -> inception_net.InceptionV3:
    """The FID Inception from its ``.pth`` file (or a folder holding it), read without torch.

    ``.features(images)`` -> (N, 2048) pool3, ``.logits(images)`` -> (N, 1008); images are
    NHWC floats in [-1, 1] of any size. ``preprocess="pytorch-fid"`` (default) or
    ``"torch-fidelity"`` (TF1-style resize of the uint8 image); see
    :mod:`dgp_jax.nets.inception`.
    """
    return inception_net.load(
        inception_weights_path(path, metric),
        dtype=dtype,
        preprocess=preprocess,
        batch_size=batch_size,
        mesh=mesh,
    )


# --------------------------------------------------------------------------------------------
# The metrics on features


def _features(x: Array, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be (N, D) features, got shape {x.shape}")
    if not np.all(np.isfinite(x)):  # FID's sqrtm fails obscurely, KID and IS give NaN
        raise ValueError(f"{name} hold NaN or infinite values")
    return x


def _same_width(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names} have different widths: {a.shape[1]} and {b.shape[1]}")


def activation_statistics(features: Array) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-fid's (mu, sigma): float64 mean and covariance (rows are samples)."""
    act = np.asarray(_features(features, "features"), dtype=np.float64)
    if len(act) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {len(act)}")
    return np.mean(act, axis=0), np.cov(act, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """pytorch-fid's ``calculate_frechet_distance`` (Dougal Sutherland's stable version)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"statistics differ in shape: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} "
            f"vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates",
            stacklevel=2,
        )
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(features_a: Array, features_b: Array) -> float:
    """Fréchet Inception Distance between two sets of pool3 features, as pytorch-fid."""
    a, b = _features(features_a, "features_a"), _features(features_b, "features_b")
    _same_width(a, b, "features_a and features_b")
    return frechet_distance(*activation_statistics(a), *activation_statistics(b))


def _mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray):
    """torch-fidelity's ``mmd2(..., mmd_est="unbiased")``, in the kernels' dtype."""
    m = k_xx.shape[0]
    kt_xx_sum = (k_xx.sum(axis=1) - np.diagonal(k_xx)).sum()
    kt_yy_sum = (k_yy.sum(axis=1) - np.diagonal(k_yy)).sum()
    k_xy_sum = k_xy.sum(axis=0).sum()
    mmd2 = (kt_xx_sum + kt_yy_sum) / (m * (m - 1))
    mmd2 -= 2 * k_xy_sum / (m * m)
    return mmd2


def kid(
    features_a: Array,
    features_b: Array,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1,
    seed: int = 2020,
) -> tuple[float, float]:
    """Kernel Inception Distance (mean, std) over random subsets, as torch-fidelity.

    ``features_a`` is torch-fidelity's input1 (usually the generated images), ``features_b``
    its input2; the order only decides which set each subset draw comes from. Each set
    needs at least ``subset_size`` samples (torch-fidelity's default 1000).
    """
    a, b = _features(features_a, "features_a"), _features(features_b, "features_b")
    _same_width(a, b, "features_a and features_b")
    subsets = integer_at_least(subsets, "KID subsets", 1)
    subset_size = integer_at_least(subset_size, "KID subset_size", 2)
    if len(a) < subset_size or len(b) < subset_size:
        raise ValueError(
            f"KID subset_size {subset_size} is larger than a set (features_a: {len(a)}, "
            f"features_b: {len(b)}); pass a smaller subset_size"
        )
    if gamma is None:
        gamma = 1.0 / a.shape[1]

    def kernel(x, y):
        return (np.matmul(x, y.T) * gamma + coef0) ** degree

    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        f1 = a[rng.choice(len(a), subset_size, replace=False)]
        f2 = b[rng.choice(len(b), subset_size, replace=False)]
        mmds[i] = _mmd2_unbiased(kernel(f1, f1), kernel(f1, f2), kernel(f2, f2))
    return float(np.mean(mmds)), float(np.std(mmds))


def inception_score(
    logits: Array, splits: int = 10, *, shuffle: bool = True, seed: int = 2020
) -> tuple[float, float]:
    """Inception Score (mean, std over ``splits``), as torch-fidelity's ``isc``.

    torch-fidelity's own number comes from the logits without the fc bias
    (``model.logits(images, fc_bias=False)``).
    """
    x = _features(logits, "logits")
    n = len(x)
    if not is_int(splits) or not 1 <= splits <= n:
        raise ValueError(f"splits must be between 1 and the number of samples ({n}), got {splits}")
    if shuffle:
        x = x[np.random.RandomState(seed).permutation(n), :]
    x = x.astype(np.float64)
    shifted = x - x.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        rows = slice(i * n // splits, (i + 1) * n // splits)
        p_chunk, log_p_chunk = p[rows], log_p[rows]
        q_chunk = p_chunk.mean(axis=0, keepdims=True)
        kl = (p_chunk * (log_p_chunk - np.log(q_chunk))).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def ids(real_features: Array, fake_features: Array) -> tuple[float, float]:
    """(P-IDS, U-IDS), as Co-Mod-GAN's ``inception_discriminative_score.py``.

    ``real_features[i]`` and ``fake_features[i]`` are a pair (the original and its
    restoration); a linear SVM learns to tell reals (1) from fakes (0). U-IDS is its error
    rate on its own training set; P-IDS the fraction of pairs whose fake scores above its
    real.
    """
    import sklearn.svm

    real = _features(real_features, "real_features")
    fake = _features(fake_features, "fake_features")
    if real.shape != fake.shape:
        raise ValueError(
            f"P-IDS pairs real_features[i] with fake_features[i]: shapes {real.shape} and "
            f"{fake.shape} differ"
        )
    if len(real) < 2:  # one pair: the SVM cannot generalise, and none fails to fit
        raise ValueError(f"P-IDS/U-IDS need at least 2 pairs, got {len(real)}")
    svm = sklearn.svm.LinearSVC(dual=False)
    inputs = np.concatenate([real, fake])
    targets = np.array([1] * real.shape[0] + [0] * fake.shape[0])
    svm.fit(inputs, targets)
    u_ids = 1 - svm.score(inputs, targets)
    p_ids = np.mean(svm.decision_function(fake) > svm.decision_function(real))
    return float(p_ids), float(u_ids)


# --------------------------------------------------------------------------------------------
# Registry evaluators (set metrics: one value for the whole set)
#
# Config: ``weights`` (the .pth file) or ``nets`` (a folder holding it), ``preprocess``,
# ``batch_size`` and ``mesh`` as for load_inception, plus the metric's own options. The
# network is loaded once per configuration and features are cached by image content, so
# fid, kid, is and ids on the same images run it once.


@functools.lru_cache(maxsize=4)
def _cached_network(path: str, preprocess: str, batch_size: int, mesh) -> inception_net.InceptionV3:
    return inception_net.load(path, preprocess=preprocess, batch_size=batch_size, mesh=mesh)


class _FeatureCache:
    """The last few extractions by content, so fid, kid, is and ids on the same images run
    the network once."""

    def __init__(self, size: int = 4):
        self.size = size
        self.entries: dict[tuple, dict[str, np.ndarray]] = {}

    def get(self, network: inception_net.InceptionV3, images: Array) -> dict[str, np.ndarray]:
        images = np.asarray(images)
        digest = hashlib.blake2b(np.ascontiguousarray(images).data, digest_size=16).hexdigest()
        key = (id(network), images.shape, images.dtype.str, digest)
        if key not in self.entries:
            if len(self.entries) >= self.size:
                self.entries.pop(next(iter(self.entries)))
            self.entries[key] = network.outputs(images, ("pool3", "logits_unbiased"))
        return self.entries[key]


_CACHE = _FeatureCache()


def _network(metric: str, weights, nets, preprocess: str, batch_size: int, mesh):
    if weights is None and nets is None:
        raise ValueError(
            f"{metric} needs the Inception weights {INCEPTION_WEIGHTS.name}: pass weights=PATH "
            f"or nets=DIR ({INCEPTION_WEIGHTS.url})"
        )
    path = inception_weights_path(weights if weights is not None else nets, metric)
    return _cached_network(str(path.resolve()), preprocess, batch_size, mesh)


def _evaluator(metric: str, compute: Callable, weights, nets, preprocess, batch_size, mesh):
    network = _network(metric, weights, nets, preprocess, batch_size, mesh)

    def evaluate(restored: Array, reference: Array | None = None) -> dict[str, float]:
        fake = _CACHE.get(network, restored)
        real = _CACHE.get(network, reference) if reference is not None else None
        return compute(fake, real)

    return evaluate


def _needs_reference(metric: str, real) -> None:
    if real is None:
        raise ValueError(f"{metric} compares with reference images; none were given")


def fid_evaluator(
    weights=None, nets=None, preprocess: str = "pytorch-fid", batch_size: int = 32, mesh=None
) -> Callable[..., dict[str, float]]:
    """Registry factory ``fid``: {"fid": FID(restored, reference)} on pool3."""

    def compute(fake, real):
        _needs_reference("fid", real)
        return {"fid": fid(fake["pool3"], real["pool3"])}

    return _evaluator("fid", compute, weights, nets, preprocess, batch_size, mesh)


def kid_evaluator(
    weights=None,
    nets=None,
    preprocess: str = "pytorch-fid",
    batch_size: int = 32,
    mesh=None,
    subsets: int = 100,
    subset_size: int = 1000,
) -> Callable[..., dict[str, float]]:
    """Registry factory ``kid``: {"kid", "kid_std"}, restored as torch-fidelity's input1."""

    def compute(fake, real):
        _needs_reference("kid", real)
        mean, std = kid(fake["pool3"], real["pool3"], subsets=subsets, subset_size=subset_size)
        return {"kid": mean, "kid_std": std}

    return _evaluator("kid", compute, weights, nets, preprocess, batch_size, mesh)


def is_evaluator(
    weights=None,
    nets=None,
    preprocess: str = "pytorch-fid",
    batch_size: int = 32,
    mesh=None,
    splits: int = 10,
) -> Callable[..., dict[str, float]]:
    """Registry factory ``is``: {"is", "is_std"} of the restored images (unbiased logits)."""

    def compute(fake, real):
        mean, std = inception_score(fake["logits_unbiased"], splits)
        return {"is": mean, "is_std": std}

    return _evaluator("is", compute, weights, nets, preprocess, batch_size, mesh)


def ids_evaluator(
    weights=None, nets=None, preprocess: str = "pytorch-fid", batch_size: int = 32, mesh=None
) -> Callable[..., dict[str, float]]:
    """Registry factory ``ids``: {"p_ids", "u_ids"}, restored[i] paired with reference[i]."""

    def compute(fake, real):
        _needs_reference("ids", real)
        p_ids, u_ids = ids(real["pool3"], fake["pool3"])
        return {"p_ids": p_ids, "u_ids": u_ids}

    return _evaluator("ids", compute, weights, nets, preprocess, batch_size, mesh)
