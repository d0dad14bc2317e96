"""``python -m convert_weights G.pth [D.pth] --out DIR``: same as ``dgp-jax convert``."""

import sys

from dgp_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
