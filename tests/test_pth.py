"""Tests for dgp_jax.pth: reading/writing PyTorch state dicts without torch or pickled code."""

from __future__ import annotations

import collections
import importlib
import io
import os
import pickle
import shlex
import struct
import zipfile
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from dgp_jax import pth
from dgp_jax.pth import CheckpointError, UnsafeCheckpointError, read_state_dict, write_state_dict
from tests._torch import require_torch

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "biggan_pytorch"
FIXTURE_NAMES = [
    "G_ema_128_ch8_f64.pth",
    "D_128_ch8_f64.pth",
    "G_ema_256_ch8_f64.pth",
    "D_256_ch8_f64.pth",
]
FIXTURE_KEY_COUNTS = {
    "G_ema_128_ch8_f64.pth": 166,
    "D_128_ch8_f64.pth": 88,
    "G_ema_256_ch8_f64.pth": 194,
    "D_256_ch8_f64.pth": 100,
}


def assert_bit_exact(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Same keys in the same order, same dtypes and shapes, same bytes (NaN payloads too)."""
    assert list(actual) == list(expected)
    for key, want in expected.items():
        want = np.asarray(want)
        got = actual[key]
        assert got.dtype == want.dtype, key
        assert got.shape == want.shape, key
        assert got.tobytes() == np.ascontiguousarray(want).tobytes(), key


def synthetic_state() -> dict[str, np.ndarray]:
    """Every writable dtype, scalars, empty tensors and non-contiguous inputs."""
    rng = np.random.default_rng(7)
    base = rng.standard_normal((4, 6))
    return {
        "float64": base,
        "float32": rng.standard_normal((2, 3)).astype(np.float32),
        "float16": rng.standard_normal(5).astype(np.float16),
        "bfloat16": rng.standard_normal((3, 2)).astype(ml_dtypes.bfloat16),
        "int64": np.array([-(2**62), -1, 0, 2**62 + 3], dtype=np.int64),
        "int32": np.array([-(2**31), 2**31 - 1, 5], dtype=np.int32),
        "int16": np.array([-(2**15), 2**15 - 1], dtype=np.int16),
        "int8": np.array([-128, 0, 127], dtype=np.int8),
        "uint8": np.array([[0, 1], [254, 255]], dtype=np.uint8),
        "bool": np.array([[True, False, True]]),
        "complex64": np.array([1 + 2j, -3.5j], dtype=np.complex64),
        "complex128": np.array([[1e300 - 1j]], dtype=np.complex128),
        "special_floats": np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45], dtype=np.float32),
        "scalar_float64": np.array(0.7),
        "scalar_int64": np.array(-7, dtype=np.int64),
        "scalar_bool": np.array(True),
        "empty_float32": np.zeros((0,), dtype=np.float32),
        "empty_2d_int32": np.zeros((3, 0, 2), dtype=np.int32),
        "transposed": base.T,
        "strided_reversed": base[::-1, ::2],
        "sliced_with_offset": base[1:3, 2:5],
    }


# --------------------------------------------------------------------------------------------
# Helpers that build checkpoints by hand, so the error paths can be tested without torch.


def emit_dict_items(w: pth._PickleWriter, tensors: dict[str, tuple], legacy: bool) -> None:
    """Emit a dict literal whose values are _rebuild_tensor_v2 calls.

    Each value is (storage_type, key, numel, offset, size, stride[, legacy view metadata]).
    """
    w.out += b"}("  # EMPTY_DICT, MARK
    for name, spec in tensors.items():
        storage_type, key, numel, offset, size, stride, *view = spec
        w.string(name)
        w.global_("torch._utils", "_rebuild_tensor_v2")
        w.out += b"(("
        w.string("storage")
        w.global_("torch", storage_type)
        w.string(key)
        w.string("cpu")
        w.integer(numel)
        if legacy:
            if view and view[0] is not None:
                view_key, view_offset, view_size = view[0]
                w.out += b"("
                w.string(view_key)
                w.integer(view_offset)
                w.integer(view_size)
                w.out += b"t"
            else:
                w.out += b"N"
        w.out += b"tQ"
        w.integer(offset)
        w.int_tuple(size)
        w.int_tuple(stride)
        w.out += b"\x89"
        w.empty_ordered_dict()
        w.out += b"tR"
    w.out += b"u"  # SETITEMS


def state_pickle(tensors: dict[str, tuple], legacy: bool = False) -> bytes:
    w = pth._PickleWriter()
    emit_dict_items(w, tensors, legacy)
    return w.stop()


def torch_zip(
    path: Path,
    data_pkl: bytes,
    storages: dict[str, bytes] | None = None,
    records: dict[str, bytes] | None = None,
) -> Path:
    """A torch-style zip archive with the given pickle, storages and extra records."""
    with open(path, "wb") as f:
        writer = pth._ZipWriter(f, "archive")
        writer.add("data.pkl", data_pkl)
        for name, data in (records or {}).items():
            writer.add(name, data)
        for key, data in (storages or {}).items():
            writer.add(f"data/{key}", data)
        writer.add("version", b"3\n")
        writer.finish()
    return path


def legacy_header() -> bytes:
    sys_info = {
        "protocol_version": 1001,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }
    return (
        pickle.dumps(pth._LEGACY_MAGIC_NUMBER, protocol=2)
        + pickle.dumps(1001, protocol=2)
        + pickle.dumps(sys_info, protocol=2)
    )


def legacy_file(path: Path, body: bytes, storages: dict[str, np.ndarray]) -> Path:
    """torch < 1.6's format: header pickles, the object, the key list, then count + bytes."""
    with open(path, "wb") as f:
        f.write(legacy_header())
        f.write(body)
        f.write(pickle.dumps(sorted(storages), protocol=2))
        for key in sorted(storages):
            f.write(struct.pack("<q", storages[key].size))
            f.write(storages[key].tobytes())
    return path


def local_data_offset(raw: bytes, info: zipfile.ZipInfo) -> int:
    name_len, extra_len = struct.unpack(
        "<HH", raw[info.header_offset + 26 : info.header_offset + 30]
    )
    return info.header_offset + 30 + name_len + extra_len


# --------------------------------------------------------------------------------------------
# The real BigGAN-PyTorch fixtures (torch zip format)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_reads(name: str) -> None:
    state = read_state_dict(FIXTURES / name)
    assert len(state) == FIXTURE_KEY_COUNTS[name]
    for key, value in state.items():
        assert isinstance(key, str)
        assert type(value) is np.ndarray
        assert value.dtype == np.float64, key
        assert value.flags.c_contiguous and value.flags.writeable, key


def test_g_ema_128_known_keys_shapes_and_values() -> None:
    state = read_state_dict(str(FIXTURES / "G_ema_128_ch8_f64.pth"))  # str paths work too
    assert list(state)[:6] == [
        "shared.weight",
        "linear.weight",
        "linear.bias",
        "linear.u0",
        "linear.sv0",
        "blocks.0.0.conv1.weight",
    ]
    shapes = {
        "linear.weight": (4 * 4 * 16 * 8, 20),
        "shared.weight": (1000, 128),
        "blocks.0.0.conv1.weight": (128, 128, 3, 3),
        "blocks.0.0.conv1.u0": (1, 128),
        "output_layer.0.stored_mean": (8,),
        "output_layer.2.weight": (3, 8, 3, 3),
        "blocks.3.1.gamma": (),
    }
    for key, shape in shapes.items():
        assert state[key].shape == shape, key
        assert state[key].dtype == np.float64, key
    # the fixture README: attention gamma is 0.7
    assert state["blocks.3.1.gamma"] == 0.7
    assert state["linear.weight"][0, 0] == -0.001384701638321495
    assert state["linear.weight"][-1, -1] == -0.006731322892149096
    assert state["blocks.0.0.conv1.weight"].ravel()[-1] == 0.022271820532016737
    assert state["output_layer.0.stored_mean"][0] == -1.4795221783732624
    assert state["output_layer.0.stored_mean"][-1] == -0.4026538444022619


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_round_trip_is_bit_exact(name: str, tmp_path: Path) -> None:
    state = read_state_dict(FIXTURES / name)
    write_state_dict(tmp_path / name, state)
    assert_bit_exact(read_state_dict(tmp_path / name), state)


def test_zip_writer_reproduces_torch_archive_bytes() -> None:
    # Fed the records of a file torch.save wrote, our zip writer must give back that file
    # byte for byte: same order, alignment padding, data descriptors and ZIP64 end records.
    original = (FIXTURES / "G_ema_128_ch8_f64.pth").read_bytes()
    out = io.BytesIO()
    with zipfile.ZipFile(FIXTURES / "G_ema_128_ch8_f64.pth") as archive:
        writer = pth._ZipWriter(out, "G_ema_128_ch8_f64")
        for info in archive.infolist():
            writer.add(info.filename.split("/", 1)[1], archive.read(info))
        writer.finish()
    assert out.getvalue() == original


# --------------------------------------------------------------------------------------------
# Writing


def test_synthetic_round_trip_is_bit_exact(tmp_path: Path) -> None:
    state = synthetic_state()
    assert not state["transposed"].flags.c_contiguous  # the inputs really are non-contiguous
    assert not state["strided_reversed"].flags.c_contiguous
    write_state_dict(tmp_path / "synthetic.pth", state)
    assert_bit_exact(read_state_dict(tmp_path / "synthetic.pth"), state)


def test_jax_arrays_are_accepted(tmp_path: Path) -> None:
    state = {
        "w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3),
        "b": jnp.array([1.5, -2.25], dtype=jnp.bfloat16),
        "n": jnp.array(3, dtype=jnp.int32),
    }
    write_state_dict(tmp_path / "jax.pth", state)
    assert_bit_exact(
        read_state_dict(tmp_path / "jax.pth"), {k: np.asarray(v) for k, v in state.items()}
    )


def test_empty_state_dict_round_trips(tmp_path: Path) -> None:
    write_state_dict(tmp_path / "empty.pth", {})
    assert read_state_dict(tmp_path / "empty.pth") == {}


def test_written_archive_layout_matches_torch(tmp_path: Path) -> None:
    path = tmp_path / "G_ema.pth"
    write_state_dict(path, {"a": np.ones((2, 3), np.float32), "e": np.zeros(0), "s": np.array(1)})
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None  # every CRC checks out
        assert archive.namelist() == [
            "G_ema/data.pkl",
            "G_ema/.format_version",
            "G_ema/.storage_alignment",
            "G_ema/byteorder",
            "G_ema/data/0",
            "G_ema/data/1",
            "G_ema/data/2",
            "G_ema/version",
            "G_ema/.data/serialization_id",
        ]
        assert archive.read("G_ema/version") == b"3\n"
        assert archive.read("G_ema/byteorder") == b"little"
        assert archive.read("G_ema/.format_version") == b"1"
        assert archive.read("G_ema/.storage_alignment") == b"64"
        serialization_id = archive.read("G_ema/.data/serialization_id")
        assert len(serialization_id) == 40 and serialization_id.isdigit()
        for info in archive.infolist():
            assert info.compress_type == zipfile.ZIP_STORED, info.filename
            assert local_data_offset(raw, info) % 64 == 0, info.filename
            # like miniz: UTF-8 names, and a data descriptor after every non-empty record
            assert info.flag_bits == (0x0808 if info.file_size else 0x0800), info.filename
            end = local_data_offset(raw, info) + info.file_size
            if info.file_size:
                assert raw[end : end + 16] == struct.pack(
                    "<IIII", 0x08074B50, info.CRC, info.file_size, info.file_size
                )
            else:
                assert raw[end : end + 4] == b"PK\x03\x04"  # next record follows directly
        assert archive.read("G_ema/data/0") == np.ones(6, np.float32).tobytes()
        assert archive.read("G_ema/data/1") == b""
        assert archive.read("G_ema/data/2") == np.array(1, np.int64).tobytes()


def test_write_is_deterministic(tmp_path: Path) -> None:
    state = synthetic_state()
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    write_state_dict(tmp_path / "one" / "model.pth", state)
    write_state_dict(tmp_path / "two" / "model.pth", state)
    first = (tmp_path / "one" / "model.pth").read_bytes()
    assert first == (tmp_path / "two" / "model.pth").read_bytes()


def test_write_replaces_atomically_and_leaves_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.pth"
    write_state_dict(path, {"w": np.zeros(3)})
    os.chmod(path, 0o640)
    write_state_dict(path, {"w": np.ones(3)})
    assert_bit_exact(read_state_dict(path), {"w": np.ones(3)})
    assert os.stat(path).st_mode & 0o777 == 0o640  # an existing file keeps its permissions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]

    # a crash half-way through leaves the previous file untouched and no temporary behind
    before = path.read_bytes()

    def crash(self: pth._ZipWriter) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pth._ZipWriter, "finish", crash)
    with pytest.raises(OSError, match="disk full"):
        write_state_dict(path, {"w": np.full(3, 2.0)})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]


def test_write_rejects_bad_keys_and_dtypes_before_touching_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    with pytest.raises(TypeError, match="keys must be str"):
        write_state_dict(path, {1: np.zeros(2)})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="'names'.*dtype <U1"):
        write_state_dict(path, {"ok": np.zeros(2), "names": np.array(["a", "b"])})
    with pytest.raises(TypeError, match="'u16'.*uint16"):
        write_state_dict(path, {"u16": np.zeros(2, np.uint16)})
    assert list(tmp_path.iterdir()) == []


def test_zip64_fields_are_written_and_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Lowering the threshold sends every record through the ZIP64 branch that >4 GiB
    # checkpoints would take, without writing 4 GiB.
    monkeypatch.setattr(pth, "_ZIP64_LIMIT", 0)
    state = {"a": np.arange(10, dtype=np.float32), "e": np.zeros(0, np.int8)}
    path = tmp_path / "z64.pth"
    write_state_dict(path, state)
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        for info in archive.infolist():
            assert info.extra[:2] == b"\x01\x00", info.filename  # ZIP64 extended information
    assert_bit_exact(read_state_dict(path), state)


# --------------------------------------------------------------------------------------------
# Reading details: legacy format, views, unwrapping


def test_legacy_format_with_shared_storages_and_views(tmp_path: Path) -> None:
    doubles = np.arange(12, dtype=np.float64)
    ints = np.array([7, 8, 9], dtype=np.int32)
    body = state_pickle(
        {
            "whole": ("DoubleStorage", "100", 12, 0, (3, 4), (4, 1)),
            "transposed": ("DoubleStorage", "100", 12, 0, (4, 3), (1, 4)),
            "slice": ("DoubleStorage", "100", 12, 5, (2, 2), (4, 1)),
            # a pre-0.4 storage view: elements 6..9 of storage 100, then offset 1 into that
            "view": ("DoubleStorage", "100", 12, 1, (3,), (1,), ("150", 6, 4)),
            "ints": ("IntStorage", "200", 3, 0, (3,), (1,)),
        },
        legacy=True,
    )
    path = legacy_file(tmp_path / "legacy.pth", body, {"100": doubles, "200": ints})
    grid = doubles.reshape(3, 4)
    assert_bit_exact(
        read_state_dict(path),
        {
            "whole": grid,
            "transposed": grid.T,
            "slice": grid[1:3, 1:3],
            "view": np.array([7.0, 8.0, 9.0]),
            "ints": ints,
        },
    )


def test_legacy_truncated_in_the_data_section(tmp_path: Path) -> None:
    body = state_pickle({"w": ("FloatStorage", "1", 100, 0, (100,), (1,))}, legacy=True)
    path = legacy_file(tmp_path / "legacy.pth", body, {"1": np.zeros(100, np.float32)})
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match="truncated") as info:
        read_state_dict(path)
    assert str(path) in str(info.value) and "'1'" in str(info.value)


def test_training_checkpoint_is_unwrapped_one_level(tmp_path: Path) -> None:
    w = pth._PickleWriter()
    w.out += b"}("
    w.string("state_dict")
    emit_dict_items(w, {"w": ("FloatStorage", "0", 2, 0, (2,), (1,))}, legacy=False)
    w.string("epoch")
    w.integer(3)
    w.out += b"u"
    path = torch_zip(tmp_path / "ckpt.pth", w.stop(), {"0": np.array([1, 2], np.float32).tobytes()})
    assert_bit_exact(read_state_dict(path), {"w": np.array([1, 2], np.float32)})


def test_storage_shared_by_tensors_in_zip(tmp_path: Path) -> None:
    data = np.arange(6, dtype=np.int64)
    body = state_pickle(
        {
            "a": ("LongStorage", "0", 6, 0, (2, 3), (3, 1)),
            "b": ("LongStorage", "0", 6, 2, (2,), (3,)),
        }
    )
    path = torch_zip(tmp_path / "shared.pth", body, {"0": data.tobytes()})
    assert_bit_exact(read_state_dict(path), {"a": data.reshape(2, 3), "b": np.array([2, 5])})


# --------------------------------------------------------------------------------------------
# Bad input: each raises the documented type, and the message names the file


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError) as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\)") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def test_truncated_fixture(tmp_path: Path) -> None:
    data = (FIXTURES / "G_ema_128_ch8_f64.pth").read_bytes()
    path = tmp_path / "half.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("these are not the weights you are looking for\n")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.pth"
    path.write_bytes(np.random.default_rng(1234).bytes(4096))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def test_random_bytes_behind_a_pickle_opcode(tmp_path: Path) -> None:
    path = tmp_path / "noise.pth"
    path.write_bytes(b"\x80" + np.random.default_rng(99).bytes(4096))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def test_zip_that_is_not_a_torch_archive(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="zip archive but not a PyTorch checkpoint") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def test_torchscript_archive(tmp_path: Path) -> None:
    path = torch_zip(
        tmp_path / "scripted.pth",
        pickle.dumps({}, protocol=2),
        records={"constants.pkl": pickle.dumps((), protocol=2)},
    )
    with pytest.raises(CheckpointError, match="TorchScript") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def test_bare_pickle_of_a_list(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint.*list") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def test_torch_archive_holding_a_list(tmp_path: Path) -> None:
    path = torch_zip(tmp_path / "list.pth", pickle.dumps([1, 2], protocol=2))
    with pytest.raises(CheckpointError, match="holds a list, not a state dict") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def test_state_dict_with_a_non_tensor_value(tmp_path: Path) -> None:
    path = torch_zip(tmp_path / "mixed.pth", pickle.dumps({"epoch": 3}, protocol=2))
    with pytest.raises(CheckpointError, match="value for key 'epoch' is an int") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def test_missing_storage_record(tmp_path: Path) -> None:
    body = state_pickle({"w": ("FloatStorage", "0", 4, 0, (4,), (1,))})
    path = torch_zip(tmp_path / "nodata.pth", body)
    with pytest.raises(
        CheckpointError, match="truncated: storage 'archive/data/0' missing"
    ) as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def test_short_storage_record(tmp_path: Path) -> None:
    body = state_pickle({"w": ("FloatStorage", "0", 4, 0, (4,), (1,))})
    path = torch_zip(tmp_path / "short.pth", body, {"0": b"\x00" * 8})
    with pytest.raises(CheckpointError, match="truncated: record 'archive/data/0'") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("offset", "size", "stride"),
    [(0, (5,), (1,)), (3, (2,), (1,)), (0, (2, 2), (2**40, 1))],
    ids=["too-long", "offset-past-end", "huge-stride"],
)
def test_tensor_reaching_past_its_storage(
    tmp_path: Path, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
) -> None:
    body = state_pickle({"w": ("FloatStorage", "0", 4, offset, size, stride)})
    path = torch_zip(tmp_path / "oob.pth", body, {"0": np.zeros(4, np.float32).tobytes()})
    with pytest.raises(CheckpointError, match="corrupt: tensor 'w'") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def test_big_endian_archive_is_rejected(tmp_path: Path) -> None:
    body = state_pickle({"w": ("FloatStorage", "0", 1, 0, (1,), (1,))})
    path = torch_zip(
        tmp_path / "big.pth", body, {"0": b"\x3f\x80\x00\x00"}, records={"byteorder": b"big"}
    )
    with pytest.raises(CheckpointError, match="big-endian") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------------------------
# Malicious checkpoints: refused in find_class, before anything runs


class _RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def raw_os_system_pickle(command: str) -> bytes:
    """GLOBAL 'os system', the command, TUPLE1, REDUCE: os.system(command) when unpickled."""
    encoded = command.encode()
    return b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(encoded)) + encoded + b"\x85R."


def test_malicious_raw_opcode_pickle(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(raw_os_system_pickle(f"touch {shlex.quote(str(sentinel))}"))
    with pytest.raises(UnsafeCheckpointError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert str(path) in message and "'os.system'" in message and "nothing" in message
    assert not sentinel.exists()
    # control: the payload is live, plain pickle would have run it
    control = tmp_path / "control"
    pickle.loads(raw_os_system_pickle(f"touch {shlex.quote(str(control))}"))
    assert control.exists()


def test_malicious_reduce_pickle(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(_RunsShell(f"touch {shlex.quote(str(sentinel))}")))
    with pytest.raises(UnsafeCheckpointError) as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    assert f"'{os.system.__module__}.system'" in str(info.value)  # posix.system on Linux
    assert not sentinel.exists()


def test_malicious_pickle_inside_torch_zip(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    payload = pickle.dumps({"w": _RunsShell(f"touch {shlex.quote(str(sentinel))}")}, protocol=2)
    path = torch_zip(tmp_path / "evil.pth", payload)
    with pytest.raises(UnsafeCheckpointError) as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    assert f"'{os.system.__module__}.system'" in str(info.value)
    assert not sentinel.exists()


def test_malicious_pickle_inside_legacy_framing(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(legacy_header() + raw_os_system_pickle(f"touch {shlex.quote(str(sentinel))}"))
    with pytest.raises(UnsafeCheckpointError, match="'os.system'") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    assert not sentinel.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("builtins", "getattr"),
        ("builtins", "__import__"),
        ("subprocess", "Popen"),
        ("posix", "system"),
        ("numpy", "load"),
        ("torch", "load"),
        ("torch.nn.modules.linear", "Linear"),
        ("collections", "defaultdict"),
    ],
)
def test_globals_outside_the_allowlist(tmp_path: Path, module: str, name: str) -> None:
    payload = b"\x80\x02}X\x01\x00\x00\x00wc" + f"{module}\n{name}\n".encode() + b")Rs."
    path = torch_zip(tmp_path / "evil.pth", payload)
    with pytest.raises(UnsafeCheckpointError) as info:
        read_state_dict(path)
    assert str(path) in str(info.value) and f"'{module}.{name}'" in str(info.value)


@pytest.mark.parametrize(
    "state", [b"N}X\x03\x00\x00\x00_fnK\x01s\x86", b"}X\x03\x00\x00\x00_fnK\x01s"]
)
def test_build_cannot_alter_allowlisted_functions(tmp_path: Path, state: bytes) -> None:
    # BUILD on an allowlisted callable (slot state, then dict state) must fail, not rewire it
    payload = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n" + state + b"b."
    path = torch_zip(tmp_path / "build.pth", payload)
    with pytest.raises(CheckpointError, match="corrupt") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    allowed = pth._ALLOWED_GLOBALS[("torch._utils", "_rebuild_tensor_v2")]
    assert allowed._fn is pth._rebuild_tensor_v2


# --------------------------------------------------------------------------------------------
# Interop with real torch (skipped without it unless DGP_JAX_REQUIRE_TORCH=1)


def torch_to_numpy(tensor: object) -> np.ndarray:
    torch = require_torch()
    tensor = tensor.detach().contiguous()  # type: ignore[attr-defined]
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def numpy_to_torch(array: np.ndarray) -> object:
    torch = require_torch()
    array = np.array(array, order="C")
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


@pytest.mark.parametrize("mmap", [False, True])
def test_torch_loads_written_file(tmp_path: Path, mmap: bool) -> None:
    torch = require_torch()
    state = synthetic_state()
    path = tmp_path / "written.pth"
    write_state_dict(path, state)
    loaded = torch.load(path, weights_only=True, mmap=mmap)
    assert list(loaded) == list(state)
    assert all(isinstance(t, torch.Tensor) for t in loaded.values())
    assert_bit_exact({k: torch_to_numpy(t) for k, t in loaded.items()}, state)


def test_torch_computes_our_storage_offsets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # .format_version 1 lets torch compute where each storage starts instead of reading the
    # zip directory; with the debug check on, torch verifies that arithmetic against our file.
    torch = require_torch()
    config = importlib.import_module("torch.utils.serialization").config
    state = synthetic_state()
    write_state_dict(tmp_path / "w.pth", state)
    monkeypatch.setenv("TORCH_SERIALIZATION_DEBUG", "1")
    # torch's own patch() restores the setting; a monkeypatch of the proxy attribute does
    # not (its undo deletes the attribute and breaks every later torch.load in the process).
    with config.patch({"load.calculate_storage_offsets": True}):
        loaded = torch.load(tmp_path / "w.pth", weights_only=True, mmap=True)
    assert config.load.calculate_storage_offsets is False
    assert_bit_exact({k: torch_to_numpy(t) for k, t in loaded.items()}, state)


def test_torch_loads_zip64_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = require_torch()
    monkeypatch.setattr(pth, "_ZIP64_LIMIT", 0)
    state = {"a": np.arange(10, dtype=np.float32), "e": np.zeros(0, np.int8)}
    write_state_dict(tmp_path / "z64.pth", state)
    loaded = torch.load(tmp_path / "z64.pth", weights_only=True)
    assert_bit_exact({k: torch_to_numpy(t) for k, t in loaded.items()}, state)


def torch_state() -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """A torch state dict with every dtype, shared storages and views, and what it holds."""
    torch = require_torch()
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    state: dict[str, object] = collections.OrderedDict(
        base=base,
        transposed=base.t(),  # shares base's storage, non-contiguous
        sliced=base[1:3, 2:5],  # storage offset 8
        stepped=base[:, ::2],
        parameter=torch.nn.Parameter(torch.randn(3, generator=generator)),
        float16=torch.randn(5, generator=generator).half(),
        bfloat16=torch.randn(2, 3, generator=generator).bfloat16(),
        int64=torch.tensor([-(2**62), 2**62]),
        int32=torch.tensor([-5, 6], dtype=torch.int32),
        int16=torch.tensor([-(2**15)], dtype=torch.int16),
        int8=torch.tensor([-128, 127], dtype=torch.int8),
        uint8=torch.tensor([0, 255], dtype=torch.uint8),
        bool=torch.tensor([True, False]),
        complex64=torch.tensor([1 + 2j], dtype=torch.complex64),
        complex128=torch.tensor([[-1j, 3.0]], dtype=torch.complex128),
        scalar=torch.tensor(0.25),
        empty=torch.zeros(0, 3),
        num_batches_tracked=torch.tensor(7),
    )
    expected = {k: torch_to_numpy(t) for k, t in state.items()}
    return state, expected


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_read_files_torch_saved(tmp_path: Path, legacy: bool) -> None:
    torch = require_torch()
    state, expected = torch_state()
    path = tmp_path / "saved.pth"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    assert path.read_bytes()[:2] == (b"\x80\x02" if legacy else b"PK")  # the format we meant
    assert_bit_exact(read_state_dict(path), expected)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_read_torch_dtypes_without_typed_storage(tmp_path: Path, legacy: bool) -> None:
    # uint16 and float8 go through _rebuild_tensor_v3 with an untyped storage
    torch = require_torch()
    state = {
        "uint16": torch.tensor([0, 1, 65535], dtype=torch.int32).to(torch.uint16),
        "float8": torch.tensor([1.5, -2.0, 448.0]).to(torch.float8_e4m3fn),
    }
    torch.save(state, tmp_path / "v3.pth", _use_new_zipfile_serialization=not legacy)
    assert_bit_exact(
        read_state_dict(tmp_path / "v3.pth"),
        {
            "uint16": np.array([0, 1, 65535], dtype=np.uint16),
            "float8": np.array([1.5, -2.0, 448.0], dtype=ml_dtypes.float8_e4m3fn),
        },
    )


def test_nn_linear_state_dict_round_trips(tmp_path: Path) -> None:
    torch = require_torch()
    torch.manual_seed(0)
    linear = torch.nn.Linear(3, 2)
    torch.save(linear.state_dict(), tmp_path / "torch.pth")  # carries _metadata
    state = read_state_dict(tmp_path / "torch.pth")
    assert list(state) == ["weight", "bias"]
    assert_bit_exact(state, {k: torch_to_numpy(t) for k, t in linear.state_dict().items()})

    write_state_dict(tmp_path / "ours.pth", state)
    fresh = torch.nn.Linear(3, 2)
    fresh.load_state_dict(torch.load(tmp_path / "ours.pth", weights_only=True))
    assert torch.equal(fresh.weight, linear.weight) and torch.equal(fresh.bias, linear.bias)


def test_torch_saved_training_checkpoint_is_unwrapped(tmp_path: Path) -> None:
    torch = require_torch()
    weights = {"w": torch.arange(4.0)}
    torch.save({"state_dict": weights, "epoch": 3}, tmp_path / "ckpt.pth")
    assert_bit_exact(
        read_state_dict(tmp_path / "ckpt.pth"), {"w": np.arange(4.0, dtype=np.float32)}
    )


def test_torch_saved_whole_module_is_unsafe(tmp_path: Path) -> None:
    torch = require_torch()
    torch.save(torch.nn.Linear(3, 2), tmp_path / "module.pth")
    with pytest.raises(UnsafeCheckpointError, match="'torch.nn.modules.linear.Linear'") as info:
        read_state_dict(tmp_path / "module.pth")
    assert str(tmp_path / "module.pth") in str(info.value)


def test_torch_saved_list_is_rejected(tmp_path: Path) -> None:
    torch = require_torch()
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds a list") as info:
        read_state_dict(tmp_path / "list.pth")
    assert str(tmp_path / "list.pth") in str(info.value)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixtures_match_torch_load(name: str) -> None:
    torch = require_torch()
    expected = torch.load(FIXTURES / name, weights_only=True)
    assert_bit_exact(
        read_state_dict(FIXTURES / name), {k: torch_to_numpy(t) for k, t in expected.items()}
    )
