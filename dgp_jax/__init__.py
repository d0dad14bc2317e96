"""dgp_jax: Deep Generative Prior (Pan et al., ECCV 2020 / TPAMI 2021) in JAX/Flax."""

from dgp_jax.config import SolverConfig, preset_names
from dgp_jax.default_model import DEFAULT_MODEL, default_model_info
from dgp_jax.model import BigGAN, load_biggan, load_default_biggan, random_biggan
from dgp_jax.nets.biggan import BigGANConfig
from dgp_jax.solve import SolveResult, restore

__all__ = [
    "BigGAN",
    "BigGANConfig",
    "DEFAULT_MODEL",
    "SolveResult",
    "SolverConfig",
    "default_model_info",
    "load_biggan",
    "load_default_biggan",
    "preset_names",
    "random_biggan",
    "restore",
]
__version__ = "0.1.0"
