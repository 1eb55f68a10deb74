# Generated from protos/distrl/v1 by `make proto`. Do not edit.
from distrl.proto.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ParamChunk(_message.Message):
    __slots__ = ("version", "name", "dtype", "shape", "offset", "data", "end_of_version", "metadata", "param_set")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    END_OF_VERSION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PARAM_SET_FIELD_NUMBER: _ClassVar[int]
    version: int
    name: str
    dtype: _tensor_pb2.DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    data: bytes
    end_of_version: bool
    metadata: _containers.ScalarMap[str, str]
    param_set: str
    def __init__(self, version: _Optional[int] = ..., name: _Optional[str] = ..., dtype: _Optional[_Union[_tensor_pb2.DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., end_of_version: _Optional[bool] = ..., metadata: _Optional[_Mapping[str, str]] = ..., param_set: _Optional[str] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("after_version", "param_set")
    AFTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARAM_SET_FIELD_NUMBER: _ClassVar[int]
    after_version: int
    param_set: str
    def __init__(self, after_version: _Optional[int] = ..., param_set: _Optional[str] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("min_version", "param_set")
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARAM_SET_FIELD_NUMBER: _ClassVar[int]
    min_version: int
    param_set: str
    def __init__(self, min_version: _Optional[int] = ..., param_set: _Optional[str] = ...) -> None: ...

class ParamsInfoRequest(_message.Message):
    __slots__ = ("param_set",)
    PARAM_SET_FIELD_NUMBER: _ClassVar[int]
    param_set: str
    def __init__(self, param_set: _Optional[str] = ...) -> None: ...

class ParamsInfoResponse(_message.Message):
    __slots__ = ("version", "num_tensors", "num_bytes", "subscribers", "publishes", "last_publish_unix_s", "names", "param_set", "sets")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_TENSORS_FIELD_NUMBER: _ClassVar[int]
    NUM_BYTES_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBERS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHES_FIELD_NUMBER: _ClassVar[int]
    LAST_PUBLISH_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    PARAM_SET_FIELD_NUMBER: _ClassVar[int]
    SETS_FIELD_NUMBER: _ClassVar[int]
    version: int
    num_tensors: int
    num_bytes: int
    subscribers: int
    publishes: int
    last_publish_unix_s: float
    names: _containers.RepeatedScalarFieldContainer[str]
    param_set: str
    sets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., num_tensors: _Optional[int] = ..., num_bytes: _Optional[int] = ..., subscribers: _Optional[int] = ..., publishes: _Optional[int] = ..., last_publish_unix_s: _Optional[float] = ..., names: _Optional[_Iterable[str]] = ..., param_set: _Optional[str] = ..., sets: _Optional[_Iterable[str]] = ...) -> None: ...
