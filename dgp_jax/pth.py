"""Read and write PyTorch ``.pth`` state dicts without torch and without running pickled code.

Why this module exists: the weights DGP needs (BigGAN-PyTorch's ``G_ema.pth`` and ``D.pth``)
are PyTorch checkpoints, and ``torch.load`` both pulls in a multi-gigabyte dependency and,
unless told otherwise, executes whatever the pickle inside the file asks for.  A state dict
only ever needs a handful of tensor-rebuilding functions, so we unpickle with an allowlist
that maps each of them to a harmless stand-in of our own.  Any other global named by the file
is refused inside ``find_class``, i.e. before the unpickler could call it, and nothing the
file names is ever imported.

Formats read by :func:`read_state_dict`:

* torch's zip format (the default since torch 1.6): ``<dir>/data.pkl`` holds the pickle and
  ``<dir>/data/<key>`` the raw little-endian bytes of each storage.
* torch's legacy format (torch < 1.6, which is what the 2019 BigGAN-PyTorch releases are, and
  what ``torch.save(..., _use_new_zipfile_serialization=False)`` still writes): a sequence of
  pickles -- magic number, protocol version 1001, a ``sys_info`` dict, the object itself, the
  list of storage keys -- followed, for each key, by an int64 element count and the raw bytes.

Not supported, each with a clear :class:`CheckpointError`: torch's pre-0.4 tar format,
TorchScript archives (``torch.jit.save``), big-endian files, whole pickled modules.

:func:`write_state_dict` writes torch's zip format laid out the way torch 2.x's own writer
(miniz, via ``PyTorchStreamWriter``) does: the same records in the same order, stored
uncompressed, each record's data aligned to 64 bytes with an ``FB`` padding extra field,
data descriptors after non-empty records and ZIP64 end records.  Matching the layout matters
beyond looks: ``.format_version`` 1 promises it, and ``torch.load(mmap=True)`` with
``calculate_storage_offsets`` computes storage offsets from that promise instead of reading
the zip directory.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import io
import math
import os
import pickle
import stat
import struct
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Mapping
from typing import IO, Any, NamedTuple

import ml_dtypes
import numpy as np

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "read_state_dict",
    "write_state_dict",
]


class CheckpointError(ValueError):
    """A file is not a readable PyTorch state dict; the message names the file and the problem."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint's pickle names a global outside the allowlist.

    Raised from ``find_class``, before the unpickler could call anything, so nothing from the
    file was executed.
    """


# --------------------------------------------------------------------------------------------
# Constants of torch's formats

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001
_ALIGNMENT = 64
# Sizes and offsets from this value on need ZIP64 fields.  Module-level so the tests can lower
# it and exercise the ZIP64 branch without writing 4 GiB.
_ZIP64_LIMIT = 0xFFFFFFFF
_SETITEMS_BATCH = 1000  # what the std pickler uses; torch's pickles look the same

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
}

# ``torch.<dtype>`` objects pickle as GLOBAL torch <name>.  Newer torch writes them as the
# last-but-one argument of ``_rebuild_tensor_v3`` for dtypes without a typed storage class
# (uint16/32/64, float8 ...), whose storage is then an untyped byte buffer.
_TORCH_DTYPES: dict[str, np.dtype | None] = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int16": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16),
    "uint32": np.dtype(np.uint32),
    "uint64": np.dtype(np.uint64),
    "bool": np.dtype(np.bool_),
    "complex64": np.dtype(np.complex64),
    "complex128": np.dtype(np.complex128),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "float8_e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "float8_e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
    # Real torch dtypes numpy has no equivalent for: allowed as globals (they are harmless)
    # so that the error is "unsupported dtype", not a false alarm about unsafe code.
    "complex32": None,
    "qint8": None,
    "quint8": None,
    "qint32": None,
    "quint4x2": None,
    "float4_e2m1fn_x2": None,
    "bits8": None,
    "bits16": None,
}
if hasattr(ml_dtypes, "float8_e8m0fnu"):
    _TORCH_DTYPES["float8_e8m0fnu"] = np.dtype(ml_dtypes.float8_e8m0fnu)
else:  # pragma: no cover - older ml_dtypes
    _TORCH_DTYPES["float8_e8m0fnu"] = None


# --------------------------------------------------------------------------------------------
# Stand-ins for what the pickle may reference.  NamedTuples because the unpickler's BUILD
# opcode cannot alter them: they have no ``__dict__`` and refuse attribute assignment.


class _StorageType(NamedTuple):
    """Stand-in for ``torch.<X>Storage``: only the element dtype matters."""

    name: str
    dtype: np.dtype


class _DType(NamedTuple):
    """Stand-in for a ``torch.<dtype>`` object; ``dtype`` is None where numpy has none."""

    name: str
    dtype: np.dtype | None


class _TensorClass(NamedTuple):
    """Stand-in for ``torch.Tensor`` / ``torch.nn.Parameter`` in ``_rebuild_from_type_v2``."""

    name: str


class _StorageRef(NamedTuple):
    """A storage as the pickle sees it: ``numel`` elements of ``dtype`` starting
    ``elem_offset`` elements into the bytes stored under ``key`` (non-zero only for the legacy
    format's storage views)."""

    key: str
    dtype: np.dtype
    numel: int
    elem_offset: int


class _TensorRef(NamedTuple):
    """A tensor still to be cut from its storage.  Kept symbolic until unpickling is done:
    the legacy format stores the bytes after the pickle."""

    storage: _StorageRef
    dtype: np.dtype
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _Malformed(Exception):
    """Raised inside the unpickler's callbacks; the caller adds the file name."""


class _Allowed:
    """An allowlisted callable, immutable so that a BUILD opcode aimed at it cannot change it
    for later loads (BUILD on a plain function would set attributes such as ``__defaults__``)."""

    __slots__ = ("_fn", "_name")

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_name", name)

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{self._name} is read-only")

    def __repr__(self) -> str:
        return f"<allowed {self._name}>"


def _int(value: Any, what: str) -> int:
    # bool is an int subclass, but a bool here means the pickle is not what torch writes
    if type(value) is not int or value < 0 or value >= 2**62:
        raise _Malformed(f"{what} is {value!r}, not a non-negative integer")
    return value


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)):
        raise _Malformed(f"{what} is {type(value).__name__}, not a tuple of integers")
    return tuple(_int(v, what) for v in value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise _Malformed(f"a tensor is built from {type(storage).__name__}, not a storage")
    size_t = _int_tuple(size, "a tensor size")
    stride_t = _int_tuple(stride, "a tensor stride")
    if len(size_t) != len(stride_t):
        raise _Malformed(f"a tensor has size {size_t} but stride {stride_t}")
    offset = _int(storage_offset, "a storage offset")
    return _TensorRef(storage, storage.dtype, offset, size_t, stride_t)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    backward_hooks: Any,
    metadata: Any = None,
) -> _TensorRef:
    # requires_grad, hooks and metadata mean nothing to a numpy array
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    backward_hooks: Any,
    dtype: Any,
    metadata: Any = None,
) -> _TensorRef:
    tensor = _rebuild_tensor(storage, storage_offset, size, stride)
    if not isinstance(dtype, _DType):
        raise _Malformed(f"a tensor's dtype is {type(dtype).__name__}, not a torch dtype")
    if dtype.dtype is None:
        raise _Malformed(f"a tensor has dtype torch.{dtype.name}, which numpy cannot represent")
    # the storage is untyped bytes; offset, size and stride count elements of `dtype`
    return tensor._replace(dtype=dtype.dtype)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> Any:
    return data


def _rebuild_parameter_with_state(
    data: Any, requires_grad: Any, backward_hooks: Any, state: Any
) -> Any:
    return data


_REBUILDERS = (
    _rebuild_tensor,
    _rebuild_tensor_v2,
    _rebuild_tensor_v3,
    _rebuild_parameter,
    _rebuild_parameter_with_state,
)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    # torch uses this for tensors carrying Python attributes; the attributes are dropped
    if not isinstance(func, _Allowed) or func._fn not in _REBUILDERS:
        raise _Malformed(f"_rebuild_from_type_v2 is asked to call {func!r}")
    if not isinstance(new_type, _TensorClass):
        raise _Malformed(f"_rebuild_from_type_v2 is asked for type {new_type!r}")
    if not isinstance(args, tuple):
        raise _Malformed("_rebuild_from_type_v2 got arguments that are not a tuple")
    return func(*args)


def _build_allowlist() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): _Allowed(collections.OrderedDict, "OrderedDict"),
        ("torch", "Tensor"): _TensorClass("Tensor"),
        ("torch._tensor", "Tensor"): _TensorClass("Tensor"),
        ("torch.nn.parameter", "Parameter"): _TensorClass("Parameter"),
        ("torch._tensor", "_rebuild_from_type_v2"): _Allowed(
            _rebuild_from_type_v2, "_rebuild_from_type_v2"
        ),
    }
    for fn in (
        _rebuild_tensor,
        _rebuild_tensor_v2,
        _rebuild_tensor_v3,
        _rebuild_parameter,
        _rebuild_parameter_with_state,
    ):
        allowed[("torch._utils", fn.__name__)] = _Allowed(fn, fn.__name__)
    for name, dtype in _STORAGE_DTYPES.items():
        allowed[("torch", name)] = _StorageType(name, dtype)
    # torch >= 2.0 pickles untyped storages (used with _rebuild_tensor_v3) under their module
    untyped = _StorageType("UntypedStorage", np.dtype(np.uint8))
    allowed[("torch", "UntypedStorage")] = untyped
    allowed[("torch.storage", "UntypedStorage")] = untyped
    for name, dtype in _TORCH_DTYPES.items():
        allowed[("torch", name)] = _DType(name, dtype)
    return allowed


_ALLOWED_GLOBALS = _build_allowlist()


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler whose only globals are the stand-ins above.

    Every way a pickle can reach a global (GLOBAL, STACK_GLOBAL, INST, OBJ, EXT*) goes through
    ``find_class``, so refusing there means nothing the file names is imported or called.
    """

    def __init__(
        self,
        file: IO[bytes],
        path: str,
        persistent_load: Callable[[Any], Any] | None,
    ) -> None:
        super().__init__(file, encoding="utf-8")
        self._path = path
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                f"{self._path} references the global '{module}.{name}', which is not one of the "
                "tensor-rebuilding functions a state dict needs; refused before it could run "
                "(nothing from the file was executed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise _Malformed("a persistent id appears where torch writes none")
        return self._persistent(pid)


# --------------------------------------------------------------------------------------------
# Reading


def _describe(value: Any) -> str:
    if isinstance(value, _StorageRef):
        return "a bare storage"
    if isinstance(value, _DType):
        return f"torch.{value.name}"
    if isinstance(value, (_StorageType, _TensorClass, _Allowed)):
        return f"the class/function {value!r}"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and all(isinstance(v, _TensorRef) for v in obj.values())


def _state_refs(obj: Any, path: str) -> dict[str, _TensorRef]:
    """Check that the unpickled object is a state dict and return its tensors in file order."""
    # Training checkpoints often wrap the weights as {'state_dict': ..., 'optimizer': ...};
    # unwrap exactly one such level, nothing deeper and nothing else.
    if (
        isinstance(obj, dict)
        and not _is_tensor_dict(obj)
        and isinstance(obj.get("state_dict"), dict)
    ):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path} holds {_describe(obj)}, not a state dict (a dict of str -> tensor)"
        )
    refs: dict[str, _TensorRef] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path} is not a state dict: it has a non-string key {key!r}")
        if not isinstance(value, _TensorRef):
            raise CheckpointError(
                f"{path} is not a state dict of tensors: the value for key {key!r} is "
                f"{_describe(value)}"
            )
        refs[key] = value
    return refs


def _storage_nbytes(ref: _StorageRef) -> int:
    """Bytes of the stored record that ``ref`` needs, counted from the record's start."""
    return (ref.elem_offset + ref.numel) * ref.dtype.itemsize


def _materialize(tensor: _TensorRef, data: bytes, path: str, key: str) -> np.ndarray:
    """Cut ``tensor`` out of its storage bytes into a fresh C-contiguous array.

    Bounds are checked before ``as_strided``, which would otherwise happily read memory past
    the buffer for a hostile size/stride.
    """
    storage = tensor.storage
    dtype = tensor.dtype
    start = storage.elem_offset * storage.dtype.itemsize
    nbytes = storage.numel * storage.dtype.itemsize
    if start + nbytes > len(data):
        raise CheckpointError(
            f"{path} is corrupt: tensor {key!r} uses {start + nbytes} bytes of storage "
            f"{storage.key!r}, which holds {len(data)}"
        )
    count = nbytes // dtype.itemsize
    if math.prod(tensor.size) == 0:
        return np.zeros(tensor.size, dtype=dtype)
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride, strict=True))
    if last >= count:
        raise CheckpointError(
            f"{path} is corrupt: tensor {key!r} (offset {tensor.offset}, size {tensor.size}, "
            f"stride {tensor.stride}) reaches element {last} of storage {storage.key!r}, "
            f"which has {count} elements of {dtype}"
        )
    elements = np.frombuffer(data, dtype=dtype, count=count, offset=start)
    view = np.lib.stride_tricks.as_strided(
        elements[tensor.offset :],
        shape=tensor.size,
        strides=tuple(s * dtype.itemsize for s in tensor.stride),
        writeable=False,
    )
    out = np.array(view, dtype=dtype, order="C", copy=True)
    if sys.byteorder == "big" and dtype.itemsize > 1:  # pragma: no cover - little-endian CI
        out = out.byteswap()
    return out


def _check_pid(pid: Any, length: int) -> tuple[Any, ...]:
    if not isinstance(pid, tuple) or len(pid) != length:
        raise _Malformed(f"persistent id {pid!r} is not a {length}-tuple")
    typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    if typename != "storage":
        raise _Malformed(f"persistent id of kind {typename!r}; only 'storage' is supported")
    if not isinstance(pid[1], _StorageType):
        raise _Malformed(f"persistent id names {_describe(pid[1])} as its storage type")
    if not isinstance(pid[2], str):
        raise _Malformed(f"storage key {pid[2]!r} is not a string")
    return pid


def _unpickle(
    data: IO[bytes], path: str, what: str, persistent_load: Callable[[Any], Any] | None = None
) -> Any:
    """Unpickle one object, turning every failure into a CheckpointError naming the file."""
    try:
        return _SafeUnpickler(data, path, persistent_load).load()
    except CheckpointError:
        raise
    except _Malformed as exc:
        raise CheckpointError(f"{path} is corrupt: {what}: {exc}") from None
    except EOFError:
        raise CheckpointError(f"{path} is truncated: {what} ends early") from None
    except Exception as exc:  # the unpickler raises many types for garbage input
        if "truncated" in str(exc):
            raise CheckpointError(f"{path} is truncated: {what} ends early") from None
        raise CheckpointError(
            f"{path} is corrupt: cannot unpickle {what} ({type(exc).__name__}: {exc})"
        ) from None


def _read_zip(f: IO[bytes], path: str) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, struct.error) as exc:
        raise CheckpointError(
            f"{path} is truncated or corrupt: it starts like a zip archive but its zip "
            f"directory cannot be read ({exc})"
        ) from None
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            raise CheckpointError(
                f"{path} is a zip archive but not a PyTorch checkpoint (no '<dir>/data.pkl' record)"
            )
        if len(pickles) > 1:
            raise CheckpointError(
                f"{path} is not a PyTorch checkpoint: it has several data.pkl records {pickles}"
            )
        prefix = pickles[0][: -len("data.pkl")]
        if prefix + "constants.pkl" in names or any(n.startswith(prefix + "code/") for n in names):
            raise CheckpointError(
                f"{path} is a TorchScript archive (torch.jit.save), not a state dict saved with "
                "torch.save"
            )
        if prefix + "byteorder" in names:
            byteorder = _read_record(archive, prefix + "byteorder", path, None)
            if byteorder == b"big":
                raise CheckpointError(
                    f"{path} was written on a big-endian machine (byteorder 'big'); only "
                    "little-endian checkpoints are supported"
                )
            if byteorder != b"little":
                raise CheckpointError(f"{path} is corrupt: unknown byteorder {byteorder!r}")

        storages: dict[str, _StorageRef] = {}

        def persistent_load(pid: Any) -> _StorageRef:
            _, storage_type, key, _location, numel = _check_pid(pid, 5)
            ref = _StorageRef(key, storage_type.dtype, _int(numel, "a storage size"), 0)
            seen = storages.setdefault(key, ref)
            if seen.dtype != ref.dtype:
                raise _Malformed(f"storage {key!r} is used as both {seen.dtype} and {ref.dtype}")
            return ref

        pickle_bytes = _read_record(archive, pickles[0], path, None)
        obj = _unpickle(io.BytesIO(pickle_bytes), path, pickles[0], persistent_load)
        refs = _state_refs(obj, path)
        needed: dict[str, int] = {}
        for tensor in refs.values():
            key = tensor.storage.key
            needed[key] = max(needed.get(key, 0), _storage_nbytes(tensor.storage))
        data = {
            key: _read_record(archive, f"{prefix}data/{key}", path, nbytes)
            for key, nbytes in needed.items()
        }
        return {key: _materialize(t, data[t.storage.key], path, key) for key, t in refs.items()}


def _read_record(archive: zipfile.ZipFile, name: str, path: str, nbytes: int | None) -> bytes:
    """Read a zip record, or its first ``nbytes`` bytes (bounded, so a hostile size in the
    zip directory cannot make us allocate more than the pickle asked for)."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CheckpointError(f"{path} is truncated: storage '{name}' missing") from None
    if nbytes is not None and info.file_size < nbytes:
        raise CheckpointError(
            f"{path} is truncated: record '{name}' has {info.file_size} bytes, the pickle "
            f"needs {nbytes}"
        )
    try:
        with archive.open(info) as stream:
            data = stream.read() if nbytes is None else stream.read(nbytes)
    except (
        zipfile.BadZipFile,
        EOFError,
        OSError,
        NotImplementedError,  # unknown compression method
        RuntimeError,  # encrypted record
        zlib.error,
    ) as exc:
        raise CheckpointError(f"{path} is corrupt: cannot read record '{name}' ({exc})") from None
    if nbytes is not None and len(data) < nbytes:
        raise CheckpointError(f"{path} is truncated: record '{name}' ends early")
    return data


def _read_legacy(f: IO[bytes], path: str, file_size: int) -> dict[str, np.ndarray]:
    not_torch = f"{path} is not a PyTorch checkpoint (no zip archive or legacy magic number)"
    try:
        magic = _SafeUnpickler(f, path, None).load()
    except UnsafeCheckpointError:
        raise  # a bare pickle that wants to run code: say so, not just "not a checkpoint"
    except Exception:
        raise CheckpointError(not_torch) from None
    if type(magic) is not int or magic != _LEGACY_MAGIC_NUMBER:
        raise CheckpointError(
            f"{not_torch}: it starts with a pickle of {_describe(magic)}, which torch.save "
            "does not write"
        )
    version = _unpickle(f, path, "the legacy protocol version")
    if version != _LEGACY_PROTOCOL_VERSION:
        raise CheckpointError(
            f"{path} has legacy protocol version {version!r}; only "
            f"{_LEGACY_PROTOCOL_VERSION} is supported"
        )
    sys_info = _unpickle(f, path, "the legacy sys_info header")
    if not isinstance(sys_info, dict):
        raise CheckpointError(f"{path} is corrupt: sys_info is {_describe(sys_info)}")
    if sys_info.get("little_endian", True) is not True:
        raise CheckpointError(
            f"{path} was written on a big-endian machine; only little-endian checkpoints are "
            "supported"
        )

    roots: dict[str, tuple[np.dtype, int]] = {}

    def persistent_load(pid: Any) -> _StorageRef:
        _, storage_type, key, _location, numel, view = _check_pid(pid, 6)
        numel = _int(numel, "a storage size")
        dtype, root_numel = roots.setdefault(key, (storage_type.dtype, numel))
        if dtype != storage_type.dtype:
            raise _Malformed(f"storage {key!r} is used as both {dtype} and {storage_type.dtype}")
        if view is None:
            return _StorageRef(key, dtype, root_numel, 0)
        # storage views (torch < 0.4): a slice of the root storage, counted in elements
        if not isinstance(view, tuple) or len(view) != 3:
            raise _Malformed(f"storage view metadata {view!r} is not a 3-tuple")
        _view_key, offset, view_size = view
        return _StorageRef(
            key, dtype, _int(view_size, "a view size"), _int(offset, "a view offset")
        )

    obj = _unpickle(f, path, "the legacy data pickle", persistent_load)
    refs = _state_refs(obj, path)
    keys = _unpickle(f, path, "the legacy storage key list")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CheckpointError(f"{path} is corrupt: the storage key list is {_describe(keys)}")
    needed = {t.storage.key for t in refs.values()}
    data: dict[str, bytes] = {}
    for key in keys:
        if key not in roots:
            raise CheckpointError(
                f"{path} is corrupt: storage {key!r} is listed but never used by the pickle"
            )
        dtype, numel = roots[key]
        header = f.read(8)
        if len(header) < 8:
            raise CheckpointError(f"{path} is truncated: storage {key!r} missing")
        count = int.from_bytes(header, "little", signed=True)
        if count != numel:
            raise CheckpointError(
                f"{path} is corrupt: storage {key!r} holds {count} elements, the pickle says "
                f"{numel}"
            )
        nbytes = count * dtype.itemsize
        # compare with what is left before reading, so a bad count cannot trigger a huge read
        if nbytes > file_size - f.tell():
            raise CheckpointError(
                f"{path} is truncated: storage {key!r} needs {nbytes} bytes, "
                f"{file_size - f.tell()} are left"
            )
        if key in needed:
            data[key] = f.read(nbytes)
        else:
            f.seek(nbytes, io.SEEK_CUR)
    missing = sorted(needed - data.keys())
    if missing:
        raise CheckpointError(f"{path} is truncated: storage {missing[0]!r} missing")
    return {key: _materialize(t, data[t.storage.key], path, key) for key, t in refs.items()}


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict (zip or legacy format) into numpy arrays, never running code.

    Returns the tensors in file order, each a fresh C-contiguous array in its stored dtype
    (``bfloat16`` and float8 as ``ml_dtypes`` types), with storage offsets, strides and
    storages shared between tensors resolved.  A top-level ``{'state_dict': {...}, ...}``
    (a training checkpoint) is unwrapped one level; anything else that is not a dict of
    str -> tensor is a :class:`CheckpointError`.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        UnsafeCheckpointError: the pickle names a global outside the allowlist.
        CheckpointError: anything else wrong with the file; the message names it.
    """
    path_str = os.fspath(path)
    try:
        f = open(path_str, "rb")  # closed by the with below
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "PyTorch checkpoint not found", path_str) from None
    except IsADirectoryError:
        raise CheckpointError(f"{path_str} is a folder, not a PyTorch checkpoint file") from None
    with f:
        file_size = os.fstat(f.fileno()).st_size
        if file_size == 0:
            raise CheckpointError(f"{path_str} is empty (0 bytes)")
        head = f.read(512)
        f.seek(0)
        if head.startswith(b"PK"):
            return _read_zip(f, path_str)
        if head[257:262] == b"ustar":
            raise CheckpointError(
                f"{path_str} is a tar archive; torch's pre-0.4 tar checkpoint format is not "
                "supported (re-save it with a recent torch)"
            )
        if head.startswith(b"\x80"):  # pickle PROTO opcode: torch.save writes protocol >= 2
            return _read_legacy(f, path_str, file_size)
        raise CheckpointError(
            f"{path_str} is not a PyTorch checkpoint (no zip archive or legacy magic number)"
        )


# --------------------------------------------------------------------------------------------
# Writing

# numpy dtype -> torch typed storage class, in the order of _STORAGE_DTYPES
_WRITE_STORAGE_TYPES: tuple[tuple[np.dtype, str], ...] = tuple(
    (dtype, name) for name, dtype in _STORAGE_DTYPES.items()
)


def _storage_type_for(dtype: np.dtype) -> str | None:
    for candidate, name in _WRITE_STORAGE_TYPES:
        if dtype == candidate:
            return name
    return None


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    # torch's rule: a zero-length dim counts as 1 for the strides of the dims before it
    strides = []
    step = 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


class _Tensor(NamedTuple):
    name: str
    storage_type: str
    data: np.ndarray  # C-contiguous, native byte order


def _prepare(state: Mapping[str, Any]) -> list[_Tensor]:
    """Validate and convert everything before a file is touched."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping of str -> array, not {type(state).__name__}")
    tensors = []
    for name, value in state.items():
        if not isinstance(name, str):
            raise TypeError(f"state dict keys must be str, got {name!r}")
        array = np.asarray(value)  # also pulls jax arrays to the host
        if array.dtype.byteorder not in ("=", "|") and array.dtype.itemsize > 1:
            array = array.astype(array.dtype.newbyteorder("="))
        storage_type = _storage_type_for(array.dtype)
        if storage_type is None:
            raise TypeError(
                f"cannot write {name!r}: dtype {array.dtype} has no torch storage type "
                f"(supported: {', '.join(str(d) for d, _ in _WRITE_STORAGE_TYPES)})"
            )
        # not np.ascontiguousarray: it turns 0-d arrays into 1-d ones
        tensors.append(_Tensor(name, storage_type, np.asarray(array, order="C")))
    return tensors


class _PickleWriter:
    """Emits the few protocol-2 opcodes a state dict needs.

    By hand because the std pickler can only write a GLOBAL for an object it can import, and
    torch's classes are precisely what we do not import.  Only opcodes that torch's
    ``weights_only`` unpickler accepts are used.
    """

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")  # PROTO 2

    def global_(self, module: str, name: str) -> None:
        self.out += b"c" + module.encode("ascii") + b"\n" + name.encode("ascii") + b"\n"

    def string(self, value: str) -> None:
        data = value.encode("utf-8")
        self.out += b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE

    def integer(self, value: int) -> None:
        if 0 <= value < 0x100:
            self.out += b"K" + struct.pack("<B", value)  # BININT1
        elif 0 <= value < 0x10000:
            self.out += b"M" + struct.pack("<H", value)  # BININT2
        elif -(2**31) <= value < 2**31:
            self.out += b"J" + struct.pack("<i", value)  # BININT
        else:
            length = (value.bit_length() + 8) // 8  # room for the sign bit
            self.out += b"\x8a" + struct.pack("<B", length)  # LONG1
            self.out += value.to_bytes(length, "little", signed=True)

    def int_tuple(self, values: tuple[int, ...]) -> None:
        if len(values) > 3:
            self.out += b"("  # MARK
        for v in values:
            self.integer(v)
        self.out += (b")", b"\x85", b"\x86", b"\x87")[len(values)] if len(values) <= 3 else b"t"

    def empty_ordered_dict(self) -> None:
        self.global_("collections", "OrderedDict")
        self.out += b")R"  # EMPTY_TUPLE, REDUCE: OrderedDict()

    def tensor(self, storage_type: str, key: str, numel: int, shape: tuple[int, ...]) -> None:
        # _rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict()), with the storage
        # as persistent id ('storage', torch.<Type>Storage, key, 'cpu', numel)
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.out += b"(("  # MARK for the argument tuple, MARK for the persistent id
        self.string("storage")
        self.global_("torch", storage_type)
        self.string(key)
        self.string("cpu")
        self.integer(numel)
        self.out += b"tQ"  # TUPLE, BINPERSID
        self.integer(0)
        self.int_tuple(shape)
        self.int_tuple(_contiguous_strides(shape))
        self.out += b"\x89"  # NEWFALSE: requires_grad
        self.empty_ordered_dict()  # backward hooks
        self.out += b"tR"  # TUPLE, REDUCE

    def stop(self) -> bytes:
        self.out += b"."
        return bytes(self.out)


def _pickle_state(tensors: list[_Tensor]) -> bytes:
    writer = _PickleWriter()
    writer.empty_ordered_dict()
    for start in range(0, len(tensors), _SETITEMS_BATCH):
        writer.out += b"("  # MARK
        for index, tensor in enumerate(tensors[start : start + _SETITEMS_BATCH], start):
            writer.string(tensor.name)
            writer.tensor(tensor.storage_type, str(index), tensor.data.size, tensor.data.shape)
        writer.out += b"u"  # SETITEMS
    return writer.stop()


class _ZipWriter:
    """Writes a zip archive the way torch's miniz-based ``PyTorchStreamWriter`` does."""

    def __init__(self, f: IO[bytes], archive_name: str) -> None:
        self._f = f
        self._prefix = archive_name + "/"
        self._offset = 0
        self._central: list[bytes] = []
        self._digest = hashlib.sha256()

    def _write(self, data: bytes | memoryview) -> None:
        self._f.write(data)
        self._offset += len(data)

    def add(self, name: str, data: bytes | memoryview) -> None:
        raw_name = (self._prefix + name).encode("utf-8")
        size = len(data)
        crc = zlib.crc32(data)
        offset = self._offset
        big_size = size >= _ZIP64_LIMIT
        big_offset = offset >= _ZIP64_LIMIT
        fields = ([size, size] if big_size else []) + ([offset] if big_offset else [])
        zip64 = b""
        if fields:
            zip64 = struct.pack(f"<HH{len(fields)}Q", 0x0001, 8 * len(fields), *fields)
        # pad with an 'FB' extra field so the data starts on an alignment boundary; miniz
        # always writes that field, even when no padding is needed
        start = offset + 30 + len(raw_name) + len(zip64) + 4
        padding = -start % _ALIGNMENT
        extra = zip64 + b"FB" + struct.pack("<H", padding) + b"Z" * padding
        # bit 11: UTF-8 names; bit 3: sizes and CRC follow the data (miniz sets it only for
        # non-empty records, and torch's offset arithmetic relies on that)
        flags = 0x0800 | (0x0008 if size else 0)
        self._write(
            struct.pack(
                "<IHHHHHIIIHH", 0x04034B50, 0, flags, 0, 0, 0, 0, 0, 0, len(raw_name), len(extra)
            )
        )
        self._write(raw_name + extra)
        self._write(data)
        if size:
            if fields:
                self._write(struct.pack("<IIQQ", 0x08074B50, crc, size, size))
            else:
                self._write(struct.pack("<IIII", 0x08074B50, crc, size, size))
        central_extra = b""
        if fields:
            central_extra = struct.pack(f"<HH{len(fields)}Q", 0x0001, 8 * len(fields), *fields)
        self._central.append(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                0,  # version made by: what miniz writes
                45 if fields else 0,  # version needed: 4.5 for ZIP64 fields
                flags,
                0,  # stored
                0,  # time
                0,  # date
                crc,
                0xFFFFFFFF if big_size else size,
                0xFFFFFFFF if big_size else size,
                len(raw_name),
                len(central_extra),
                0,  # comment length
                0,  # disk
                0,  # internal attributes
                0,  # external attributes
                0xFFFFFFFF if big_offset else offset,
            )
            + raw_name
            + central_extra
        )
        self._digest.update(struct.pack("<IQ", crc, size))

    def serialization_id(self) -> str:
        """40 decimal digits like torch's, derived from the content so output is reproducible."""
        return f"{int.from_bytes(self._digest.digest()[:16], 'little'):040d}"[-40:]

    def finish(self) -> None:
        cd_offset = self._offset
        for entry in self._central:
            self._write(entry)
        cd_size = self._offset - cd_offset
        count = len(self._central)
        eocd64_offset = self._offset
        # torch always writes the ZIP64 end record and locator, then the classic one
        self._write(
            struct.pack(
                "<IQHHIIQQQQ",
                0x06064B50,
                44,
                0x031E,
                0x002D,
                0,
                0,
                count,
                count,
                cd_size,
                cd_offset,
            )
        )
        self._write(struct.pack("<IIQI", 0x07064B50, 0, eocd64_offset, 1))
        self._write(
            struct.pack(
                "<IHHHHIIH",
                0x06054B50,
                0,
                0,
                min(count, 0xFFFF),
                min(count, 0xFFFF),
                0xFFFFFFFF if cd_size >= _ZIP64_LIMIT else cd_size,
                0xFFFFFFFF if cd_offset >= _ZIP64_LIMIT else cd_offset,
                0,
            )
        )


def _archive_name(path: str) -> str:
    # torch names the archive folder after the file (basename up to the last dot), falling
    # back to "archive" where it writes through a stream (non-ASCII names)
    stem = os.path.basename(path).rpartition(".")[0] or os.path.basename(path)
    if stem and stem.isascii() and stem.isprintable() and "/" not in stem and "\\" not in stem:
        return stem
    return "archive"


def _file_mode(path: str) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)  # keep an existing file's permissions
    except OSError:
        # the only way to read the umask is to set it; the window is tiny, but it is
        # process-wide, so another thread creating a file right then would get umask 0
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _as_bytes(array: np.ndarray) -> memoryview:
    if sys.byteorder == "big" and array.dtype.itemsize > 1:  # pragma: no cover
        array = array.byteswap()  # torch's zip format is little-endian
    return memoryview(array.reshape(-1).view(np.uint8))


def write_state_dict(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Write ``state`` as a PyTorch zip checkpoint that ``torch.load(path, weights_only=True)``
    loads into a dict of tensors with the same values, dtypes and shapes.

    Values may be anything ``numpy.asarray`` accepts (jax arrays included) with dtype float64,
    float32, float16, bfloat16, int64, int32, int16, int8, uint8, bool, complex64 or
    complex128; each becomes a contiguous tensor with its own storage.  The file is written
    to a temporary file in the same folder and moved into place with ``os.replace``, so a
    crash never leaves a half-written checkpoint at ``path``.

    Raises:
        TypeError: a key is not a str or a dtype has no torch storage type (nothing written).
    """
    path_str = os.fspath(path)
    tensors = _prepare(state)
    folder = os.path.dirname(os.path.abspath(path_str))
    fd, tmp = tempfile.mkstemp(
        prefix="." + os.path.basename(path_str) + ".", suffix=".tmp", dir=folder
    )
    try:
        with os.fdopen(fd, "wb") as f:
            zip_writer = _ZipWriter(f, _archive_name(path_str))
            zip_writer.add("data.pkl", _pickle_state(tensors))
            # the same bookkeeping records torch 2.x writes, in its order
            zip_writer.add(".format_version", b"1")
            zip_writer.add(".storage_alignment", str(_ALIGNMENT).encode("ascii"))
            zip_writer.add("byteorder", b"little")
            for index, tensor in enumerate(tensors):
                zip_writer.add(f"data/{index}", _as_bytes(tensor.data))
            zip_writer.add("version", b"3\n")
            zip_writer.add(".data/serialization_id", zip_writer.serialization_id().encode())
            zip_writer.finish()
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(path_str))
        os.replace(tmp, path_str)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    # makes the rename itself durable; not possible on every platform, and not essential
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
