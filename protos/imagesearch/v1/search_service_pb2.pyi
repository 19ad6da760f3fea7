from google.protobuf import struct_pb2 as _struct_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageRecord(_message.Message):
    __slots__ = ("id", "image", "metadata")
    ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    image: bytes
    metadata: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., image: _Optional[bytes] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class VectorRecord(_message.Message):
    __slots__ = ("id", "values", "metadata")
    ID_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    values: _containers.RepeatedScalarFieldContainer[float]
    metadata: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class UpsertResult(_message.Message):
    __slots__ = ("id", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    error: _status_pb2.Status
    def __init__(self, id: _Optional[str] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class UpsertImagesRequest(_message.Message):
    __slots__ = ("namespace", "records")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    records: _containers.RepeatedCompositeFieldContainer[ImageRecord]
    def __init__(self, namespace: _Optional[str] = ..., records: _Optional[_Iterable[_Union[ImageRecord, _Mapping]]] = ...) -> None: ...

class UpsertImagesResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[UpsertResult]
    def __init__(self, results: _Optional[_Iterable[_Union[UpsertResult, _Mapping]]] = ...) -> None: ...

class IngestImagesRequest(_message.Message):
    __slots__ = ("namespace", "records")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    records: _containers.RepeatedCompositeFieldContainer[ImageRecord]
    def __init__(self, namespace: _Optional[str] = ..., records: _Optional[_Iterable[_Union[ImageRecord, _Mapping]]] = ...) -> None: ...

class IngestImagesResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[UpsertResult]
    def __init__(self, results: _Optional[_Iterable[_Union[UpsertResult, _Mapping]]] = ...) -> None: ...

class UpsertVectorsRequest(_message.Message):
    __slots__ = ("namespace", "records", "model_fingerprint")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    records: _containers.RepeatedCompositeFieldContainer[VectorRecord]
    model_fingerprint: str
    def __init__(self, namespace: _Optional[str] = ..., records: _Optional[_Iterable[_Union[VectorRecord, _Mapping]]] = ..., model_fingerprint: _Optional[str] = ...) -> None: ...

class UpsertVectorsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[UpsertResult]
    def __init__(self, results: _Optional[_Iterable[_Union[UpsertResult, _Mapping]]] = ...) -> None: ...

class QueryVector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class QueryExample(_message.Message):
    __slots__ = ("image", "text", "id", "vector", "weight")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    text: str
    id: str
    vector: QueryVector
    weight: float
    def __init__(self, image: _Optional[bytes] = ..., text: _Optional[str] = ..., id: _Optional[str] = ..., vector: _Optional[_Union[QueryVector, _Mapping]] = ..., weight: _Optional[float] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("image", "text", "id", "vector", "top_k", "filter", "namespace", "include_metadata", "include_values", "min_score", "examples", "diversity", "collapse_above", "autocut")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_METADATA_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VALUES_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    COLLAPSE_ABOVE_FIELD_NUMBER: _ClassVar[int]
    AUTOCUT_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    text: str
    id: str
    vector: QueryVector
    top_k: int
    filter: _struct_pb2.Struct
    namespace: str
    include_metadata: bool
    include_values: bool
    min_score: float
    examples: _containers.RepeatedCompositeFieldContainer[QueryExample]
    diversity: float
    collapse_above: float
    autocut: int
    def __init__(self, image: _Optional[bytes] = ..., text: _Optional[str] = ..., id: _Optional[str] = ..., vector: _Optional[_Union[QueryVector, _Mapping]] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., namespace: _Optional[str] = ..., include_metadata: _Optional[bool] = ..., include_values: _Optional[bool] = ..., min_score: _Optional[float] = ..., examples: _Optional[_Iterable[_Union[QueryExample, _Mapping]]] = ..., diversity: _Optional[float] = ..., collapse_above: _Optional[float] = ..., autocut: _Optional[int] = ...) -> None: ...

class Match(_message.Message):
    __slots__ = ("id", "score", "values", "metadata", "collapsed_ids")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    COLLAPSED_IDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    values: _containers.RepeatedScalarFieldContainer[float]
    metadata: _struct_pb2.Struct
    collapsed_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., values: _Optional[_Iterable[float]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., collapsed_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("matches", "namespace")
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    matches: _containers.RepeatedCompositeFieldContainer[Match]
    namespace: str
    def __init__(self, matches: _Optional[_Iterable[_Union[Match, _Mapping]]] = ..., namespace: _Optional[str] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("ids", "namespace")
    IDS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    namespace: str
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., namespace: _Optional[str] = ...) -> None: ...

class FetchResponse(_message.Message):
    __slots__ = ("records", "namespace")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[VectorRecord]
    namespace: str
    def __init__(self, records: _Optional[_Iterable[_Union[VectorRecord, _Mapping]]] = ..., namespace: _Optional[str] = ...) -> None: ...

class ListRecordsRequest(_message.Message):
    __slots__ = ("namespace", "prefix", "page_size", "page_token", "include_metadata", "include_values")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_METADATA_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VALUES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    prefix: str
    page_size: int
    page_token: str
    include_metadata: bool
    include_values: bool
    def __init__(self, namespace: _Optional[str] = ..., prefix: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_metadata: _Optional[bool] = ..., include_values: _Optional[bool] = ...) -> None: ...

class ListRecordsResponse(_message.Message):
    __slots__ = ("ids", "records", "next_page_token", "namespace")
    IDS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    records: _containers.RepeatedCompositeFieldContainer[VectorRecord]
    next_page_token: str
    namespace: str
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., records: _Optional[_Iterable[_Union[VectorRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class IdList(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("namespace", "ids", "filter", "delete_all")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    DELETE_ALL_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    ids: IdList
    filter: _struct_pb2.Struct
    delete_all: bool
    def __init__(self, namespace: _Optional[str] = ..., ids: _Optional[_Union[IdList, _Mapping]] = ..., filter: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., delete_all: _Optional[bool] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NamespaceStats(_message.Message):
    __slots__ = ("vector_count",)
    VECTOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    vector_count: int
    def __init__(self, vector_count: _Optional[int] = ...) -> None: ...

class DescribeStatsResponse(_message.Message):
    __slots__ = ("namespaces", "total_vector_count", "dimension", "model_id", "model_fingerprint", "store")
    class NamespacesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: NamespaceStats
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[NamespaceStats, _Mapping]] = ...) -> None: ...
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_VECTOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    namespaces: _containers.MessageMap[str, NamespaceStats]
    total_vector_count: int
    dimension: int
    model_id: str
    model_fingerprint: str
    store: str
    def __init__(self, namespaces: _Optional[_Mapping[str, NamespaceStats]] = ..., total_vector_count: _Optional[int] = ..., dimension: _Optional[int] = ..., model_id: _Optional[str] = ..., model_fingerprint: _Optional[str] = ..., store: _Optional[str] = ...) -> None: ...

class FindDuplicatesRequest(_message.Message):
    __slots__ = ("namespace", "min_score", "filter")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    min_score: float
    filter: _struct_pb2.Struct
    def __init__(self, namespace: _Optional[str] = ..., min_score: _Optional[float] = ..., filter: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class DuplicateGroup(_message.Message):
    __slots__ = ("members",)
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[Match]
    def __init__(self, members: _Optional[_Iterable[_Union[Match, _Mapping]]] = ...) -> None: ...

class FindDuplicatesResponse(_message.Message):
    __slots__ = ("groups", "scanned", "total")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    SCANNED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[DuplicateGroup]
    scanned: int
    total: int
    def __init__(self, groups: _Optional[_Iterable[_Union[DuplicateGroup, _Mapping]]] = ..., scanned: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...
