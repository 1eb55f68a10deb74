# Generated from protos/distrl/v1 by `make proto`. Do not edit.
from distrl.proto.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TransitionBatch(_message.Message):
    __slots__ = ("table", "actor_id", "sequence", "policy_version", "fields", "rows", "layout", "incarnation")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    TABLE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    table: str
    actor_id: str
    sequence: int
    policy_version: int
    fields: _containers.MessageMap[str, _tensor_pb2.Tensor]
    rows: _tensor_pb2.Tensor
    layout: RowLayout
    incarnation: bytes
    def __init__(self, table: _Optional[str] = ..., actor_id: _Optional[str] = ..., sequence: _Optional[int] = ..., policy_version: _Optional[int] = ..., fields: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., rows: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., layout: _Optional[_Union[RowLayout, _Mapping]] = ..., incarnation: _Optional[bytes] = ...) -> None: ...

class RowLayout(_message.Message):
    __slots__ = ("row_bytes", "columns")
    ROW_BYTES_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    row_bytes: int
    columns: _containers.RepeatedCompositeFieldContainer[RowColumn]
    def __init__(self, row_bytes: _Optional[int] = ..., columns: _Optional[_Iterable[_Union[RowColumn, _Mapping]]] = ...) -> None: ...

class RowColumn(_message.Message):
    __slots__ = ("name", "dtype", "shape", "offset")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: _tensor_pb2.DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[_tensor_pb2.DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ...) -> None: ...

class InsertAck(_message.Message):
    __slots__ = ("actor_id", "sequence", "stored", "table_size", "batches", "resent")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    TABLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    RESENT_FIELD_NUMBER: _ClassVar[int]
    actor_id: str
    sequence: int
    stored: bool
    table_size: int
    batches: int
    resent: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, actor_id: _Optional[str] = ..., sequence: _Optional[int] = ..., stored: _Optional[bool] = ..., table_size: _Optional[int] = ..., batches: _Optional[int] = ..., resent: _Optional[_Iterable[int]] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("table", "batch_size", "num_batches", "rate_limiter_timeout_ms", "credit_id", "learner_version")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_BATCHES_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITER_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    CREDIT_ID_FIELD_NUMBER: _ClassVar[int]
    LEARNER_VERSION_FIELD_NUMBER: _ClassVar[int]
    table: str
    batch_size: int
    num_batches: int
    rate_limiter_timeout_ms: int
    credit_id: str
    learner_version: int
    def __init__(self, table: _Optional[str] = ..., batch_size: _Optional[int] = ..., num_batches: _Optional[int] = ..., rate_limiter_timeout_ms: _Optional[int] = ..., credit_id: _Optional[str] = ..., learner_version: _Optional[int] = ...) -> None: ...

class SampleGrant(_message.Message):
    __slots__ = ("credit_id", "num_batches", "learner_version")
    CREDIT_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_BATCHES_FIELD_NUMBER: _ClassVar[int]
    LEARNER_VERSION_FIELD_NUMBER: _ClassVar[int]
    credit_id: str
    num_batches: int
    learner_version: int
    def __init__(self, credit_id: _Optional[str] = ..., num_batches: _Optional[int] = ..., learner_version: _Optional[int] = ...) -> None: ...

class GrantSamplesResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SampleBatch(_message.Message):
    __slots__ = ("table", "probabilities", "table_size", "rows", "layout", "weights")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    TABLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    table: str
    probabilities: _tensor_pb2.Tensor
    table_size: int
    rows: _tensor_pb2.Tensor
    layout: RowLayout
    weights: _tensor_pb2.Tensor
    def __init__(self, table: _Optional[str] = ..., probabilities: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., table_size: _Optional[int] = ..., rows: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., layout: _Optional[_Union[RowLayout, _Mapping]] = ..., weights: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class UpdatePrioritiesRequest(_message.Message):
    __slots__ = ("table", "keys", "priorities")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    PRIORITIES_FIELD_NUMBER: _ClassVar[int]
    table: str
    keys: _tensor_pb2.Tensor
    priorities: _tensor_pb2.Tensor
    def __init__(self, table: _Optional[str] = ..., keys: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., priorities: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class UpdatePrioritiesResponse(_message.Message):
    __slots__ = ("updated",)
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    updated: int
    def __init__(self, updated: _Optional[int] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FieldSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: _tensor_pb2.DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[_tensor_pb2.DType, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class TableInfo(_message.Message):
    __slots__ = ("name", "size", "capacity", "inserts", "samples", "inserted_batches", "duplicate_batches", "rejected_batches", "samples_per_insert", "insert_wait_s", "sample_wait_s", "sampler", "spec", "target_samples_per_insert", "min_size_to_sample")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    INSERTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    INSERTED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_BATCHES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_INSERT_FIELD_NUMBER: _ClassVar[int]
    INSERT_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    TARGET_SAMPLES_PER_INSERT_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_TO_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    capacity: int
    inserts: int
    samples: int
    inserted_batches: int
    duplicate_batches: int
    rejected_batches: int
    samples_per_insert: float
    insert_wait_s: float
    sample_wait_s: float
    sampler: str
    spec: _containers.RepeatedCompositeFieldContainer[FieldSpec]
    target_samples_per_insert: float
    min_size_to_sample: int
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., capacity: _Optional[int] = ..., inserts: _Optional[int] = ..., samples: _Optional[int] = ..., inserted_batches: _Optional[int] = ..., duplicate_batches: _Optional[int] = ..., rejected_batches: _Optional[int] = ..., samples_per_insert: _Optional[float] = ..., insert_wait_s: _Optional[float] = ..., sample_wait_s: _Optional[float] = ..., sampler: _Optional[str] = ..., spec: _Optional[_Iterable[_Union[FieldSpec, _Mapping]]] = ..., target_samples_per_insert: _Optional[float] = ..., min_size_to_sample: _Optional[int] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("tables", "last_checkpoint", "uptime_s")
    TABLES_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedCompositeFieldContainer[TableInfo]
    last_checkpoint: str
    uptime_s: float
    def __init__(self, tables: _Optional[_Iterable[_Union[TableInfo, _Mapping]]] = ..., last_checkpoint: _Optional[str] = ..., uptime_s: _Optional[float] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CheckpointResponse(_message.Message):
    __slots__ = ("path", "duration_s")
    PATH_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    path: str
    duration_s: float
    def __init__(self, path: _Optional[str] = ..., duration_s: _Optional[float] = ...) -> None: ...
