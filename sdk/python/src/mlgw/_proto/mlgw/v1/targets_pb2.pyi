from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Feature(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURE_UNSPECIFIED: _ClassVar[Feature]
    FEATURE_TRAINING: _ClassVar[Feature]
    FEATURE_TRAINING_LOGS: _ClassVar[Feature]
    FEATURE_TRAINING_CANCEL: _ClassVar[Feature]
    FEATURE_SERVING: _ClassVar[Feature]
    FEATURE_SERVING_UPDATE: _ClassVar[Feature]
    FEATURE_CANARY: _ClassVar[Feature]
    FEATURE_TUNING: _ClassVar[Feature]
    FEATURE_BATCH: _ClassVar[Feature]

class TargetHealth(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TARGET_HEALTH_UNSPECIFIED: _ClassVar[TargetHealth]
    TARGET_HEALTH_HEALTHY: _ClassVar[TargetHealth]
    TARGET_HEALTH_UNHEALTHY: _ClassVar[TargetHealth]
FEATURE_UNSPECIFIED: Feature
FEATURE_TRAINING: Feature
FEATURE_TRAINING_LOGS: Feature
FEATURE_TRAINING_CANCEL: Feature
FEATURE_SERVING: Feature
FEATURE_SERVING_UPDATE: Feature
FEATURE_CANARY: Feature
FEATURE_TUNING: Feature
FEATURE_BATCH: Feature
TARGET_HEALTH_UNSPECIFIED: TargetHealth
TARGET_HEALTH_HEALTHY: TargetHealth
TARGET_HEALTH_UNHEALTHY: TargetHealth

class Target(_message.Message):
    __slots__ = ("name", "is_default", "plugin", "plugin_version", "description", "features", "grants", "health", "health_message")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    HEALTH_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    is_default: bool
    plugin: str
    plugin_version: str
    description: str
    features: _containers.RepeatedScalarFieldContainer[Feature]
    grants: _containers.RepeatedScalarFieldContainer[str]
    health: TargetHealth
    health_message: str
    def __init__(self, name: _Optional[str] = ..., is_default: _Optional[bool] = ..., plugin: _Optional[str] = ..., plugin_version: _Optional[str] = ..., description: _Optional[str] = ..., features: _Optional[_Iterable[_Union[Feature, str]]] = ..., grants: _Optional[_Iterable[str]] = ..., health: _Optional[_Union[TargetHealth, str]] = ..., health_message: _Optional[str] = ...) -> None: ...

class ListTargetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTargetsResponse(_message.Message):
    __slots__ = ("targets",)
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    targets: _containers.RepeatedCompositeFieldContainer[Target]
    def __init__(self, targets: _Optional[_Iterable[_Union[Target, _Mapping]]] = ...) -> None: ...

class GetTargetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
