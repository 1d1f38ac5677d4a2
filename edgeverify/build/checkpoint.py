"""Read a PyTorch ``state_dict`` checkpoint (zip of a pickle + raw storages) into numpy, without torch.

torch.save writes ``<name>/data.pkl`` whose tensors are persistent references to ``<name>/data/<key>``
storages rebuilt by ``torch._utils._rebuild_tensor_v2``. We resolve exactly those references and refuse any
other global, so a crafted checkpoint cannot execute code while we read it.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np

from ..errors import ModelError

# torch storage class names -> numpy dtypes (little-endian, as torch writes them on every platform we target)
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, dtype: Any) -> None:
        self.dtype = np.dtype(dtype).newbyteorder("<")


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
    if not size:
        return storage[offset : offset + 1].reshape(()).copy()
    itemsize = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.ascontiguousarray(view).astype(storage.dtype.newbyteorder("="), copy=False)


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._storages: Dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise ModelError(f"checkpoint refers to {module}.{name}: not a plain tensor state_dict")

    def persistent_load(self, pid: Any) -> np.ndarray:
        # ('storage', storage_type, key, location, numel)
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise ModelError(f"unsupported persistent id in checkpoint: {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}/data/{key}")
            self._storages[key] = np.frombuffer(raw, dtype=storage_type.dtype)
        return self._storages[key]


def sha256_file(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """Tensors of a torch.save'd state_dict as numpy arrays, keyed as in the checkpoint."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path}: not a readable torch checkpoint ({exc})") from exc
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ModelError(f"{path}: expected one data.pkl in the checkpoint, found {len(pickles)}")
        prefix = pickles[0][: -len("/data.pkl")]
        state = _StateDictUnpickler(archive.read(pickles[0]), archive, prefix).load()
    if not isinstance(state, dict):
        raise ModelError(f"{path}: checkpoint holds {type(state).__name__}, not a state_dict")
    return {str(k): np.asarray(v) for k, v in state.items()}
