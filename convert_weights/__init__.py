"""BigGAN-PyTorch / DGP checkpoint conversion; the logic is in ``dgp_jax.checkpoint``."""

from dgp_jax.checkpoint import convert, export_pth, infer_config, read_pth_pair

__all__ = ["convert", "export_pth", "infer_config", "read_pth_pair"]
