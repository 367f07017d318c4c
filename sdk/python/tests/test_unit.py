"""Pure client-side behaviour: tensors, errors, addresses, generated stubs."""

from __future__ import annotations

import filecmp
import importlib.util
import sys
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest

import mlgw
from mlgw.client import _address
from mlgw.errors import field_of, from_rpc_error
from mlgw.tensors import from_tensor, to_tensor


@pytest.mark.parametrize(
    "dtype,datatype",
    [
        (np.bool_, "BOOL"),
        (np.int8, "INT8"),
        (np.int32, "INT32"),
        (np.int64, "INT64"),
        (np.uint8, "UINT8"),
        (np.uint64, "UINT64"),
        (np.float16, "FP16"),
        (np.float32, "FP32"),
        (np.float64, "FP64"),
    ],
)
def test_numpy_round_trips(dtype: type, datatype: str) -> None:
    arr = (
        (np.arange(6).reshape(2, 3) % 2 == 0)
        if dtype is np.bool_
        else np.arange(6, dtype=dtype).reshape(2, 3)
    )
    t = to_tensor(arr, "x")
    assert t.datatype == datatype
    assert list(t.shape) == [2, 3]
    back = from_tensor(t)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, arr)


def test_strings_are_bytes_tensors() -> None:
    t = to_tensor(np.array([["a", "b"]]))
    assert t.datatype == "BYTES"
    assert list(t.bytes_contents) == [b"a", b"b"]
    assert from_tensor(t).tolist() == [["a", "b"]]


def test_dataframes_and_lists() -> None:
    df = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    t = to_tensor(df)
    assert list(t.shape) == [2, 2]
    assert list(t.fp64_contents) == [1.0, 3.0, 2.0, 4.0]
    t = to_tensor([[1, 2, 3]])
    assert t.datatype == "INT64" and list(t.shape) == [1, 3]


def test_unsupported_dtype_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        to_tensor(np.array([1 + 2j]))


class FakeRpcError(grpc.RpcError):
    """A test double for a status the server sends; only the attributes the mapper reads."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple = ()) -> None:
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._trailers


def test_error_mapping() -> None:
    e = from_rpc_error(
        FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "spec.command: must not be empty")
    )
    assert isinstance(e, mlgw.InvalidSpec) and e.field == "spec.command"
    e = from_rpc_error(
        FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "x", (("mlgw-field", "spec.env.A"),))
    )
    assert e.field == "spec.env.A"
    for code, cls in [
        (grpc.StatusCode.NOT_FOUND, mlgw.NotFound),
        (grpc.StatusCode.PERMISSION_DENIED, mlgw.PermissionDenied),
        (grpc.StatusCode.UNAVAILABLE, mlgw.Unavailable),
        (grpc.StatusCode.UNIMPLEMENTED, mlgw.Unsupported),
        (grpc.StatusCode.DEADLINE_EXCEEDED, mlgw.Timeout),
        (grpc.StatusCode.INTERNAL, mlgw.MlgwError),
    ]:
        err = from_rpc_error(FakeRpcError(code, "why"))
        assert type(err) is cls and err.message == "why" and err.code == code
    assert field_of("no field here") == ""


def test_address_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLGW_SERVER", raising=False)
    assert _address(None) == "localhost:50051"
    monkeypatch.setenv("MLGW_SERVER", "http://gw:1234/")
    assert _address(None) == "gw:1234"
    assert _address("other:1") == "other:1"


def test_checked_in_stubs_are_fresh(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("gen_proto", root / "scripts" / "gen_proto.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    sys.modules["gen_proto"] = gen
    spec.loader.exec_module(gen)
    gen.generate(tmp_path)
    checked_in = root / "src" / "mlgw" / "_proto" / "mlgw" / "v1"
    fresh = tmp_path / "mlgw" / "v1"
    names = sorted(p.name for p in fresh.iterdir() if p.suffix in (".py", ".pyi"))
    assert names == sorted(p.name for p in checked_in.iterdir() if p.suffix in (".py", ".pyi"))
    _, mismatch, errors = filecmp.cmpfiles(fresh, checked_in, names, shallow=False)
    assert not mismatch and not errors, f"stale stubs: run scripts/gen_proto.py ({mismatch})"
