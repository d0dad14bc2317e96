"""Name -> ``"module:attribute"`` tables whose modules are imported only when a name is
asked for (the methods of ``dgp_jax.baselines``, the evaluators of ``dgp_jax.metrics``), so
that listing names never loads a network."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def resolve(table: Mapping[str, str], name: str, kind: str) -> Any:
    """The attribute ``table[name]`` points at; an unknown name lists the known ones."""
    try:
        target = table[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}") from None
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)
