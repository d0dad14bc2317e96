"""BigGAN-PyTorch state dicts <-> Flax variables, and the dgp_jax checkpoint format.

A dgp_jax checkpoint is a folder::

    config.json        architecture (BigGANConfig fields) + the state-dict key order
    state/             orbax PyTree: {"generator": {"params", "buffers"},
                                      "discriminator": {"params", "buffers"}}

Conversion is a table: the Flax path of every leaf, joined with ".", is the PyTorch key.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from dgp_jax import pth
from dgp_jax.nets.biggan import (
    _D_MULTIPLIERS,
    _G_MULTIPLIERS,
    BigGANConfig,
    Discriminator,
    Generator,
)
from dgp_jax.nets.layers import BUFFERS, PARAMS
from dgp_jax.pth import CheckpointError

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
STATE_DIR = "state"
BUFFER_NAMES = frozenset({"u0", "sv0", "stored_mean", "stored_var"})
# DGP's own generator adds per-image instance-norm affines; they are transient solver
# state, not model weights, so conversion drops them.
_INSTANCE_NORM_KEY = re.compile(r"^blocks\.\d+\.0\.in[12]\.")

Variables = dict[str, Any]


# --------------------------------------------------------------------------- templates
def generator_template(config: BigGANConfig, dtype=jnp.float32) -> Variables:
    """Shapes and dtypes of every generator variable (no computation)."""
    z = jnp.zeros((1, config.effective_dim_z), dtype)
    return jax.eval_shape(Generator(config).init, jax.random.PRNGKey(0), z, jnp.zeros((1,), int))


def discriminator_template(config: BigGANConfig, dtype=jnp.float32) -> Variables:
    x = jnp.zeros((1, config.resolution, config.resolution, 3), dtype)
    y = jnp.zeros((1,), int)
    return jax.eval_shape(Discriminator(config).init, jax.random.PRNGKey(0), x, y)


def _key_table(template: Variables) -> dict[str, tuple[str, tuple[str, ...]]]:
    """PyTorch key -> (collection, Flax path) for every leaf of a template."""
    table = {}
    for collection in (PARAMS, BUFFERS):
        for path in traverse_util.flatten_dict(template[collection]):
            table[".".join(path)] = (collection, path)
    return table


# --------------------------------------------------------------------------- state dicts
def variables_from_state_dict(
    state: Mapping[str, np.ndarray],
    template: Variables,
    *,
    source: str = "state dict",
    dtype=None,
) -> Variables:
    """Place every tensor of a PyTorch state dict at its Flax path.

    Every key of the template must be present with the template's shape, and no other key
    may be (instance-norm affines of DGP's generator excepted). Errors name the key and
    both shapes.
    """
    table = _key_table(template)
    keys = [k for k in state if not _INSTANCE_NORM_KEY.match(k)]
    missing = [k for k in table if k not in state]
    extra = [k for k in keys if k not in table]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if extra:
        problems.append(f"unexpected keys {extra}")
    for key in keys:
        if key in table:
            want = table[key][1]
            leaf = _leaf(template, table[key])
            have = tuple(np.shape(state[key]))
            if have != tuple(leaf.shape):
                problems.append(
                    f"key {key!r} has shape {have} in the file, the model expects "
                    f"{tuple(leaf.shape)} (path {'/'.join(want)})"
                )
    if problems:
        raise CheckpointError(f"{source} does not fit the architecture: " + "; ".join(problems))
    unusable = []
    for key, where in table.items():
        unusable += _value_problems(key, np.asarray(state[key]), _leaf(template, where).dtype)
    if unusable:
        more = f"; and {len(unusable) - 3} more keys" if len(unusable) > 3 else ""
        raise CheckpointError(f"{source} has unusable weights: " + "; ".join(unusable[:3]) + more)
    flat: dict[str, dict[tuple[str, ...], Any]] = {PARAMS: {}, BUFFERS: {}}
    for key, (collection, path) in table.items():
        value = np.asarray(state[key])
        # dtype None (conversion, export) keeps numpy arrays: jnp.asarray would silently
        # turn float64 into float32 whenever jax_enable_x64 is off.
        flat[collection][path] = value if dtype is None else jnp.asarray(value, dtype=dtype)
    return {c: traverse_util.unflatten_dict(flat[c]) for c in (PARAMS, BUFFERS)}


def _value_problems(key: str, value: np.ndarray, want_dtype) -> list[str]:
    """A floating-point parameter stored as integers, or holding NaN or infinity: such
    weights would run, and every image would come out NaN (written black)."""
    if not np.issubdtype(want_dtype, np.floating):
        return []
    if not np.issubdtype(value.dtype, np.floating):
        return [f"key {key!r} has dtype {value.dtype} in the file, the model expects "
                "floating point"]  # fmt: skip
    bad = int(value.size - np.count_nonzero(np.isfinite(value)))
    if bad:
        return [f"key {key!r} holds {bad} NaN or infinite value(s) of {value.size}"]
    return []


def _leaf(tree: Variables, where: tuple[str, tuple[str, ...]]):
    node = tree[where[0]]
    for part in where[1]:
        node = node[part]
    return node


def state_dict_from_variables(
    variables: Variables, key_order: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Flatten Flax variables back to PyTorch keys (in ``key_order`` when given)."""
    flat = {}
    for collection in (PARAMS, BUFFERS):
        for path, value in traverse_util.flatten_dict(variables[collection]).items():
            flat[".".join(path)] = np.asarray(value)
    if key_order and set(key_order) == set(flat):
        return {k: flat[k] for k in key_order}
    return flat


# --------------------------------------------------------------------------- inference
def _block_indices(state: Mapping[str, Any]) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})


def looks_like_generator(state: Mapping[str, Any]) -> bool:
    return "shared.weight" in state or any(k.startswith("output_layer.") for k in state)


def looks_like_discriminator(state: Mapping[str, Any]) -> bool:
    return "embed.weight" in state and not looks_like_generator(state)


def infer_generator_config(state: Mapping[str, np.ndarray], source: str = "state dict") -> dict:
    """Architecture fields read off a generator state dict's shapes."""
    if not looks_like_generator(state):
        kind = "a discriminator" if looks_like_discriminator(state) else "not a BigGAN generator"
        raise CheckpointError(f"{source} is {kind} (no 'shared.weight' / 'output_layer.*' keys)")
    try:
        n_blocks = len(_block_indices(state))
        resolution = {len(m[0]): r for r, m in _G_MULTIPLIERS.items()}[n_blocks]
        last_mult = _G_MULTIPLIERS[resolution][1][-1]
        g_ch = np.shape(state[f"blocks.{n_blocks - 1}.0.conv2.weight"])[0] // last_mult
        n_classes, shared_dim = np.shape(state["shared.weight"])
        lin_out, chunk0 = np.shape(state["linear.weight"])
        cond_dim = np.shape(state["blocks.0.0.bn1.gain.weight"])[1]
        c0 = g_ch * _G_MULTIPLIERS[resolution][0][0]
        bottom_width = math.isqrt(lin_out // c0)
        hier = cond_dim > shared_dim
        attn = [8 * 2**i for i in range(n_blocks) if f"blocks.{i}.1.gamma" in state]
    except (KeyError, IndexError, ValueError) as err:
        raise CheckpointError(
            f"{source}: cannot infer the generator architecture ({type(err).__name__}: {err})"
        ) from None
    num_slots = n_blocks + 1 if hier else 1
    return dict(
        resolution=resolution,
        G_ch=int(g_ch),
        dim_z=int(chunk0 * num_slots),
        shared_dim=int(shared_dim),
        n_classes=int(n_classes),
        hier=bool(hier),
        G_attn="_".join(map(str, attn)) or "0",
        bottom_width=int(bottom_width),
    )


def infer_discriminator_config(state: Mapping[str, np.ndarray], source: str = "state dict") -> dict:
    if looks_like_generator(state) or "embed.weight" not in state:
        kind = "a generator" if looks_like_generator(state) else "not a BigGAN discriminator"
        raise CheckpointError(f"{source} is {kind} (a discriminator has 'embed.weight')")
    try:
        n_blocks = len(_block_indices(state))
        resolution = {len(t[1]): r for r, t in _D_MULTIPLIERS.items()}[n_blocks]
        _, outs, _, nominal = _D_MULTIPLIERS[resolution]
        # conv2 always has the block's output channels (conv1 has them only when D_wide).
        d_ch = np.shape(state["blocks.0.0.conv2.weight"])[0] // outs[0]
        n_classes = np.shape(state["embed.weight"])[0]
        attn = sorted({nominal[i] for i in range(n_blocks) if f"blocks.{i}.1.gamma" in state})
    except (KeyError, IndexError, ValueError) as err:
        raise CheckpointError(
            f"{source}: cannot infer the discriminator architecture ({type(err).__name__}: {err})"
        ) from None
    return dict(resolution=resolution, D_ch=int(d_ch), n_classes=int(n_classes),
                D_attn="_".join(map(str, attn)) or "0")  # fmt: skip


def infer_config(
    g_state: Mapping[str, np.ndarray],
    d_state: Mapping[str, np.ndarray] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    g_source: str = "generator",
    d_source: str = "discriminator",
) -> BigGANConfig:
    """BigGANConfig from the shapes of G (and D); ``overrides`` win over inference."""
    fields = infer_generator_config(g_state, g_source)
    fields["D_ch"] = fields["G_ch"]
    if d_state is not None:
        d_fields = infer_discriminator_config(d_state, d_source)
        for name in ("resolution", "n_classes"):
            if d_fields[name] != fields[name]:
                raise CheckpointError(
                    f"{d_source} has {name}={d_fields[name]} but {g_source} has "
                    f"{name}={fields[name]}: they are not a pair"
                )
        fields.update(d_fields)
    fields.update(overrides or {})
    return BigGANConfig.from_dict(fields)


# --------------------------------------------------------------------------- save / load
@contextlib.contextmanager
def atomic_directory(final: Path):
    """Yield a temporary folder beside ``final``; when the block succeeds it replaces
    ``final``, when it fails it is removed, so an interrupted write never leaves a
    half-written folder (model checkpoints and training checkpoints alike).

    The swap takes three steps: the old ``final`` is renamed aside, the new folder is
    renamed in, then the old one is deleted. A failure before the new folder is in
    puts the old one back; at every moment a complete folder exists on disk (after a hard
    kill between the two renames, the old one is ``.<name>.*.old`` beside ``final``).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    aside = tmp.with_name(tmp.name + ".old")
    moved = False
    try:
        if final.exists():
            os.replace(final, aside)
            moved = True
        os.replace(tmp, final)
    except BaseException:
        if moved:
            os.replace(aside, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if moved:
        shutil.rmtree(aside, ignore_errors=True)


def save(
    directory: str | os.PathLike,
    config: BigGANConfig,
    generator: Variables,
    discriminator: Variables | None = None,
    *,
    key_order: Mapping[str, list[str]] | None = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a dgp_jax checkpoint folder (atomically: into a temp folder, then renamed)."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} exists; pass overwrite=True to replace it")
    if directory.exists() and not directory.is_dir():
        # overwrite replaces a checkpoint folder, never a file that happens to be there
        raise FileExistsError(f"{directory} is a file, not a checkpoint folder to replace")
    with atomic_directory(directory) as tmp:
        state = {"generator": _strip(generator)}
        if discriminator is not None:
            state["discriminator"] = _strip(discriminator)
        with ocp.PyTreeCheckpointer() as ckptr:
            ckptr.save(tmp / STATE_DIR, state)
        meta = {
            "format": "dgp_jax",
            "format_version": FORMAT_VERSION,
            "config": json.loads(config.to_json()),
            "has_discriminator": discriminator is not None,
            "key_order": dict(key_order or {}),
            "metadata": dict(metadata or {}),
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=1))
    return directory


def _strip(variables: Variables) -> Variables:
    return {PARAMS: variables[PARAMS], BUFFERS: variables[BUFFERS]}


def read_meta(directory: str | os.PathLike) -> dict:
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not directory.exists():
        raise FileNotFoundError(f"no checkpoint at {directory}")
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a dgp_jax checkpoint: {CONFIG_FILE} missing")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    if (
        not isinstance(meta, dict)
        or meta.get("format") != "dgp_jax"
        or not isinstance(meta.get("config"), dict)
    ):
        raise CheckpointError(f"{path} is not a dgp_jax checkpoint description")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {meta['format_version']}; this dgp_jax reads "
            f"up to {FORMAT_VERSION}: upgrade dgp_jax"
        )
    return meta


def load(
    directory: str | os.PathLike, *, dtype=None
) -> tuple[BigGANConfig, Variables, Variables | None, dict]:
    """Read a dgp_jax checkpoint folder: (config, generator, discriminator or None, meta)."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    meta = read_meta(directory)
    try:
        config = BigGANConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{directory / CONFIG_FILE}: invalid architecture: {err}") from None
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            state = ckptr.restore(directory / STATE_DIR)
    except Exception as err:  # orbax raises many types for a damaged folder
        raise CheckpointError(
            f"{directory / STATE_DIR} could not be restored ({_restore_error(err)})"
        ) from None
    g_template = generator_template(config)
    generator = _check_tree(state.get("generator"), g_template, directory, "generator", dtype)
    discriminator = None
    if meta.get("has_discriminator"):
        d_template = discriminator_template(config)
        discriminator = _check_tree(
            state.get("discriminator"), d_template, directory, "discriminator", dtype
        )
    return config, generator, discriminator, meta


def _restore_error(err: Exception) -> str:
    """orbax's error in one line: TensorStore's errors append its whole spec (dozens of
    lines); only the damaged array's name is kept from it."""
    text = str(err)
    head = text.split(" See full TensorStore details", 1)[0].strip().splitlines()
    message = f"{type(err).__name__}: {head[0].rstrip('.') if head else ''}"
    array = re.findall(r"'path': '([^'/]+)/?'", text)
    if array:
        message += f"; array {array[-1]}"
    return message


def _check_tree(tree, template, directory, name, dtype) -> Variables:
    if tree is None:
        raise CheckpointError(f"{directory} has no {name} state")
    state = state_dict_from_variables(tree)
    return variables_from_state_dict(state, template, source=f"{directory} ({name})", dtype=dtype)


# --------------------------------------------------------------------------- conversion
def convert(
    generator_pth: str | os.PathLike,
    discriminator_pth: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Released ``G_ema_*.pth`` (+ ``D_*.pth``) -> a dgp_jax checkpoint folder."""
    config, g_vars, d_vars, key_order = read_pth_pair(
        generator_pth, discriminator_pth, overrides=overrides
    )
    meta = {"generator_source": os.fspath(generator_pth)}
    if discriminator_pth is not None:
        meta["discriminator_source"] = os.fspath(discriminator_pth)
    return save(
        out_dir, config, g_vars, d_vars, key_order=key_order, metadata=meta, overwrite=overwrite
    )


def read_pth_pair(
    generator_pth: str | os.PathLike,
    discriminator_pth: str | os.PathLike | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    dtype=None,
) -> tuple[BigGANConfig, Variables, Variables | None, dict[str, list[str]]]:
    g_src = os.fspath(generator_pth)
    g_state = pth.read_state_dict(g_src)
    d_state = d_src = None
    if discriminator_pth is not None:
        d_src = os.fspath(discriminator_pth)
        d_state = pth.read_state_dict(d_src)
    config = infer_config(g_state, d_state, overrides, g_source=g_src, d_source=d_src or "")
    g_vars = variables_from_state_dict(
        g_state, generator_template(config), source=g_src, dtype=dtype
    )
    key_order = {"generator": [k for k in g_state if not _INSTANCE_NORM_KEY.match(k)]}
    d_vars = None
    if d_state is not None:
        d_vars = variables_from_state_dict(
            d_state, discriminator_template(config), source=d_src, dtype=dtype
        )
        key_order["discriminator"] = list(d_state)
    return config, g_vars, d_vars, key_order


def export_pth(
    directory: str | os.PathLike,
    generator_pth: str | os.PathLike,
    discriminator_pth: str | os.PathLike | None = None,
    *,
    dtype: str | None = None,
    overwrite: bool = False,
) -> None:
    """A dgp_jax checkpoint folder -> ``.pth`` state dicts that BigGAN-PyTorch loads.

    ``dtype`` (e.g. "float16") stores the floating-point tensors in that type (half the
    size; loading casts back to the compute dtype); integer buffers are kept as they are.
    Existing files are refused unless ``overwrite``; the target folders must exist.
    """
    if discriminator_pth is not None and (
        Path(generator_pth).absolute() == Path(discriminator_pth).absolute()
    ):
        raise ValueError(
            f"the generator and the discriminator would both be written to {generator_pth}"
        )
    for target in (generator_pth, discriminator_pth):
        if target is None:
            continue
        target = Path(target)
        if not target.parent.is_dir():
            raise FileNotFoundError(f"no folder {target.parent} to write {target.name} into")
        if target.is_dir():
            raise ValueError(f"{target} is a folder; name the .pth file to write")
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    config, g_vars, d_vars, meta = load(directory)
    order = meta.get("key_order", {})

    def state(variables, key_order, target):
        flat = state_dict_from_variables(variables, key_order)
        if dtype is None:
            return flat
        cast = np.dtype(dtype)
        out = {}
        for k, v in flat.items():
            if not np.issubdtype(v.dtype, np.floating):
                out[k] = v
                continue
            with np.errstate(over="ignore"):
                out[k] = v.astype(cast)
            # a weight beyond the type's range becomes infinity: a file that loading refuses
            overflow = int(np.count_nonzero(np.isfinite(v) & ~np.isfinite(out[k])))
            if overflow:
                raise ValueError(
                    f"--dtype {dtype}: key {k!r} of {target} has {overflow} value(s) beyond "
                    f"{dtype}'s range (largest magnitude {float(np.abs(v).max()):.4g}); "
                    "export in float32"
                )
        return out

    if discriminator_pth is not None and d_vars is None:  # before anything is written
        raise CheckpointError(f"{directory} holds no discriminator to export")
    # both state dicts made (and checked) before either file is written
    g_state = state(g_vars, order.get("generator"), generator_pth)
    d_state = None
    if discriminator_pth is not None:
        d_state = state(d_vars, order.get("discriminator"), discriminator_pth)
    pth.write_state_dict(generator_pth, g_state)
    if d_state is not None:
        pth.write_state_dict(discriminator_pth, d_state)
