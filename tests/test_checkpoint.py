"""dgp_jax.checkpoint: architecture inference, .pth <-> orbax folder conversion, bad input.

The fixture .pth files are float64, so "exact" below means bit-identical float64 arrays
(x64 is enabled in conftest.py). Every bad-input test asserts the exception type and that
the message names the file (and the key / both shapes where there is one), because a user
with a broken download has nothing else to go on.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pickle
import re
import shlex
import shutil
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgp_jax import checkpoint
from dgp_jax.model import BigGAN, load_biggan, random_biggan
from dgp_jax.nets.biggan import BigGANConfig
from dgp_jax.pth import CheckpointError, UnsafeCheckpointError, read_state_dict, write_state_dict
from tests._torch import require_torch
from tests.conftest import fixture_path, reference_model

RESOLUTIONS = (128, 256)
# What the fixture README says the reference models are; dim_z at 256 is the flag value 120
# rounded down to a multiple of the 7 hierarchical slots, which is all the shapes can show.
EXPECTED_CONFIG = {
    res: dict(
        resolution=res,
        G_ch=8,
        D_ch=8,
        dim_z=120 if res == 128 else 119,
        shared_dim=128,
        n_classes=1000,
        hier=True,
        G_attn="64",
        D_attn="64",
        bottom_width=4,
        BN_eps=1e-5,
        SN_eps=1e-6,
        D_wide=True,
    )
    for res in RESOLUTIONS
}
# The smallest architecture random_biggan builds quickly; resolution 32 has its own tables.
SMALL = BigGANConfig(
    resolution=32, G_ch=4, D_ch=4, n_classes=10, shared_dim=16, dim_z=20, G_attn="0", D_attn="0"
)

StateDict = dict[str, np.ndarray]


def g_pth(res: int) -> Path:
    return fixture_path(f"G_ema_{res}_ch8_f64.pth")


def d_pth(res: int) -> Path:
    return fixture_path(f"D_{res}_ch8_f64.pth")


@functools.cache
def _source_state(path: Path) -> StateDict:
    return read_state_dict(path)


def source_state(path: Path) -> StateDict:
    """A fixture's state dict, read once; a fresh dict so tests may edit keys (not arrays)."""
    return dict(_source_state(path))


def assert_state_identical(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]):
    """Same keys in the same order, same dtypes and shapes, same bytes."""
    assert list(actual) == list(expected)
    for key, want in expected.items():
        got = np.asarray(actual[key])
        want = np.asarray(want)
        assert (got.dtype, got.shape) == (want.dtype, want.shape), key
        assert got.tobytes() == want.tobytes(), key


def assert_models_identical(a: BigGAN, b: BigGAN) -> None:
    assert a.config == b.config
    assert (a.discriminator is None) == (b.discriminator is None)
    pairs = [(a.generator, b.generator)]
    if a.discriminator is not None:
        pairs.append((a.discriminator, b.discriminator))
    for x, y in pairs:
        # Sorted keys: orbax restores dicts in its own order, which is not what this checks.
        sx, sy = checkpoint.state_dict_from_variables(x), checkpoint.state_dict_from_variables(y)
        assert_state_identical(dict(sorted(sx.items())), dict(sorted(sy.items())))


def folder_snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def write_modified(
    tmp_path: Path, source: Path, edit: Callable[[StateDict], StateDict], name: str
) -> Path:
    """``source`` with ``edit`` applied to its state dict, written in the released format."""
    path = tmp_path / name
    write_state_dict(path, edit(source_state(source)))
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """The fixture pair of a resolution converted once per module (conversion costs ~1 s)."""
    cache: dict[int, Path] = {}

    def get(res: int) -> Path:
        if res not in cache:
            out = tmp_path_factory.mktemp(f"converted_{res}") / "ckpt"
            cache[res] = checkpoint.convert(g_pth(res), d_pth(res), out)
        return cache[res]

    return get


@pytest.fixture(scope="module")
def small_model() -> BigGAN:
    return random_biggan(SMALL, jax.random.PRNGKey(3))


# --------------------------------------------------------------------------- inference
@pytest.mark.parametrize("res", RESOLUTIONS)
def test_infer_config_from_fixture_pairs(res: int) -> None:
    g, d = source_state(g_pth(res)), source_state(d_pth(res))
    config = checkpoint.infer_config(g, d)
    assert dataclasses.asdict(config) == EXPECTED_CONFIG[res]
    assert config.effective_dim_z == (120 if res == 128 else 119)
    # read_pth_pair (what load_biggan and convert use) infers the same from the files.
    assert checkpoint.read_pth_pair(g_pth(res), d_pth(res))[0] == config


def test_overrides_win_over_inference() -> None:
    g, d = source_state(g_pth(128)), source_state(d_pth(128))
    config = checkpoint.infer_config(g, d, {"SN_eps": 1e-4, "BN_eps": 1e-3})
    assert (config.SN_eps, config.BN_eps) == (1e-4, 1e-3)
    want = {**EXPECTED_CONFIG[128], "SN_eps": 1e-4, "BN_eps": 1e-3}
    assert dataclasses.asdict(config) == want
    assert load_biggan(g_pth(128), d_pth(128), SN_eps=1e-4).config.SN_eps == 1e-4
    with pytest.raises(ValueError, match="unknown BigGAN config fields.*'SN_epsilon'"):
        checkpoint.infer_config(g, d, {"SN_epsilon": 1e-4})


def test_generator_alone_infers_generator_fields() -> None:
    config = checkpoint.infer_config(source_state(g_pth(256)))
    for name in ("resolution", "G_ch", "dim_z", "shared_dim", "n_classes", "hier", "G_attn"):
        assert getattr(config, name) == EXPECTED_CONFIG[256][name], name
    assert config.D_ch == config.G_ch  # no D to read it from: BigGAN's usual D_ch = G_ch


# --------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("res", RESOLUTIONS)
def test_converted_folder_loads_bit_identical(converted: Callable[[int], Path], res: int) -> None:
    folder = converted(res)
    assert {p.name for p in folder.iterdir()} == {checkpoint.CONFIG_FILE, checkpoint.STATE_DIR}
    # The atomic write leaves no temp folder beside the checkpoint.
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
    meta = checkpoint.read_meta(folder)
    assert meta["format"] == "dgp_jax" and meta["has_discriminator"] is True
    assert meta["metadata"]["generator_source"] == os.fspath(g_pth(res))
    assert meta["metadata"]["discriminator_source"] == os.fspath(d_pth(res))
    assert BigGANConfig.from_dict(meta["config"]) == BigGANConfig(**EXPECTED_CONFIG[res])

    from_folder = load_biggan(folder, dtype=jnp.float64)
    assert from_folder.dtype == jnp.float64
    assert_models_identical(from_folder, reference_model(res))


def test_converted_folder_generates_the_reference_image(converted: Callable[[int], Path]) -> None:
    # 128 only: the 256 folder's arrays are bit-identical to the .pth model (test above), and
    # test_biggan checks that model's forward at both resolutions; a 256 compile costs ~10 s.
    ref = np.load(fixture_path("forward_128_ch8_f64.npz"))
    model = load_biggan(converted(128), dtype=jnp.float64)
    z, y = jnp.asarray(ref["z"], jnp.float64), jnp.asarray(ref["y"])
    out = np.asarray(model.generate(z, y))
    want = ref["G_out"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    assert out.dtype == np.float64 and out.shape == want.shape
    assert np.abs(out - want).max() <= 1e-10 * np.abs(want).max()
    np.testing.assert_array_equal(out, np.asarray(reference_model(128).generate(z, y)))


@pytest.mark.parametrize("res", RESOLUTIONS)
def test_export_round_trip_is_exact(
    converted: Callable[[int], Path], res: int, tmp_path: Path
) -> None:
    g_out, d_out = tmp_path / "G.pth", tmp_path / "D.pth"
    checkpoint.export_pth(converted(res), g_out, d_out)
    for exported, original in ((g_out, g_pth(res)), (d_out, d_pth(res))):
        got, want = read_state_dict(exported), source_state(original)
        assert {a.dtype for a in got.values()} == {np.dtype(np.float64)}
        assert_state_identical(got, want)  # includes the key order of the source file


def test_export_in_float16_halves_and_loads_back(
    converted: Callable[[int], Path], tmp_path: Path
) -> None:
    g_out, d_out = tmp_path / "G_ema_x.pth", tmp_path / "D_x.pth"
    checkpoint.export_pth(converted(128), g_out, d_out, dtype="float16")
    want = source_state(g_pth(128))
    got = read_state_dict(g_out)
    assert list(got) == list(want)
    for key, value in got.items():
        assert value.dtype == np.float16, key
        np.testing.assert_array_equal(value, want[key].astype(np.float16), err_msg=key)
    model = load_biggan(g_out, dtype=jnp.float32)  # D_x.pth found beside it
    assert model.discriminator is not None
    weight = model.generator["params"]["shared"]["weight"]
    assert weight.dtype == jnp.float32
    np.testing.assert_array_equal(weight, want["shared.weight"].astype(np.float16))


def test_exported_pth_loads_in_torch(converted: Callable[[int], Path], tmp_path: Path) -> None:
    torch = require_torch()
    g_out, d_out = tmp_path / "G.pth", tmp_path / "D.pth"
    checkpoint.export_pth(converted(128), g_out, d_out)
    for exported, original in ((g_out, g_pth(128)), (d_out, d_pth(128))):
        got = torch.load(exported, weights_only=True, map_location="cpu")
        want = torch.load(original, weights_only=True, map_location="cpu")
        assert list(got) == list(want)
        for key, tensor in want.items():
            assert got[key].dtype == tensor.dtype == torch.float64, key
            assert got[key].shape == tensor.shape, key
            assert torch.equal(got[key], tensor), key


def test_export_refuses_weights_beyond_the_dtype_s_range_before_writing(tmp_path: Path) -> None:
    """A D weight of 1e6 overflows float16 (largest 65504): the export is refused, naming
    the key and the file, and neither file is written (G's would be first otherwise)."""

    def big(state: StateDict) -> StateDict:
        key = next(k for k, v in state.items() if np.issubdtype(v.dtype, np.floating))
        return {**state, key: np.where(np.arange(state[key].size).reshape(state[key].shape)
                                       == 0, 1e6, state[key])}  # fmt: skip

    d_big = write_modified(tmp_path, d_pth(128), big, "D.pth")
    g_src = write_modified(tmp_path, g_pth(128), lambda s: s, "G.pth")
    folder = checkpoint.convert(g_src, d_big, tmp_path / "ckpt")
    g_out, d_out = tmp_path / "G16.pth", tmp_path / "D16.pth"
    key = next(k for k, v in source_state(d_pth(128)).items()
               if np.issubdtype(v.dtype, np.floating))  # fmt: skip
    with pytest.raises(ValueError, match=rf"^--dtype float16: key '{re.escape(key)}' of "
                       rf"{re.escape(str(d_out))} has 1 value\(s\) beyond float16's range "
                       r"\(largest magnitude 1e\+06\); export in float32$"):  # fmt: skip
        checkpoint.export_pth(folder, g_out, d_out, dtype="float16")
    assert not g_out.exists() and not d_out.exists()
    checkpoint.export_pth(folder, g_out, d_out)  # float32 holds it
    assert read_state_dict(d_out)[key].reshape(-1)[0] == 1e6


def test_source_key_order_is_kept_generator_only(tmp_path: Path) -> None:
    original = source_state(g_pth(128))
    # The file's order is not the Flax flattening order, so keeping it needs the stored order.
    _, g_vars, _, _ = checkpoint.read_pth_pair(g_pth(128))
    assert list(checkpoint.state_dict_from_variables(g_vars)) != list(original)
    reversed_g = write_modified(tmp_path, g_pth(128), lambda s: dict(reversed(s.items())), "G.pth")
    folder = checkpoint.convert(reversed_g, None, tmp_path / "ckpt")
    checkpoint.export_pth(folder, tmp_path / "G_out.pth")
    assert_state_identical(
        read_state_dict(tmp_path / "G_out.pth"), dict(reversed(original.items()))
    )
    # A G-only folder loads without a discriminator and refuses to export one.
    assert checkpoint.read_meta(folder)["has_discriminator"] is False
    assert load_biggan(folder, dtype=jnp.float64).discriminator is None
    with pytest.raises(CheckpointError, match="holds no discriminator") as info:
        checkpoint.export_pth(folder, tmp_path / "G2.pth", tmp_path / "D2.pth")
    assert str(folder) in str(info.value)


def test_conversion_with_x64_off_keeps_float64(tmp_path: Path) -> None:
    # JAX's default (and so the CLI's) is x64 off; a float64 .pth must still convert exactly
    # rather than be rounded to float32 on its way through jnp arrays.
    with jax.enable_x64(False):
        folder = checkpoint.convert(g_pth(128), None, tmp_path / "ckpt")
        checkpoint.export_pth(folder, tmp_path / "G.pth")
    assert_state_identical(read_state_dict(tmp_path / "G.pth"), source_state(g_pth(128)))


# --------------------------------------------------------------------------- random models
def test_random_model_saves_and_loads_equal(small_model: BigGAN, tmp_path: Path) -> None:
    folder = small_model.save(tmp_path / "small")
    loaded = load_biggan(folder)  # float32, as random_biggan made it
    assert loaded.dtype == jnp.float32
    assert_models_identical(loaded, small_model)


def test_random_model_pth_infers_its_config(small_model: BigGAN, tmp_path: Path) -> None:
    g_path, d_path = tmp_path / "G_ema.pth", tmp_path / "D.pth"
    write_state_dict(g_path, checkpoint.state_dict_from_variables(small_model.generator))
    write_state_dict(d_path, checkpoint.state_dict_from_variables(small_model.discriminator))
    g, d = read_state_dict(g_path), read_state_dict(d_path)
    g_fields = checkpoint.infer_generator_config(g)
    for name in ("resolution", "G_ch", "dim_z", "shared_dim", "n_classes", "hier", "G_attn"):
        assert g_fields[name] == getattr(SMALL, name), name
    assert checkpoint.infer_config(g, d) == SMALL
    assert_models_identical(load_biggan(g_path, d_path), small_model)


# --------------------------------------------------------------------------- instance norm
def with_instance_norm_keys(state: StateDict) -> StateDict:
    """DGP's own saved G: per-block in1/in2 affines after each block's bn2 entries."""
    out: StateDict = {}
    for key, value in state.items():
        out[key] = value
        parts = key.split(".")
        if key.endswith(".0.bn2.bias.sv0"):
            block = ".".join(parts[:3])
            c_in = state[f"{block}.bn1.stored_mean"].shape[0]
            c_out = state[f"{block}.bn2.stored_mean"].shape[0]
            for name, c in (("in1", c_in), ("in2", c_out)):
                out[f"{block}.{name}.weight"] = np.ones(c)
                out[f"{block}.{name}.bias"] = np.zeros(c)
    return out


def test_instance_norm_keys_are_dropped(tmp_path: Path) -> None:
    g_in = write_modified(tmp_path, g_pth(128), with_instance_norm_keys, "G_dgp.pth")
    assert "blocks.0.0.in1.weight" in read_state_dict(g_in)
    config, g_vars, _, order = checkpoint.read_pth_pair(g_in)
    assert config == checkpoint.infer_config(source_state(g_pth(128)))
    assert order["generator"] == list(source_state(g_pth(128)))
    _, want, _, _ = checkpoint.read_pth_pair(g_pth(128))
    assert_state_identical(
        checkpoint.state_dict_from_variables(g_vars), checkpoint.state_dict_from_variables(want)
    )
    folder = checkpoint.convert(g_in, None, tmp_path / "ckpt")
    checkpoint.export_pth(folder, tmp_path / "G.pth")
    assert_state_identical(read_state_dict(tmp_path / "G.pth"), source_state(g_pth(128)))


# --------------------------------------------------------------------------- bad input
def assert_names(err: BaseException, *parts: object) -> None:
    message = str(err)
    for part in parts:
        assert str(part) in message, f"{part!r} not in {message!r}"


def convert_fails(exc: type[BaseException], g: Path, d: Path | None, out: Path, *names: object):
    """convert raises ``exc`` naming ``names``, and leaves nothing at ``out``."""
    with pytest.raises(exc) as info:
        checkpoint.convert(g, d, out)
    assert_names(info.value, *names)
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*"))  # no temp folder left behind
    return info.value


@pytest.mark.parametrize("which", ["G", "D"])
def test_missing_file(tmp_path: Path, which: str) -> None:
    missing = tmp_path / f"{which}_nope.pth"
    g, d = (missing, d_pth(128)) if which == "G" else (g_pth(128), missing)
    convert_fails(FileNotFoundError, g, d, tmp_path / "out", missing)
    with pytest.raises(FileNotFoundError) as info:
        load_biggan(g, d)
    assert_names(info.value, missing)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        checkpoint.load(tmp_path / "nope")
    assert_names(info.value, tmp_path / "nope")


@pytest.mark.parametrize("which", ["G", "D"])
def test_truncated_pth(tmp_path: Path, which: str) -> None:
    source = g_pth(128) if which == "G" else d_pth(128)
    data = source.read_bytes()
    half = tmp_path / f"{which}_half.pth"
    half.write_bytes(data[: len(data) // 2])
    g, d = (half, d_pth(128)) if which == "G" else (g_pth(128), half)
    convert_fails(CheckpointError, g, d, tmp_path / "out", half, "truncated")
    with pytest.raises(CheckpointError) as info:
        load_biggan(g, d)
    assert_names(info.value, half, "truncated")


def test_text_file(tmp_path: Path) -> None:
    text = tmp_path / "G_ema.pth"
    text.write_text("404: Not Found\n")  # what a failed download often leaves
    convert_fails(CheckpointError, text, None, tmp_path / "out", text, "not a PyTorch checkpoint")


def test_discriminator_given_as_generator(tmp_path: Path) -> None:
    err = convert_fails(
        CheckpointError, d_pth(128), g_pth(128), tmp_path / "out", d_pth(128), "discriminator"
    )
    assert "'shared.weight'" in str(err)
    with pytest.raises(CheckpointError, match="is a discriminator") as info:
        load_biggan(d_pth(128))
    assert_names(info.value, d_pth(128))


def test_generator_given_as_discriminator(tmp_path: Path) -> None:
    # A copy, so the message must name the second argument, not just "the G file".
    g_copy = tmp_path / "G_copy.pth"
    shutil.copyfile(g_pth(128), g_copy)
    err = convert_fails(CheckpointError, g_pth(128), g_copy, tmp_path / "out", g_copy, "generator")
    assert "'embed.weight'" in str(err) and "is a generator" in str(err)


@pytest.mark.parametrize("which", ["G", "D"])
def test_missing_key(tmp_path: Path, which: str) -> None:
    key = "blocks.3.0.conv2.bias"
    source = g_pth(128) if which == "G" else d_pth(128)
    bad = write_modified(
        tmp_path, source, lambda s: {k: v for k, v in s.items() if k != key}, "bad.pth"
    )
    g, d = (bad, d_pth(128)) if which == "G" else (g_pth(128), bad)
    convert_fails(CheckpointError, g, d, tmp_path / "out", bad, "missing", repr(key))


def test_missing_key_needed_for_inference(tmp_path: Path) -> None:
    key = "blocks.0.0.bn1.gain.weight"
    bad = write_modified(
        tmp_path, g_pth(128), lambda s: {k: v for k, v in s.items() if k != key}, "bad.pth"
    )
    convert_fails(CheckpointError, bad, d_pth(128), tmp_path / "out", bad, "cannot infer", key)


@pytest.mark.parametrize("which", ["G", "D"])
def test_extra_key(tmp_path: Path, which: str) -> None:
    key = "blocks.1.0.conv9.weight"
    source = g_pth(128) if which == "G" else d_pth(128)
    bad = write_modified(tmp_path, source, lambda s: {**s, key: np.zeros(3)}, "bad.pth")
    g, d = (bad, d_pth(128)) if which == "G" else (g_pth(128), bad)
    convert_fails(CheckpointError, g, d, tmp_path / "out", bad, "unexpected", repr(key))


@pytest.mark.parametrize("which", ["G", "D"])
def test_wrong_shaped_key(tmp_path: Path, which: str) -> None:
    key = "blocks.2.0.conv1.weight"  # not read by inference, so only the shape check sees it
    source = g_pth(128) if which == "G" else d_pth(128)
    want = source_state(source)[key].shape
    have = (want[0] - 1, *want[1:])
    bad = write_modified(tmp_path, source, lambda s: {**s, key: s[key][:-1]}, "bad.pth")
    g, d = (bad, d_pth(128)) if which == "G" else (g_pth(128), bad)
    convert_fails(CheckpointError, g, d, tmp_path / "out", bad, repr(key), have, want)


@pytest.mark.parametrize("which", ["G", "D"])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights(tmp_path: Path, which: str, bad_value: float) -> None:
    # Such weights converted and ran: every solve gave NaN images, written black, exit 0.
    key = "blocks.2.0.conv1.weight"
    source = g_pth(128) if which == "G" else d_pth(128)
    size = source_state(source)[key].size

    def poison(s: StateDict) -> StateDict:
        value = s[key].copy()
        value.flat[[0, 5]] = bad_value
        return {**s, key: value}

    bad = write_modified(tmp_path, source, poison, "bad.pth")
    g, d = (bad, d_pth(128)) if which == "G" else (g_pth(128), bad)
    err = convert_fails(CheckpointError, g, d, tmp_path / "out")
    assert str(err) == (
        f"{bad} has unusable weights: key {key!r} holds 2 NaN or infinite value(s) of {size}"
    )


def test_integer_weights(tmp_path: Path) -> None:
    keys = ["blocks.2.0.conv1.weight", "blocks.2.0.conv2.weight"]
    bad = write_modified(tmp_path, g_pth(128),
                         lambda s: {k: v.astype(np.int32) if k in keys else v
                                    for k, v in s.items()}, "bad.pth")  # fmt: skip
    err = convert_fails(CheckpointError, bad, d_pth(128), tmp_path / "out")
    assert str(err) == f"{bad} has unusable weights: " + "; ".join(
        f"key {k!r} has dtype int32 in the file, the model expects floating point" for k in keys
    )


def test_pair_of_different_resolutions(tmp_path: Path) -> None:
    convert_fails(
        CheckpointError,
        g_pth(128),
        d_pth(256),
        tmp_path / "out",
        g_pth(128),
        d_pth(256),
        "resolution=256",
        "resolution=128",
    )


class _RunsShell:
    """Unpickling this calls os.system(command): the classic malicious-checkpoint payload."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


@pytest.mark.parametrize("which", ["G", "D"])
def test_code_running_pickle_is_refused(tmp_path: Path, which: str) -> None:
    sentinel = tmp_path / "SENTINEL"
    payload = pickle.dumps({"w": _RunsShell(f"touch {shlex.quote(str(sentinel))}")}, protocol=2)
    evil = tmp_path / "evil.pth"
    with zipfile.ZipFile(evil, "w") as archive:  # torch's zip layout: <dir>/data.pkl
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
    g, d = (evil, d_pth(128)) if which == "G" else (g_pth(128), evil)
    system = f"'{os.system.__module__}.system'"  # posix.system on Linux
    convert_fails(UnsafeCheckpointError, g, d, tmp_path / "out", evil, system)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_biggan(g, d)
    assert_names(info.value, evil)
    assert not sentinel.exists()
    # Control: the payload is live, so the test above would have noticed it running.
    pickle.loads(payload)
    assert sentinel.exists()


@pytest.fixture
def folder_copy(converted: Callable[[int], Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(converted(128), tmp_path / "ckpt"))


def test_folder_without_config_json(folder_copy: Path, tmp_path: Path) -> None:
    (folder_copy / checkpoint.CONFIG_FILE).unlink()
    with pytest.raises(CheckpointError) as info:
        load_biggan(folder_copy)
    assert_names(info.value, folder_copy, checkpoint.CONFIG_FILE, "missing")
    with pytest.raises(CheckpointError) as info:
        checkpoint.export_pth(folder_copy, tmp_path / "G.pth")
    assert_names(info.value, folder_copy)
    assert not (tmp_path / "G.pth").exists()


@pytest.mark.parametrize("text", ['{"format": "dgp_jax", "config": {', "", "\xff\xfe"])
def test_folder_with_invalid_config_json(folder_copy: Path, text: str) -> None:
    path = folder_copy / checkpoint.CONFIG_FILE
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(CheckpointError) as info:
        load_biggan(folder_copy)
    assert_names(info.value, path, "not valid JSON")


@pytest.mark.parametrize(
    "meta",
    [
        [1, 2],
        None,
        {"format": "something else", "config": {}},
        {"format": "dgp_jax", "format_version": 1, "config": {"resolution": 100}},
        {"format": "dgp_jax", "format_version": 1, "config": {"G_channels": 96}},
    ],
    ids=["list", "null", "other-format", "bad-resolution", "unknown-field"],
)
def test_folder_with_a_config_json_that_is_not_a_description(
    folder_copy: Path, meta: object
) -> None:
    path = folder_copy / checkpoint.CONFIG_FILE
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as info:
        load_biggan(folder_copy)
    assert_names(info.value, path)


def test_folder_with_a_newer_format(folder_copy: Path) -> None:
    path = folder_copy / checkpoint.CONFIG_FILE
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "format_version": checkpoint.FORMAT_VERSION + 1}))
    with pytest.raises(CheckpointError, match="upgrade dgp_jax") as info:
        load_biggan(folder_copy)
    assert_names(info.value, path)


def test_folder_without_state(folder_copy: Path) -> None:
    shutil.rmtree(folder_copy / checkpoint.STATE_DIR)
    with pytest.raises(CheckpointError, match="could not be restored") as info:
        load_biggan(folder_copy)
    assert_names(info.value, folder_copy / checkpoint.STATE_DIR)


def test_orbax_restore_errors_in_one_line() -> None:
    # A folder whose array files are cut short: orbax raised TensorStore's error, which
    # appends the array's whole spec (60 lines); the message keeps its first line and the
    # array's name. (Text as orbax 0.11 raised it; a real damaged folder is not used here:
    # TensorStore's pending reads then print "Event loop is closed" from other threads.)
    spec = "\n".join(["TensorStore({", "  'kvstore': {", "    'base': {",
                      "      'path': '/x/ckpt/state/',", "    },",
                      "    'path': 'discriminator.params.blocks.2.0.conv2.weight/',",
                      "  },", "})>."])  # fmt: skip
    err = Exception(
        "Encountered error while reading array index: (slice(0, 16, 1), slice(0, 3, 1)). "
        "See full TensorStore details: <bound method spec of " + spec
    )
    assert checkpoint._restore_error(err) == (
        "Exception: Encountered error while reading array index: (slice(0, 16, 1), "
        "slice(0, 3, 1)); array discriminator.params.blocks.2.0.conv2.weight"
    )
    other = ValueError('OUT_OF_RANGE: Error reading "generator.params.linear.weight/0.0"')
    assert checkpoint._restore_error(other) == f"ValueError: {other}"


def test_save_refuses_an_existing_folder(folder_copy: Path, small_model: BigGAN) -> None:
    before = folder_snapshot(folder_copy)
    for attempt in (
        lambda: small_model.save(folder_copy),
        lambda: checkpoint.convert(g_pth(128), d_pth(128), folder_copy),
    ):
        with pytest.raises(FileExistsError) as info:
            attempt()
        assert_names(info.value, folder_copy, "overwrite")
        assert folder_snapshot(folder_copy) == before
        assert [p.name for p in folder_copy.parent.iterdir()] == [folder_copy.name]
    # With overwrite the new model replaces the old one whole.
    small_model.save(folder_copy, overwrite=True)
    assert_models_identical(load_biggan(folder_copy), small_model)
    assert [p.name for p in folder_copy.parent.iterdir()] == [folder_copy.name]


# --------------------------------------------------------------------------- atomic writes
def test_failed_save_keeps_the_old_folder(
    folder_copy: Path, small_model: BigGAN, monkeypatch: pytest.MonkeyPatch
) -> None:
    import orbax.checkpoint as ocp

    before = folder_snapshot(folder_copy)
    written = []

    def failing_save(self, directory, *args, **kwargs):
        written.append(Path(directory).parent)  # the temp folder beside folder_copy
        raise OSError("disk full")

    monkeypatch.setattr(ocp.PyTreeCheckpointer, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        small_model.save(folder_copy, overwrite=True)
    # The save failed inside the temp folder; the old checkpoint is untouched and loads.
    assert written and written[0].parent == folder_copy.parent and written[0] != folder_copy
    assert not written[0].exists()
    assert folder_snapshot(folder_copy) == before
    assert [p.name for p in folder_copy.parent.iterdir()] == [folder_copy.name]


def _tree(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir()}


@pytest.mark.parametrize("fail_at", [1, 2])
def test_atomic_swap_interrupted_keeps_a_complete_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    """A failure at either rename (old aside, new in) leaves the old folder in place, and at
    every moment of the swap some complete folder is on disk."""
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "a").write_text("old")
    (final / "b").write_text("old")
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append((Path(src), Path(dst)))
        # Whatever a hard kill here would leave: the old folder whole, somewhere.
        complete = [_tree(p) for p in tmp_path.iterdir() if p.is_dir()]
        assert {"a": "old", "b": "old"} in complete, complete
        if len(calls) == fail_at:
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with checkpoint.atomic_directory(final) as tmp:
            (tmp / "a").write_text("new")
    monkeypatch.undo()
    assert _tree(final) == {"a": "old", "b": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert calls[0][0] == final  # the old folder is moved aside first, not deleted


def test_atomic_swap_replaces_whole_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "a").write_text("old")
    (final / "b").write_text("old")
    with checkpoint.atomic_directory(final) as tmp:
        (tmp / "a").write_text("new")
    assert _tree(final) == {"a": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    # Interrupted while deleting the old folder: the new one is already complete in place.
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if str(path).endswith(".old"):
            raise KeyboardInterrupt("killed")
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        with checkpoint.atomic_directory(final) as tmp:
            (tmp / "c").write_text("newer")
    assert _tree(final) == {"c": "newer"}
