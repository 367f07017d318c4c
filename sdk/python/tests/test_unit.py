"""Pure client-side behaviour (no gateway): tensors, errors, addresses, stubs, packaging."""

from __future__ import annotations

import filecmp
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest

import mlgw
from mlgw._proto.mlgw.v1 import serving_pb2, training_pb2
from mlgw.client import resolve_address
from mlgw.errors import field_of, from_rpc_error
from mlgw.tensors import decode_outputs, encode_inputs, from_tensor, to_tensor

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent

# -- tensors ------------------------------------------------------------------------------------

NUMERIC = [
    (np.bool_, "BOOL", "bool_contents"),
    (np.int8, "INT8", "int64_contents"),
    (np.int16, "INT16", "int64_contents"),
    (np.int32, "INT32", "int64_contents"),
    (np.int64, "INT64", "int64_contents"),
    (np.uint8, "UINT8", "uint64_contents"),
    (np.uint16, "UINT16", "uint64_contents"),
    (np.uint32, "UINT32", "uint64_contents"),
    (np.uint64, "UINT64", "uint64_contents"),
    (np.float16, "FP16", "fp64_contents"),
    (np.float32, "FP32", "fp64_contents"),
    (np.float64, "FP64", "fp64_contents"),
]


def sample(dtype: Any) -> np.ndarray[Any, Any]:
    if dtype is np.bool_:
        return np.array([[True, False, True], [False, False, True]])
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(dtype)
    return np.array([[info.min, 0, 1], [2, 3, info.max]], dtype=dtype)


@pytest.mark.parametrize("dtype,datatype,field", NUMERIC)
def test_numpy_round_trips(dtype: Any, datatype: str, field: str) -> None:
    arr = sample(dtype)
    t = to_tensor(arr, "x")
    assert (t.name, t.datatype, list(t.shape)) == ("x", datatype, [2, 3])
    assert len(getattr(t, field)) == 6
    # Only the datatype's own contents field is used.
    used = ["bool_contents", "int64_contents", "uint64_contents", "fp64_contents"]
    assert [f for f in used if getattr(t, f)] == [field]
    # Through the wire format too.
    wire = serving_pb2.InferTensor.FromString(t.SerializeToString())
    back = from_tensor(wire)
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3)
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize("order", ["C", "F"])
def test_row_major_order_whatever_the_memory_layout(order: str) -> None:
    arr = np.array(np.arange(24).reshape(2, 3, 4), order=order)  # type: ignore[call-overload]
    t = to_tensor(arr[:, ::2, :])  # non-contiguous view as well
    assert list(t.shape) == [2, 2, 4]
    assert list(t.int64_contents) == arr[:, ::2, :].ravel(order="C").tolist()
    np.testing.assert_array_equal(from_tensor(t), arr[:, ::2, :])


def test_non_native_byte_order() -> None:
    arr = np.array([1.5, -2.0], dtype=">f8")
    t = to_tensor(arr)
    assert t.datatype == "FP64" and list(t.fp64_contents) == [1.5, -2.0]


def test_special_floats_survive() -> None:
    arr = np.array([np.nan, np.inf, -np.inf, -0.0], dtype=np.float32)
    back = from_tensor(to_tensor(arr))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, arr)


def test_strings_and_bytes_are_bytes_tensors() -> None:
    t = to_tensor(np.array([["a", "é"]]))
    assert t.datatype == "BYTES" and list(t.shape) == [1, 2]
    assert list(t.bytes_contents) == [b"a", "é".encode()]
    back = from_tensor(t)
    assert back.dtype == object and back.tolist() == [["a", "é"]]
    t = to_tensor([b"\xff\x00", b"ok"])
    assert t.datatype == "BYTES"
    # Not UTF-8: stays bytes.
    assert from_tensor(t).tolist() == [b"\xff\x00", "ok"]
    assert to_tensor(np.array(["x", b"y"], dtype=object)).datatype == "BYTES"


def test_nested_lists() -> None:
    t = to_tensor([[1, 2, 3], [4, 5, 6]])
    assert t.datatype == "INT64" and list(t.shape) == [2, 3]
    assert list(t.int64_contents) == [1, 2, 3, 4, 5, 6]
    t = to_tensor([[1, 2.5]])
    assert t.datatype == "FP64" and list(t.fp64_contents) == [1.0, 2.5]
    t = to_tensor([[True], [False]])
    assert t.datatype == "BOOL" and list(t.shape) == [2, 1]
    assert to_tensor([["a", "b"]]).datatype == "BYTES"
    with pytest.raises(TypeError):
        to_tensor([[1, 2], [3]])  # ragged


def test_scalars_and_empty_tensors() -> None:
    t = to_tensor(3.5)
    assert list(t.shape) == [1] and list(t.fp64_contents) == [3.5]
    t = to_tensor(np.zeros((0, 4), dtype=np.float32))
    assert list(t.shape) == [0, 4]
    assert from_tensor(t).shape == (0, 4)


def test_numeric_dataframes_are_one_tensor() -> None:
    df = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    inputs, params = encode_inputs(df)
    assert params == {} and len(inputs) == 1
    (t,) = inputs
    assert (t.name, t.datatype, list(t.shape)) == ("input-0", "FP64", [2, 2])
    assert list(t.fp64_contents) == [1.0, 3.0, 2.0, 4.0]  # row-major
    # ints and floats mix to FP64; ints alone stay INT64; float32 stays FP32.
    assert encode_inputs(pd.DataFrame({"a": [1, 2], "b": [0.5, 1]}))[0][0].datatype == "FP64"
    assert encode_inputs(pd.DataFrame({"a": [1, 2], "b": [3, 4]}))[0][0].datatype == "INT64"
    df32 = pd.DataFrame({"a": np.array([1, 2], dtype=np.float32)})
    assert encode_inputs(df32)[0][0].datatype == "FP32"
    # bool and float columns: numbers, not strings.
    mixed = encode_inputs(pd.DataFrame({"a": [True, False], "b": [0.5, 1.5]}))[0][0]
    assert mixed.datatype == "FP64" and list(mixed.fp64_contents) == [1.0, 0.5, 0.0, 1.5]


def test_mixed_dataframes_are_one_tensor_per_column() -> None:
    df = pd.DataFrame({"colour": ["red", "blue"], "size": [1.5, 2.5], "n": [1, 2]})
    inputs, params = encode_inputs(df)
    assert params == {"content_type": "pd"}
    assert [(t.name, t.datatype, list(t.shape)) for t in inputs] == [
        ("colour", "BYTES", [2]),
        ("size", "FP64", [2]),
        ("n", "INT64", [2]),
    ]
    assert list(inputs[0].bytes_contents) == [b"red", b"blue"]
    cat = pd.DataFrame({"c": pd.Categorical(["x", "y"]), "v": [1.0, 2.0]})
    inputs, params = encode_inputs(cat)
    assert params == {"content_type": "pd"} and inputs[0].datatype == "BYTES"


def test_series_mappings_and_names() -> None:
    t = to_tensor(pd.Series([1.0, 2.0, 3.0]), "s")
    assert (t.name, t.datatype, list(t.shape)) == ("s", "FP64", [3])
    inputs, params = encode_inputs({"a": [1, 2], "b": np.array(["x"])})
    assert [(t.name, t.datatype) for t in inputs] == [("a", "INT64"), ("b", "BYTES")]
    assert params == {}
    inputs, _ = encode_inputs(np.ones((1, 2)), "features")
    assert inputs[0].name == "features"


@pytest.mark.parametrize(
    "x",
    [
        np.array([1 + 2j]),
        np.array(["2024-01-01"], dtype="datetime64[D]"),
        np.array([1, "a"], dtype=object),
        np.array([{"a": 1}], dtype=object),
    ],
)
def test_unsendable_data_is_a_type_error(x: Any) -> None:
    with pytest.raises(TypeError):
        to_tensor(x)


def test_decoding_is_by_datatype_and_checks_the_shape() -> None:
    t = serving_pb2.InferTensor(name="y", datatype="INT32", shape=[2], int64_contents=[7, -1])
    out = from_tensor(t)
    assert out.dtype == np.int32 and out.tolist() == [7, -1]
    # Lenient: a server that put INT32 values in fp64_contents is still understood.
    t = serving_pb2.InferTensor(name="y", datatype="INT32", shape=[2], fp64_contents=[7, -1])
    assert from_tensor(t).tolist() == [7, -1]
    with pytest.raises(ValueError, match="shape"):
        from_tensor(serving_pb2.InferTensor(datatype="FP64", shape=[3], fp64_contents=[1.0]))
    with pytest.raises(ValueError, match="datatype"):
        from_tensor(serving_pb2.InferTensor(datatype="COMPLEX", shape=[0]))
    outs = [
        serving_pb2.InferTensor(name="label", datatype="BYTES", shape=[1], bytes_contents=[b"a"]),
        serving_pb2.InferTensor(name="p", datatype="FP32", shape=[1, 2], fp64_contents=[0.25, 1]),
    ]
    decoded = decode_outputs(outs)
    assert list(decoded) == ["label", "p"]
    assert decoded["p"].dtype == np.float32 and decoded["p"].shape == (1, 2)


# -- errors -------------------------------------------------------------------------------------


class FakeRpcError(grpc.RpcError):
    """A status as grpc reports it (a grpc.Call): code, details, trailing metadata."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple[Any, ...] = ()) -> None:
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[Any, ...]:
        return self._trailers


@pytest.mark.parametrize(
    "code,cls",
    [
        (grpc.StatusCode.INVALID_ARGUMENT, mlgw.InvalidSpec),
        (grpc.StatusCode.NOT_FOUND, mlgw.NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, mlgw.AlreadyExists),
        (grpc.StatusCode.PERMISSION_DENIED, mlgw.PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, mlgw.Unauthenticated),
        (grpc.StatusCode.FAILED_PRECONDITION, mlgw.FailedPrecondition),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, mlgw.ResourceExhausted),
        (grpc.StatusCode.UNAVAILABLE, mlgw.Unavailable),
        (grpc.StatusCode.UNIMPLEMENTED, mlgw.Unsupported),
        (grpc.StatusCode.DEADLINE_EXCEEDED, mlgw.Timeout),
        (grpc.StatusCode.INTERNAL, mlgw.MlgwError),
        (grpc.StatusCode.ABORTED, mlgw.MlgwError),
        (grpc.StatusCode.UNKNOWN, mlgw.MlgwError),
        (grpc.StatusCode.CANCELLED, mlgw.MlgwError),
    ],
)
def test_status_codes_map_to_typed_errors(code: grpc.StatusCode, cls: type) -> None:
    err = from_rpc_error(FakeRpcError(code, "why it failed"))
    assert type(err) is cls and isinstance(err, mlgw.MlgwError)
    assert not isinstance(err, grpc.RpcError)
    assert err.message == "why it failed" and str(err) == "why it failed" and err.code == code
    assert code.name in repr(err)


def test_timeout_is_a_builtin_timeout_error() -> None:
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed"))
    with pytest.raises(TimeoutError) as caught:
        raise err
    assert caught.value is err and isinstance(err, mlgw.MlgwError)
    assert err.message == "deadline passed" and str(err) == "deadline passed"
    assert err.code == grpc.StatusCode.DEADLINE_EXCEEDED and err.args == ("deadline passed",)
    # Raised by the client itself (wait, wait_ready): the same two ways to catch it.
    local = mlgw.Timeout("job j-1 is still running after 1.5 s")
    assert isinstance(local, TimeoutError) and isinstance(local, mlgw.MlgwError)
    assert str(local) == local.message and local.code is None
    assert repr(local) == "Timeout('job j-1 is still running after 1.5 s', code=None)"


def test_unauthenticated_is_a_permission_error() -> None:
    assert issubclass(mlgw.Unauthenticated, mlgw.PermissionDenied)
    assert issubclass(mlgw.JobCancelled, mlgw.JobFailed)


def test_invalid_spec_field_from_the_message() -> None:
    e = from_rpc_error(
        FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "spec.command: must not be empty")
    )
    assert isinstance(e, mlgw.InvalidSpec)
    assert e.field == "spec.command" and e.message == "spec.command: must not be empty"
    for message, field in [
        ("spec.env.1X: not a valid name", "spec.env.1X"),
        ("spec.inputs.1.name: clashes: with another", "spec.inputs.1.name"),
        ("id: must not be empty", "id"),
        ("model server rejected the request (400): bad shape", ""),
        ("no field here", ""),
        ("spec.name:no space after the colon", ""),
    ]:
        assert field_of(message) == field, message


def test_invalid_spec_field_from_the_trailer_wins() -> None:
    e = from_rpc_error(
        FakeRpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.resources: the local target has no GPUs",
            (("other", "x"), ("mlgw-field", "spec.resources.gpus")),
        )
    )
    assert isinstance(e, mlgw.InvalidSpec) and e.field == "spec.resources.gpus"
    assert field_of("x", [("mlgw-field", b"spec.name")]) == "spec.name"


def test_a_status_without_details_still_has_a_message() -> None:
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, ""))
    assert isinstance(err, mlgw.Unavailable) and err.message == "UNAVAILABLE"


def test_job_failed_carries_the_reason() -> None:
    job = mlgw.Job(None, training_pb2.Job(id="j-1", state=training_pb2.JOB_STATE_FAILED))  # type: ignore[arg-type]
    e = mlgw.JobFailed(job, "exit code 3")
    assert e.reason == "exit code 3" and e.job is job and e.code is None
    assert str(e) == "job j-1 failed: exit code 3"


# -- client construction (no calls are made) ----------------------------------------------------


def test_address_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLGW_SERVER", raising=False)
    assert resolve_address(None) == ("localhost:50051", False)
    assert resolve_address("gw:1") == ("gw:1", False)
    monkeypatch.setenv("MLGW_SERVER", "http://gw:1234/")
    assert resolve_address(None) == ("gw:1234", False)
    assert resolve_address("other:1") == ("other:1", False)  # the argument wins
    assert resolve_address("https://mlgw.example.com") == ("mlgw.example.com:443", True)
    assert resolve_address("https://mlgw.example.com:8443/x") == ("mlgw.example.com:8443", True)
    assert resolve_address("http://[::1]:50051") == ("[::1]:50051", False)
    monkeypatch.setenv("MLGW_SERVER", "")
    assert resolve_address(None) == ("localhost:50051", False)


def test_client_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLGW_SERVER", raising=False)
    monkeypatch.delenv("MLGW_TOKEN", raising=False)
    with mlgw.Client() as c:
        assert c.address == "localhost:50051" and not c.tls and c._metadata == ()
    with mlgw.Client("https://gw.example:443", token="t0k") as c:
        assert c.tls and c._metadata == (("authorization", "Bearer t0k"),)
        assert repr(c) == "mlgw.Client('gw.example:443', tls=True)"
    with mlgw.Client("gw:1", tls=True, root_certificates=b"") as c:
        assert c.tls
    monkeypatch.setenv("MLGW_TOKEN", "from-env")
    with mlgw.Client("gw:1") as c:
        assert c._metadata == (("authorization", "Bearer from-env"),)


def test_arguments_are_checked_before_sending() -> None:
    with mlgw.Client("127.0.0.1:1") as c:
        with pytest.raises(mlgw.InvalidSpec) as e:
            c.train(["x"], nodes=-2)
        assert e.value.field == "spec.resources.nodes" and e.value.code is None
        with pytest.raises(mlgw.InvalidSpec):
            c.deploy("file:///m", model_format="sklearn", name="m", canary_percent=101)
        with pytest.raises(ValueError):
            c.jobs(state="finished")


def test_public_api() -> None:
    for name in mlgw.__all__:
        assert hasattr(mlgw, name), name
    assert (ROOT / "src" / "mlgw" / "py.typed").is_file()
    assert mlgw.Target.__dataclass_fields__  # a plain dataclass


# -- generated code and packaging ---------------------------------------------------------------


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    sys.modules["gen_proto"] = gen
    spec.loader.exec_module(gen)
    return gen


def test_checked_in_stubs_are_fresh(tmp_path: Path) -> None:
    """Regenerates from proto/ and compares: fails when the proto changed (or grpcio-tools
    differs from the pinned one) and the stubs were not regenerated."""
    _load_generator().generate(tmp_path)
    checked_in = ROOT / "src" / "mlgw" / "_proto"
    fresh_files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    checked_files = sorted(
        p.relative_to(checked_in) for p in checked_in.rglob("*.py*") if "__pycache__" not in p.parts
    )
    assert fresh_files == checked_files, "stale stubs: run python scripts/gen_proto.py"
    stale = [
        str(p) for p in fresh_files if not filecmp.cmp(tmp_path / p, checked_in / p, shallow=False)
    ]
    assert not stale, f"stale stubs {stale}: run python scripts/gen_proto.py"


def test_dependency_floors_match_the_generated_code() -> None:
    """The stubs refuse to import on an older grpcio/protobuf than generated them, so the
    package must not claim to work with one."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0]: d for d in meta["project"]["dependencies"]}
    grpc_stub = (ROOT / "src/mlgw/_proto/mlgw/v1/training_pb2_grpc.py").read_text()
    grpc_version = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_stub)
    pb_stub = (ROOT / "src/mlgw/_proto/mlgw/v1/training_pb2.py").read_text()
    pb_version = re.search(r"Protobuf Python Version: ([\d.]+)", pb_stub)
    assert grpc_version and pb_version
    assert f">={grpc_version[1]}" in deps["grpcio"], deps["grpcio"]
    major = pb_version[1].split(".")[0]
    assert f">={pb_version[1]}" in deps["protobuf"] and f"<{int(major) + 1}" in deps["protobuf"]
    tools = [d for d in meta["project"]["optional-dependencies"]["dev"] if "grpcio-tools" in d]
    assert tools == [f"grpcio-tools=={grpc_version[1]}"]
