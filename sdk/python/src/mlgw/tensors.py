"""Open Inference Protocol V2 tensors to and from numpy, pandas and nested lists."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._proto.mlgw.v1 import serving_pb2 as pb

# numpy dtype kind/size -> OIP datatype
_TO_OIP = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}
_FROM_OIP = {v: k for k, v in _TO_OIP.items()}


def as_array(x: Any) -> np.ndarray:
    """numpy arrays pass through; DataFrames and Series become their values; lists (nested
    or flat) and scalars become arrays."""
    if isinstance(x, np.ndarray):
        return x
    to_numpy = getattr(x, "to_numpy", None)
    if callable(to_numpy):  # pandas DataFrame or Series
        return np.asarray(to_numpy())
    return np.asarray(x)


def to_tensor(x: Any, name: str = "input-0") -> pb.InferTensor:
    arr = as_array(x)
    if arr.dtype.kind in ("U", "S", "O"):
        flat = [v if isinstance(v, bytes) else str(v).encode() for v in arr.ravel().tolist()]
        return pb.InferTensor(
            name=name, datatype="BYTES", shape=list(arr.shape), bytes_contents=flat
        )
    if arr.dtype not in _TO_OIP:
        raise TypeError(f"cannot send numpy dtype {arr.dtype} as a tensor")
    datatype = _TO_OIP[arr.dtype]
    t = pb.InferTensor(name=name, datatype=datatype, shape=list(arr.shape))
    flat = arr.ravel()
    kind = arr.dtype.kind
    if kind == "b":
        t.bool_contents.extend(flat.tolist())
    elif kind == "i":
        t.int64_contents.extend(flat.astype(np.int64).tolist())
    elif kind == "u":
        t.uint64_contents.extend(flat.astype(np.uint64).tolist())
    else:
        t.fp64_contents.extend(flat.astype(np.float64).tolist())
    return t


def from_tensor(t: pb.InferTensor) -> np.ndarray:
    shape = tuple(t.shape)
    if t.datatype == "BYTES":
        values = [b.decode(errors="replace") for b in t.bytes_contents]
        return np.asarray(values, dtype=object).reshape(shape)
    dtype = _FROM_OIP.get(t.datatype, np.dtype(np.float64))
    if t.bool_contents:
        data: Any = list(t.bool_contents)
    elif t.int64_contents:
        data = list(t.int64_contents)
    elif t.uint64_contents:
        data = list(t.uint64_contents)
    else:
        data = list(t.fp64_contents)
    return np.asarray(data, dtype=dtype).reshape(shape)
