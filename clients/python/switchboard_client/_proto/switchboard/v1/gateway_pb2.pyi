# mypy: ignore-errors
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ToolCall(_message.Message):
    __slots__ = ("name", "arguments")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    arguments: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., arguments: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class CodeRun(_message.Message):
    __slots__ = ("source", "inputs", "timeout_ms", "session_id", "output_schema")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    source: str
    inputs: _struct_pb2.Struct
    timeout_ms: int
    session_id: str
    output_schema: _struct_pb2.Struct
    def __init__(self, source: _Optional[str] = ..., inputs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., timeout_ms: _Optional[int] = ..., session_id: _Optional[str] = ..., output_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("request_id", "tool_call", "code_run", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    CODE_RUN_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tool_call: ToolCall
    code_run: CodeRun
    labels: _containers.ScalarMap[str, str]
    def __init__(self, request_id: _Optional[str] = ..., tool_call: _Optional[_Union[ToolCall, _Mapping]] = ..., code_run: _Optional[_Union[CodeRun, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("timeout_ms", "memory_mb", "max_host_calls", "max_output_bytes")
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    MAX_HOST_CALLS_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    timeout_ms: int
    memory_mb: int
    max_host_calls: int
    max_output_bytes: int
    def __init__(self, timeout_ms: _Optional[int] = ..., memory_mb: _Optional[int] = ..., max_host_calls: _Optional[int] = ..., max_output_bytes: _Optional[int] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("route", "reasons", "decision_id", "policy_revision", "limits", "obligations")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_REVISION_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    OBLIGATIONS_FIELD_NUMBER: _ClassVar[int]
    route: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    decision_id: str
    policy_revision: str
    limits: Limits
    obligations: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, route: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ..., decision_id: _Optional[str] = ..., policy_revision: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., obligations: _Optional[_Iterable[str]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "field", "details")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    field: str
    details: _struct_pb2.Struct
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., field: _Optional[str] = ..., details: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("request_id", "decision", "result", "stdout", "stderr", "error", "trace_id", "replayed", "host_calls", "output_truncated")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    HOST_CALLS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    decision: Decision
    result: _struct_pb2.Value
    stdout: str
    stderr: str
    error: Error
    trace_id: str
    replayed: bool
    host_calls: int
    output_truncated: bool
    def __init__(self, request_id: _Optional[str] = ..., decision: _Optional[_Union[Decision, _Mapping]] = ..., result: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., stdout: _Optional[str] = ..., stderr: _Optional[str] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., trace_id: _Optional[str] = ..., replayed: _Optional[bool] = ..., host_calls: _Optional[int] = ..., output_truncated: _Optional[bool] = ...) -> None: ...

class HostCallEvent(_message.Message):
    __slots__ = ("operation", "outcome", "duration_ms")
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    operation: str
    outcome: str
    duration_ms: float
    def __init__(self, operation: _Optional[str] = ..., outcome: _Optional[str] = ..., duration_ms: _Optional[float] = ...) -> None: ...

class ExecuteEvent(_message.Message):
    __slots__ = ("stdout_line", "stderr_line", "host_call", "response")
    STDOUT_LINE_FIELD_NUMBER: _ClassVar[int]
    STDERR_LINE_FIELD_NUMBER: _ClassVar[int]
    HOST_CALL_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    stdout_line: str
    stderr_line: str
    host_call: HostCallEvent
    response: ExecuteResponse
    def __init__(self, stdout_line: _Optional[str] = ..., stderr_line: _Optional[str] = ..., host_call: _Optional[_Union[HostCallEvent, _Mapping]] = ..., response: _Optional[_Union[ExecuteResponse, _Mapping]] = ...) -> None: ...

class GetManifestRequest(_message.Message):
    __slots__ = ("format",)
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    format: str
    def __init__(self, format: _Optional[str] = ...) -> None: ...

class ToolDefinition(_message.Message):
    __slots__ = ("name", "description", "input_schema", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    INPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    input_schema: _struct_pb2.Struct
    kind: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., input_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., kind: _Optional[str] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("tools", "policy_revision", "catalog_revision", "formatted")
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    POLICY_REVISION_FIELD_NUMBER: _ClassVar[int]
    CATALOG_REVISION_FIELD_NUMBER: _ClassVar[int]
    FORMATTED_FIELD_NUMBER: _ClassVar[int]
    tools: _containers.RepeatedCompositeFieldContainer[ToolDefinition]
    policy_revision: str
    catalog_revision: str
    formatted: _struct_pb2.ListValue
    def __init__(self, tools: _Optional[_Iterable[_Union[ToolDefinition, _Mapping]]] = ..., policy_revision: _Optional[str] = ..., catalog_revision: _Optional[str] = ..., formatted: _Optional[_Union[_struct_pb2.ListValue, _Mapping]] = ...) -> None: ...

class SearchOperationsRequest(_message.Message):
    __slots__ = ("query", "limit")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    query: str
    limit: int
    def __init__(self, query: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class OperationSummary(_message.Message):
    __slots__ = ("name", "summary", "tags", "score", "route")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    name: str
    summary: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    score: float
    route: str
    def __init__(self, name: _Optional[str] = ..., summary: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., score: _Optional[float] = ..., route: _Optional[str] = ...) -> None: ...

class SearchOperationsResponse(_message.Message):
    __slots__ = ("operations",)
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    operations: _containers.RepeatedCompositeFieldContainer[OperationSummary]
    def __init__(self, operations: _Optional[_Iterable[_Union[OperationSummary, _Mapping]]] = ...) -> None: ...

class DescribeOperationRequest(_message.Message):
    __slots__ = ("name", "path", "page")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    page: int
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., page: _Optional[int] = ...) -> None: ...

class OperationDescription(_message.Message):
    __slots__ = ("name", "backend", "summary", "description", "tags", "method", "path", "input_schema", "output_schema", "python_signature", "route", "view", "page", "pages")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    INPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    PYTHON_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    name: str
    backend: str
    summary: str
    description: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    method: str
    path: str
    input_schema: _struct_pb2.Struct
    output_schema: _struct_pb2.Struct
    python_signature: str
    route: str
    view: _struct_pb2.Value
    page: int
    pages: int
    def __init__(self, name: _Optional[str] = ..., backend: _Optional[str] = ..., summary: _Optional[str] = ..., description: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., method: _Optional[str] = ..., path: _Optional[str] = ..., input_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., output_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., python_signature: _Optional[str] = ..., route: _Optional[str] = ..., view: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., page: _Optional[int] = ..., pages: _Optional[int] = ...) -> None: ...
