from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Resources(_message.Message):
    __slots__ = ("cpu", "memory", "gpus", "gpu_type", "instance_type", "nodes")
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    GPU_TYPE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    cpu: str
    memory: str
    gpus: int
    gpu_type: str
    instance_type: str
    nodes: int
    def __init__(self, cpu: _Optional[str] = ..., memory: _Optional[str] = ..., gpus: _Optional[int] = ..., gpu_type: _Optional[str] = ..., instance_type: _Optional[str] = ..., nodes: _Optional[int] = ...) -> None: ...
