"""DGP's optimiser: one torch-exact Adam per parameter group, as an ``optax.partition``.

The reference builds one ``torch.optim.Adam`` whose param groups are G's stages (0 = first
linear [+ class embedding], 1..N = residual blocks with their attention) and a second
Adam for z. Its learning rates change every stage; its moments and step counts run on
through all stages, also for groups whose rate is 0.

Two details decide whether we reproduce it to 1e-10 rather than 1e-3:

* torch's Adam arithmetic (bias corrections on the host, ``denom = sqrt(v)/sqrt(bc2) + eps``),
  reproduced by :func:`torch_adam`.
* A parameter that received no gradient (``grad is None``) is skipped: no step count, no
  moment decay. In instance-norm mode the conditional-BN gain/bias maps and the class
  embedding are outside the graph, so they are skipped. We label them ``g{i}_cond`` and
  pass ``active=False`` for them in such stages; step counts are per leaf.

Learning rates, the active flags and everything else that changes by stage arrive as
arrays through optax's extra arguments, so one compiled step serves every stage.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

FROZEN = "frozen"
Z = "z"


class TorchAdamState(NamedTuple):
    count: Any  # per-leaf int32 step counts, as torch keeps one per parameter
    mu: Any  # first moments; None when b1 == 0 (they would equal the gradient)
    nu: Any


class StageHparams(NamedTuple):
    """Per-step optimiser settings, arrays so that changing them does not recompile."""

    group_lr: jax.Array  # (num_groups,) learning rate of G's groups 0..N
    z_lr: jax.Array  # ()
    use_in: jax.Array  # () bool: conditional paths receive no gradient


def torch_adam(
    lr_fn, active_fn, b1: float = 0.0, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.Adam`` (no weight decay, no amsgrad), step for step.

    ``lr_fn(hparams)`` and ``active_fn(hparams)`` read this transform's learning rate and
    whether its leaves received a gradient this step from the ``hparams`` extra argument.
    """

    def init_fn(params):
        zeros = lambda p: jnp.zeros_like(p)  # noqa: E731
        return TorchAdamState(
            count=jax.tree.map(lambda p: jnp.zeros((), jnp.int32), params),
            mu=None if b1 == 0 else jax.tree.map(zeros, params),
            nu=jax.tree.map(zeros, params),
        )

    def update_fn(updates, state, params=None, *, hparams: StageHparams, **_):
        del params
        lr, active = lr_fn(hparams), active_fn(hparams)

        def leaf(g, count, mu, nu):
            count_new = count + 1
            step = count_new.astype(g.dtype)
            mu_new = g if mu is None else mu + (g - mu) * (1 - b1)
            nu_new = nu * b2 + g * g * (1 - b2)
            bias1 = 1 - jnp.asarray(b1, g.dtype) ** step
            bias2_sqrt = jnp.sqrt(1 - jnp.asarray(b2, g.dtype) ** step)
            denom = jnp.sqrt(nu_new) / bias2_sqrt + eps
            update = -(lr.astype(g.dtype) / bias1) * mu_new / denom
            keep = lambda new, old: jnp.where(active, new, old)  # noqa: E731
            return (
                jnp.where(active, update, jnp.zeros_like(g)),
                keep(count_new, count),
                None if mu is None else keep(mu_new, mu),
                keep(nu_new, nu),
            )

        mus = state.mu if state.mu is not None else jax.tree.map(lambda _: None, updates)
        out = jax.tree.map(leaf, updates, state.count, mus, state.nu, is_leaf=lambda x: x is None)
        pick = lambda i: jax.tree.map(lambda _, o: o[i], updates, out)  # noqa: E731
        return pick(0), TorchAdamState(
            count=pick(1), mu=None if state.mu is None else pick(2), nu=pick(3)
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------- labels
# Path patterns over the trainable tree {"generator": G params, "embedding": ..., "z": ...}.
# Order matters: the first match wins. Every leaf must match (checked in `label_tree`).
_LABEL_RULES: Sequence[tuple[str, str]] = (
    (r"^z$", Z),
    (r"^embedding$", "g0_cond"),
    (r"^generator/shared/", FROZEN),  # the table itself; the solver trains `embedding`
    (r"^generator/linear/", "g0"),
    (r"^generator/blocks\.(\d+)\.0/bn[12]/(gain|bias)/", "g{block}_cond"),
    (r"^generator/blocks\.(\d+)\.\d+/", "g{block}"),
    (r"^generator/output_layer\.", FROZEN),  # never updated by DGP
)


def label_tree(tree: Any, *, update_embed: bool, update_G: bool = True) -> Any:
    """Label every leaf with its optimiser group, from its path. Unmatched -> error."""
    flat = traverse_util.flatten_dict(tree, sep="/")
    labels = {}
    for path, _ in flat.items():
        for pattern, label in _LABEL_RULES:
            m = re.match(pattern, path)
            if m:
                if "{block}" in label:
                    label = label.format(block=int(m.group(1)) + 1)
                if path == "embedding" and not update_embed:
                    label = FROZEN
                if label != Z and not update_G:  # the reference never steps G's Adam then
                    label = FROZEN
                labels[path] = label
                break
        else:
            raise ValueError(f"parameter {path!r} matches no optimiser group rule")
    return traverse_util.unflatten_dict(labels, sep="/")


def group_index(label: str) -> int:
    return int(re.match(r"g(\d+)", label).group(1))


def make_optimizer(
    labels: Any, b1: float = 0.0, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformationExtraArgs:
    """``optax.partition`` of torch-exact Adams: one per G group (and its conditional
    part), one for z, and zero updates for frozen leaves."""
    names = sorted(set(jax.tree.leaves(labels)))
    transforms = {}
    for name in names:
        if name == FROZEN:
            transforms[name] = optax.set_to_zero()
        elif name == Z:
            transforms[name] = torch_adam(lambda h: h.z_lr, lambda h: True, b1, b2, eps)
        else:
            i, cond = group_index(name), name.endswith("_cond")
            transforms[name] = torch_adam(
                lambda h, i=i: h.group_lr[i],
                (lambda h: jnp.logical_not(h.use_in)) if cond else (lambda h: True),
                b1,
                b2,
                eps,
            )
    return optax.partition(transforms, labels)
