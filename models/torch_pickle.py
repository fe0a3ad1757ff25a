"""Read legacy (non-zip) PyTorch checkpoint files with the standard library and numpy only.

``torch.save`` wrote this format before PyTorch 1.6 (and still does with
``_use_new_zipfile_serialization=False``).  The file is a plain concatenation of pickles
followed by raw storage bytes:

1. pickle: the magic number ``0x1950a86a20f9469cfc6c``
2. pickle: the protocol version (``1001``)
3. pickle: ``sys_info`` (endianness and the sizes of C ``short``/``int``/``long``)
4. pickle: the object itself (typically an ``OrderedDict`` state dict).  Storages inside it
   are *persistent ids* ``('storage', StorageType, key, location, numel, view_metadata)``
   and tensors are built with ``torch._utils._rebuild_tensor_v2(storage, storage_offset,
   size, stride, requires_grad, backward_hooks[, metadata])``.
5. pickle: the list of storage keys, in the order their data follows.
6. for each key: a little-endian ``int64`` element count, then ``count * itemsize`` raw bytes.

Tensors can be *views* into a storage: a non-zero ``storage_offset`` and arbitrary
``stride`` (e.g. a transposed or channels-last weight).  We honour both with
``numpy.lib.stride_tricks.as_strided`` and then copy, so every returned array is a fresh,
C-contiguous ``numpy.ndarray`` with the logical shape PyTorch would report.

Only a small allow-list of globals is resolved while unpickling (``collections.OrderedDict``,
the tensor rebuild helpers and the storage classes); anything else raises
``pickle.UnpicklingError``, so loading a file never runs arbitrary code.

Usage::

    from torch_pickle import load
    state = load("model.pth")   # OrderedDict[str, numpy.ndarray]
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# torch storage class name -> numpy dtype (little-endian, as torch writes on x86/arm).
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),  # converted to float32 when tensors are built
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a ``torch.*Storage`` class found in the pickle."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]


@dataclass
class _Storage:
    """One storage: filled with its raw data after the main pickle has been read."""

    key: str
    stype: _StorageType
    numel: int
    data: np.ndarray | None = None


@dataclass
class _StorageView:
    """A legacy storage view: ``numel`` elements of ``base`` starting at ``offset``."""

    base: _Storage
    offset: int
    numel: int


@dataclass
class _LazyTensor:
    """A tensor whose storage bytes have not been read yet."""

    storage: _Storage | _StorageView
    storage_offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def materialize(self) -> np.ndarray:
        """Return a C-contiguous copy honouring ``storage_offset`` and ``stride``."""
        storage = self.storage
        base_offset = 0
        if isinstance(storage, _StorageView):
            base_offset = storage.offset
            storage = storage.base
        if storage.data is None:
            raise ValueError(f"storage {storage.key!r} has no data in the file")
        flat = storage.data
        start = base_offset + self.storage_offset
        if len(self.size) == 0:
            out = np.array(flat[start])
        else:
            if any(s == 0 for s in self.size):
                out = np.zeros(self.size, dtype=flat.dtype)
            else:
                # The furthest element this view touches must lie inside the storage.
                last = start + sum((n - 1) * st for n, st in zip(self.size, self.stride))
                if start < 0 or last >= flat.size or any(st < 0 for st in self.stride):
                    raise ValueError(
                        f"tensor view out of bounds: offset {start}, size {self.size}, "
                        f"stride {self.stride}, storage numel {flat.size}"
                    )
                item = flat.itemsize
                view = np.lib.stride_tricks.as_strided(
                    flat[start:],
                    shape=self.size,
                    strides=tuple(st * item for st in self.stride),
                    writeable=False,
                )
                out = np.ascontiguousarray(view).copy()
        if storage.stype.name == "BFloat16Storage":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """Replacement for ``torch._utils._rebuild_tensor_v2`` (storage data comes later)."""
    return _LazyTensor(storage, int(storage_offset), tuple(int(s) for s in size),
                       tuple(int(s) for s in stride))


def _rebuild_tensor(storage, storage_offset, size, stride):
    """Replacement for the older ``torch._utils._rebuild_tensor``."""
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *extra):
    """Replacement for ``torch._utils._rebuild_parameter``: a Parameter is its tensor."""
    return data


class _Unpickler(pickle.Unpickler):
    """Unpickler for the main object: allow-listed globals, storages as persistent ids."""

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, f: BinaryIO):
        super().__init__(f, encoding="latin1")
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, stype, key, _location, numel, view_metadata = pid
        if not isinstance(stype, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {stype!r}")
        storage = self.storages.get(key)
        if storage is None:
            storage = _Storage(str(key), stype, int(numel))
            self.storages[key] = storage
        if view_metadata is not None:
            _view_key, offset, view_numel = view_metadata
            return _StorageView(storage, int(offset), int(view_numel))
        return storage


class _PlainUnpickler(pickle.Unpickler):
    """Unpickler for the small header pickles: no globals at all."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in header")


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialize(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(v) for v in obj)
    return obj


def load(path: str) -> Any:
    """Load a legacy-format torch checkpoint; tensors become numpy arrays.

    Raises ``ValueError`` for zip-format checkpoints or a bad magic number/protocol.
    """
    with open(path, "rb") as f:
        head = f.read(4)
        if head.startswith(b"PK"):
            raise ValueError(f"{path}: zip-format checkpoint; only the legacy format is supported")
        f.seek(0)
        magic = _PlainUnpickler(f).load()
        if magic != MAGIC_NUMBER:
            raise ValueError(f"{path}: bad magic number {magic!r}")
        protocol = _PlainUnpickler(f).load()
        if protocol != PROTOCOL_VERSION:
            raise ValueError(f"{path}: unsupported protocol version {protocol!r}")
        sys_info = _PlainUnpickler(f).load()
        if not sys_info.get("little_endian", True):
            raise ValueError(f"{path}: big-endian checkpoints are not supported")

        unpickler = _Unpickler(f)
        result = unpickler.load()
        keys = _PlainUnpickler(f).load()

        for key in keys:
            storage = unpickler.storages.get(key)
            if storage is None:
                raise ValueError(f"{path}: storage {key!r} listed but never referenced")
            (count,) = struct.unpack("<q", f.read(8))
            if count != storage.numel:
                raise ValueError(
                    f"{path}: storage {key!r} has {count} elements, pickle said {storage.numel}"
                )
            dtype = storage.stype.dtype
            nbytes = count * dtype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise ValueError(f"{path}: truncated data for storage {key!r}")
            storage.data = np.frombuffer(raw, dtype=dtype)
    return _materialize(result)


if __name__ == "__main__":  # pragma: no cover - a debugging aid
    import sys

    state = load(sys.argv[1])
    for name, value in state.items():
        if isinstance(value, np.ndarray):
            print(f"{name:50s} {str(value.dtype):8s} {tuple(value.shape)}")
        else:
            print(f"{name:50s} {value!r}")
