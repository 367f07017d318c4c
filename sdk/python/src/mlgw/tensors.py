"""Open Inference Protocol V2 tensors to and from numpy arrays, pandas objects and lists.

Datatypes map both ways:

=========================  ==========  ===========================
numpy dtype                OIP         proto contents field
=========================  ==========  ===========================
bool                       BOOL        ``bool_contents``
int8/16/32/64              INT8..64    ``int64_contents``
uint8/16/32/64             UINT8..64   ``uint64_contents``
float16/32/64              FP16/32/64  ``fp64_contents``
str, bytes (or objects     BYTES       ``bytes_contents`` (UTF-8)
of them)
=========================  ==========  ===========================

Tensors are flattened in row-major (C) order. BYTES tensors come back as ``object`` arrays of
``str`` (``bytes`` where an element is not valid UTF-8).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._proto.mlgw.v1 import serving_pb2 as pb

__all__ = ["decode_outputs", "encode_inputs", "from_tensor", "to_tensor"]

_BY_KIND_SIZE: dict[tuple[str, int], str] = {
    ("b", 1): "BOOL",
    ("i", 1): "INT8",
    ("i", 2): "INT16",
    ("i", 4): "INT32",
    ("i", 8): "INT64",
    ("u", 1): "UINT8",
    ("u", 2): "UINT16",
    ("u", 4): "UINT32",
    ("u", 8): "UINT64",
    ("f", 2): "FP16",
    ("f", 4): "FP32",
    ("f", 8): "FP64",
}

_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

_CONTENTS = {
    "BOOL": "bool_contents",
    "BYTES": "bytes_contents",
    **{f"INT{n}": "int64_contents" for n in (8, 16, 32, 64)},
    **{f"UINT{n}": "uint64_contents" for n in (8, 16, 32, 64)},
    **{f"FP{n}": "fp64_contents" for n in (16, 32, 64)},
}

#: Request parameter MLServer reads to decode the inputs as a pandas DataFrame.
PANDAS_CONTENT_TYPE = {"content_type": "pd"}


def _is_dataframe(x: Any) -> bool:
    return type(x).__name__ == "DataFrame" and hasattr(x, "columns") and hasattr(x, "dtypes")


def _is_series(x: Any) -> bool:
    return type(x).__name__ == "Series" and hasattr(x, "dtype") and hasattr(x, "to_numpy")


def _as_array(x: Any) -> np.ndarray[Any, Any]:
    if isinstance(x, np.ndarray):
        return x
    if _is_series(x) or _is_dataframe(x):
        return np.asarray(x.to_numpy())
    try:
        arr = np.asarray(x)
    except ValueError as e:  # ragged nested lists
        raise TypeError(f"cannot send this as a tensor: {e}") from None
    if arr.dtype.kind in ("S", "U"):
        # numpy's fixed-width strings drop trailing NULs: keep the Python objects instead.
        arr = np.array(x, dtype=object)
    return arr


def _strings(arr: np.ndarray[Any, Any]) -> list[bytes] | None:
    """The elements as UTF-8 bytes if they are all strings/bytes, else None."""
    out = []
    for v in arr.ravel().tolist():
        if isinstance(v, bytes):
            out.append(v)
        elif isinstance(v, str):
            out.append(v.encode())
        else:
            return None
    return out


def to_tensor(x: Any, name: str = "input-0") -> pb.InferTensor:
    """One tensor from a numpy array, pandas Series or DataFrame, nested list or scalar.

    A scalar is sent with shape ``[1]``. Raises ``TypeError`` for data that has no OIP
    datatype (complex numbers, datetimes, ragged lists, mixed objects)."""
    arr = _as_array(x)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    shape = list(arr.shape)
    kind = arr.dtype.kind
    if kind in ("U", "S", "O"):
        flat = _strings(arr)
        if flat is None and kind == "O":
            # Objects that are really numbers (e.g. a DataFrame column of Python ints).
            try:
                retyped = np.asarray(arr.tolist())
            except ValueError:
                retyped = arr
            if retyped.dtype.kind in "biuf":
                return to_tensor(retyped, name)
        if flat is None:
            raise TypeError(
                "cannot send an object array as a tensor: elements must all be numbers or all "
                "be strings/bytes"
            )
        return pb.InferTensor(name=name, datatype="BYTES", shape=shape, bytes_contents=flat)
    datatype = _BY_KIND_SIZE.get((kind, arr.dtype.itemsize))
    if datatype is None:
        raise TypeError(f"numpy dtype {arr.dtype} has no Open Inference Protocol datatype")
    t = pb.InferTensor(name=name, datatype=datatype, shape=shape)
    values = arr.ravel(order="C")
    if kind == "b":
        t.bool_contents.extend(values.tolist())
    elif kind == "i":
        t.int64_contents.extend(values.astype(np.int64).tolist())
    elif kind == "u":
        t.uint64_contents.extend(values.astype(np.uint64).tolist())
    else:
        t.fp64_contents.extend(values.astype(np.float64).tolist())
    return t


def encode_inputs(x: Any, name: str = "input-0") -> tuple[list[pb.InferTensor], dict[str, str]]:
    """The request's input tensors and request parameters for ``x``.

    - a mapping of names to arrays: one tensor each;
    - a DataFrame whose columns are all numeric or boolean: one 2-D tensor (what scikit-learn
      style models take);
    - any other DataFrame: one tensor per column, named after it, with the request parameter
      ``content_type=pd`` so MLServer hands the model a DataFrame;
    - anything else: one tensor named ``name``.
    """
    if isinstance(x, Mapping):
        return [to_tensor(v, str(k)) for k, v in x.items()], {}
    if _is_dataframe(x):
        if all(dt.kind in "biuf" for dt in (np.dtype(d) for d in _numpy_dtypes(x))):
            return [to_tensor(x.to_numpy(), name)], {}
        return [to_tensor(x[c], str(c)) for c in x.columns], dict(PANDAS_CONTENT_TYPE)
    return [to_tensor(x, name)], {}


def _numpy_dtypes(df: Any) -> list[Any]:
    out = []
    for d in df.dtypes:
        try:
            out.append(np.dtype(d))
        except TypeError:  # a pandas extension dtype (category, nullable Int64, string)
            out.append(np.dtype(object))
    return out


def from_tensor(t: pb.InferTensor) -> np.ndarray[Any, Any]:
    """A numpy array of the tensor's datatype and shape."""
    shape = tuple(int(d) for d in t.shape)
    datatype = t.datatype.upper()
    field = _CONTENTS.get(datatype)
    if field is None:
        raise ValueError(f"tensor {t.name!r} has an unknown datatype {t.datatype!r}")
    values: Any = getattr(t, field)
    if not values:
        # Be lenient with servers that put values in another contents field.
        for other in ("fp64_contents", "int64_contents", "uint64_contents", "bool_contents"):
            if other != field and getattr(t, other):
                values = getattr(t, other)
                break
    count = math.prod(shape)
    if len(values) != count:
        raise ValueError(
            f"tensor {t.name!r} has {len(values)} values but its shape {list(shape)} needs {count}"
        )
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        for i, b in enumerate(values):
            try:
                out[i] = b.decode("utf-8")
            except UnicodeDecodeError:
                out[i] = b
        return out.reshape(shape)
    return np.asarray(list(values), dtype=_DTYPES[datatype]).reshape(shape)


def decode_outputs(outputs: Any) -> dict[str, np.ndarray[Any, Any]]:
    """Output tensors by name, in the server's order."""
    return {t.name: from_tensor(t) for t in outputs}
