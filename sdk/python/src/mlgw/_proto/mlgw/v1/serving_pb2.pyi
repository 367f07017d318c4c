import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from mlgw._proto.mlgw.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EndpointState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENDPOINT_STATE_UNSPECIFIED: _ClassVar[EndpointState]
    ENDPOINT_STATE_CREATING: _ClassVar[EndpointState]
    ENDPOINT_STATE_READY: _ClassVar[EndpointState]
    ENDPOINT_STATE_UPDATING: _ClassVar[EndpointState]
    ENDPOINT_STATE_FAILED: _ClassVar[EndpointState]
    ENDPOINT_STATE_DELETED: _ClassVar[EndpointState]
    ENDPOINT_STATE_DEGRADED: _ClassVar[EndpointState]
ENDPOINT_STATE_UNSPECIFIED: EndpointState
ENDPOINT_STATE_CREATING: EndpointState
ENDPOINT_STATE_READY: EndpointState
ENDPOINT_STATE_UPDATING: EndpointState
ENDPOINT_STATE_FAILED: EndpointState
ENDPOINT_STATE_DELETED: EndpointState
ENDPOINT_STATE_DEGRADED: EndpointState

class EndpointSpec(_message.Message):
    __slots__ = ("name", "model_uri", "model_format", "runtime", "image", "resources", "min_replicas", "max_replicas", "canary_percent")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_URI_FIELD_NUMBER: _ClassVar[int]
    MODEL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    MIN_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_uri: str
    model_format: str
    runtime: str
    image: str
    resources: _common_pb2.Resources
    min_replicas: int
    max_replicas: int
    canary_percent: int
    def __init__(self, name: _Optional[str] = ..., model_uri: _Optional[str] = ..., model_format: _Optional[str] = ..., runtime: _Optional[str] = ..., image: _Optional[str] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., min_replicas: _Optional[int] = ..., max_replicas: _Optional[int] = ..., canary_percent: _Optional[int] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("id", "target", "spec", "state", "message", "backend_state", "backend_ref", "url", "created_at", "updated_at", "tenant")
    ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_STATE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_REF_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    id: str
    target: str
    spec: EndpointSpec
    state: EndpointState
    message: str
    backend_state: str
    backend_ref: str
    url: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    tenant: str
    def __init__(self, id: _Optional[str] = ..., target: _Optional[str] = ..., spec: _Optional[_Union[EndpointSpec, _Mapping]] = ..., state: _Optional[_Union[EndpointState, str]] = ..., message: _Optional[str] = ..., backend_state: _Optional[str] = ..., backend_ref: _Optional[str] = ..., url: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tenant: _Optional[str] = ...) -> None: ...

class DeployRequest(_message.Message):
    __slots__ = ("target", "spec", "idempotency_key")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    target: str
    spec: EndpointSpec
    idempotency_key: str
    def __init__(self, target: _Optional[str] = ..., spec: _Optional[_Union[EndpointSpec, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class GetEndpointRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListEndpointsRequest(_message.Message):
    __slots__ = ("target", "state", "page_size", "page_token", "include_deleted")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DELETED_FIELD_NUMBER: _ClassVar[int]
    target: str
    state: EndpointState
    page_size: int
    page_token: str
    include_deleted: bool
    def __init__(self, target: _Optional[str] = ..., state: _Optional[_Union[EndpointState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_deleted: _Optional[bool] = ...) -> None: ...

class ListEndpointsResponse(_message.Message):
    __slots__ = ("endpoints", "next_page_token")
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    next_page_token: str
    def __init__(self, endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateEndpointRequest(_message.Message):
    __slots__ = ("id", "spec")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: EndpointSpec
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[EndpointSpec, _Mapping]] = ...) -> None: ...

class DeleteEndpointRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class InferTensor(_message.Message):
    __slots__ = ("name", "datatype", "shape", "parameters", "bool_contents", "int64_contents", "uint64_contents", "fp64_contents", "bytes_contents")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    BOOL_CONTENTS_FIELD_NUMBER: _ClassVar[int]
    INT64_CONTENTS_FIELD_NUMBER: _ClassVar[int]
    UINT64_CONTENTS_FIELD_NUMBER: _ClassVar[int]
    FP64_CONTENTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_CONTENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    parameters: _containers.ScalarMap[str, str]
    bool_contents: _containers.RepeatedScalarFieldContainer[bool]
    int64_contents: _containers.RepeatedScalarFieldContainer[int]
    uint64_contents: _containers.RepeatedScalarFieldContainer[int]
    fp64_contents: _containers.RepeatedScalarFieldContainer[float]
    bytes_contents: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., parameters: _Optional[_Mapping[str, str]] = ..., bool_contents: _Optional[_Iterable[bool]] = ..., int64_contents: _Optional[_Iterable[int]] = ..., uint64_contents: _Optional[_Iterable[int]] = ..., fp64_contents: _Optional[_Iterable[float]] = ..., bytes_contents: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("endpoint", "inputs", "outputs", "request_id", "parameters")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    inputs: _containers.RepeatedCompositeFieldContainer[InferTensor]
    outputs: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    parameters: _containers.ScalarMap[str, str]
    def __init__(self, endpoint: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[InferTensor, _Mapping]]] = ..., outputs: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "outputs", "request_id")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    outputs: _containers.RepeatedCompositeFieldContainer[InferTensor]
    request_id: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[InferTensor, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...
