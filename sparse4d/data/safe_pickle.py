"""Restricted pickle loading for annotation files.

Annotation pickles come from other people and other machines; a plain `pickle.load` would run any code
they carry. Only what is needed to rebuild plain containers and numpy arrays is allowed; any other
global is refused before it is imported or called.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

from sparse4d.errors import DataError, InputFileError

PICKLE_PROTOCOL = 4  # fixed so that writing the same infos twice gives the same bytes

_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
    ("builtins", "bytearray"),
    ("_codecs", "encode"),  # protocol 2 stores bytes (array buffers) as latin-1 text: a pure data transform
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    *((module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")),
    *((module, "_frombuffer") for module in ("numpy.core.numeric", "numpy._core.numeric")),
    # dtype classes numpy 2 names when pickling dtypes, e.g. numpy.dtypes.Float32DType
    *(("numpy.dtypes", name) for name in (
        "BoolDType", "Int8DType", "UInt8DType", "Int16DType", "UInt16DType", "Int32DType", "UInt32DType",
        "Int64DType", "UInt64DType", "Float16DType", "Float32DType", "Float64DType", "StrDType", "BytesDType",
        "LongDType", "ULongDType", "LongLongDType", "ULongLongDType", "ByteDType", "UByteDType", "ShortDType",
        "UShortDType", "IntDType", "UIntDType", "HalfDType", "FloatDType", "DoubleDType")),
})


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, stream: io.BufferedIOBase, source: str) -> None:
        super().__init__(stream)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # protocol <= 2 spells builtins the Python 2 way
            module = "builtins"
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DataError(
                f"{self._source}: refused to load global '{module}.{name}'; annotation pickles may only hold "
                "plain containers and numpy arrays",
                hint="regenerate the file with `sparse4d dataset_convert`, and do not load pickles you do not trust",
            )
        return super().find_class(module, name)


def safe_loads(data: bytes, *, source: str = "<bytes>") -> Any:
    """Unpickle `data` allowing only containers and numpy arrays; `source` names it in errors."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source).load()
    except DataError:
        raise
    except Exception as error:  # truncated or garbage input
        raise DataError(f"{source}: not a readable annotation pickle ({type(error).__name__}: {error})") from error


def safe_load(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"annotation file {path} does not exist", hint="run `sparse4d dataset_convert` first")
    return safe_loads(path.read_bytes(), source=str(path))


def atomic_dump(obj: Any, path: Path) -> None:
    """Pickle `obj` to `path` via a temporary file in the same folder, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        pickle.dump(obj, handle, protocol=PICKLE_PROTOCOL)
    os.replace(tmp, path)
