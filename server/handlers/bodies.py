"""Request and answer bodies of the API, declared once.

Each body is a msgspec ``Struct``: handlers decode requests with ``decode`` (a wrong type or
a missing field is a ``ValidationError`` naming the field, e.g. ``Expected `int`, got `str`
- at `$.max_rows```; a field no request declares, such as ``tenant``, too, with every such
name in ``unknown_fields``), and ``/openapi.json`` takes its schemas from the same
declarations. A JSON body must come as JSON (``check_json_type``) and code within the
configured length (``check_code_length``), before anything reaches a kernel.
Answers are declared here too; a test holds real answers against them, so the document
stays true.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from server.errors import UnsupportedMediaType, ValidationError

T = TypeVar("T")

SESSION_ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
SessionId = Annotated[
    str, Meta(pattern=SESSION_ID_PATTERN, description="1-128 of A-Z a-z 0-9 . _ -")
]
MaxRows = Annotated[
    int,
    Meta(ge=0, description="preview rows to answer (default and cap from the configuration)"),
]
ParamValue = str | int | float | bool | None


def decode(body: bytes, kind: type[T]) -> T:
    """The request body as ``kind``; an empty body is an empty object."""
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        unknown = _unknown_fields(body, kind)
        if unknown:
            names = ", ".join(f"`{name}`" for name in unknown)
            raise ValidationError(
                f"invalid request body: unknown field(s) {names}", unknown_fields=unknown
            ) from None
        raise ValidationError(f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ValidationError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValidationError("request body is nested too deeply") from None


def _unknown_fields(body: bytes, kind: type[Any]) -> list[str]:
    """The top-level names of ``body`` that ``kind`` does not declare (msgspec names one)."""
    try:
        raw = msgspec.json.decode(body or b"{}")
    except (msgspec.DecodeError, RecursionError):
        return []
    if not isinstance(raw, dict) or not issubclass(kind, Struct):
        return []
    declared = {f.encode_name for f in msgspec.structs.fields(kind)}
    return [name for name in raw if name not in declared]


def check_json_type(content_type: str | None, body: bytes) -> None:
    """A JSON body says so: ``application/json`` (any parameters, e.g. charset) or
    ``application/*+json``; none at all is taken as JSON, as the replaced system took it."""
    if not body or content_type is None:
        return
    media = content_type.partition(";")[0].strip().lower()
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return
    raise UnsupportedMediaType(
        f"send the body as Content-Type: application/json, not {media[:100]!r}"
    )


def check_code_length(body: Any, limit: int) -> None:
    """ValidationError when the body's ``code`` is over ``limit`` bytes of UTF-8."""
    code = getattr(body, "code", None)
    if isinstance(code, str) and len(code) * 4 > limit and len(code.encode()) > limit:
        raise ValidationError(f"code is over {limit} bytes (max_code_bytes)")


# --- requests ----------------------------------------------------------------------------


class ExecuteBody(Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /execute`` and ``POST /sessions/{id}/execute``."""

    code: Annotated[str, Meta(description="Python, or one SQL query")]
    language: Literal["python", "sql"] = "python"
    max_rows: MaxRows | None = None
    session_id: SessionId | None = None
    result_name: (
        Annotated[
            str,
            Meta(
                description="SQL in a session: the kernel variable the frame lands in "
                "(default df_<execution_count>)"
            ),
        ]
        | None
    ) = None
    params: (
        Annotated[
            dict[str, ParamValue], Meta(description="SQL only: values of its :name parameters")
        ]
        | None
    ) = None
    stream: Annotated[
        bool,
        Meta(
            description="answer text/event-stream: the cell's outputs as they happen, then "
            "the result or the error (errors before the cell starts stay JSON)"
        ),
    ] = False


class OnDataBody(Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /execute-on-data``: the code reads ``input_data[name]`` and sets ``result_df``."""

    code: str
    input_data: (
        Annotated[
            dict[str, Any],
            Meta(description="name -> rows, as a list of records or a dict of columns"),
        ]
        | None
    ) = None
    cache_keys: (
        Annotated[dict[str, str], Meta(description="name -> cache key of an earlier result")] | None
    ) = None
    session_id: SessionId | None = None
    max_rows: MaxRows | None = None


class SessionBody(Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /sessions``: a new session, optionally replaying a notebook or cells."""

    session_id: SessionId | None = None
    pool: str | None = None
    notebook: Annotated[dict[str, Any], Meta(description="an nbformat v4 notebook")] | None = None
    cells: (
        Annotated[
            list[Any],
            Meta(description="code strings, or {code, language?, result_name?} objects"),
        ]
        | None
    ) = None
    stop_on_error: bool = True
    max_rows: MaxRows | None = None


# --- answers -----------------------------------------------------------------------------


class ErrorDetail(Struct, kw_only=True):
    type: str
    message: str
    request_id: str | None = None
    unknown_fields: list[str] | None = None
    ename: str | None = None
    evalue: str | None = None
    traceback: list[str] | None = None
    outputs: list[dict[str, Any]] | None = None
    session_id: str | None = None
    execution_count: int | None = None
    kernel_replaced: bool | None = None
    replaced_reason: str | None = None
    restored_frames: list[str] | None = None
    unrestored_frames: dict[str, str] | None = None
    problems: list[str] | None = None


class ErrorAnswer(Struct):
    """Every error: an HTTP status and ``{"detail": {"type", "message", ...}}``."""

    detail: ErrorDetail


class ColumnSchema(Struct):
    name: str
    type: Annotated[str, Meta(description="the pandas dtype (int64, float64, str, ...)")]
    stats: dict[str, Any]


class ResultMetadata(Struct, kw_only=True):
    row_count: int
    truncated: bool
    result_schema: list[ColumnSchema]
    execution_time_ms: float | None = None
    cache_error: str | None = None
    warnings: Annotated[
        list[str] | None,
        Meta(description="what the answer changed or left out: renamed columns, cut values"),
    ] = None


class ResultData(Struct):
    columns: list[str]
    rows: list[list[Any]]


class ExecutionResult(Struct, kw_only=True, forbid_unknown_fields=True):
    """``EnrichedExecutionResult``, the replaced system's answer, plus our additions."""

    status: Literal["success"]
    metadata: ResultMetadata
    data: ResultData | None
    cache_key: str | None
    session_id: str | None
    execution_count: int | None
    kernel_replaced: bool
    outputs: Annotated[list[dict[str, Any]], Meta(description="nbformat v4 outputs")]
    replaced_reason: str | None = None
    restored_frames: list[str] | None = None
    unrestored_frames: dict[str, str] | None = None
    result_name: str | None = None


class KernelState(Struct):
    status: Literal["ready", "none"]
    lost_reason: str | None


class ImportedCellOutcome(Struct, kw_only=True):
    cell_index: int
    language: Literal["python", "sql"]
    allowed: bool
    status: Literal["ok", "failed", "skipped"]
    execution_count: int | None = None
    cache_key: str | None = None
    row_count: int | None = None
    result_name: str | None = None
    error: dict[str, Any] | None = None


class ImportProgress(Struct, kw_only=True, forbid_unknown_fields=True):
    state: Literal["running", "done", "failed"]
    total: int
    finished: int
    cells: list[ImportedCellOutcome]
    session_id: str | None = None


class SessionState(Struct, kw_only=True, forbid_unknown_fields=True):
    session_id: str
    state: Literal["idle", "busy", "no_kernel"]
    pool: str
    kernel: KernelState
    created: str
    last_activity: str
    execution_count: int
    queued: int
    frames: list[str]
    import_: ImportProgress | None = msgspec.field(default=None, name="import")


class SessionList(Struct):
    sessions: list[SessionState]


class FrameVariable(Struct):
    name: str
    shape: list[int]
    dtypes: dict[str, str]
    bytes: int
    cache_key: str | None
    restorable: bool
    note: str | None


class Variables(Struct, forbid_unknown_fields=True):
    session_id: str
    in_kernel: bool
    as_of_execution_count: int
    checkpoint_budget_bytes: int
    frames: list[FrameVariable]


class Interrupted(Struct, forbid_unknown_fields=True):
    session_id: str
    interrupted: bool


class Restarted(Struct, forbid_unknown_fields=True):
    session_id: str
    kernel_replaced: bool
    replaced_reason: str
    restored_frames: list[str]
    unrestored_frames: dict[str, str]


class CacheMeta(Struct, forbid_unknown_fields=True):
    cache_key: str
    status: Literal["pending", "ready", "failed"]
    session_id: str | None
    row_count: int | None
    columns: list[str] | None
    schema: list[dict[str, str]] | None
    bytes: int | None
    created: str
    last_used: str
    expires: str
    lineage: dict[str, Any]


class DatabaseGuarantees(Struct, forbid_unknown_fields=True):
    read_only: str
    timeout: str
    cancel: str
    arrow_path: str
    profile_source: str


class DatabaseInfo(Struct, forbid_unknown_fields=True):
    dialect: Annotated[str, Meta(description="SQLAlchemy's name: postgresql, mysql, mariadb")]
    driver: str
    path: Annotated[str, Meta(description="the row of docs/databases.md that applies")]
    tls: Annotated[str, Meta(description="the TLS mode asked for, or 'driver default'")]
    guarantees: DatabaseGuarantees


class Health(Struct, kw_only=True):
    status: Literal["ok", "starting", "stopping"]
    db_dialect: str
    version: str
    sandbox: str | None = None
    pools: dict[str, dict[str, Any]] | None = None
    sessions: int | None = None
    database: DatabaseInfo | None = None


class Pools(Struct):
    sandbox: str | None
    pools: dict[str, dict[str, Any]]


class ClientInfo(Struct, forbid_unknown_fields=True):
    package: str
    version: str
    wheel: str
    install: str
    configure: str


class SchemaColumn(Struct, kw_only=True):
    name: str
    type: Annotated[str, Meta(description="as the dialect spells it: INTEGER, VARCHAR(50)")]
    is_primary_key: bool
    nullable: bool | None = None
    default: str | None = None
    comment: str | None = None


class SchemaTable(Struct, kw_only=True):
    name: Annotated[str, Meta(description="schema-qualified outside the default schema")]
    columns: list[SchemaColumn]
    schema: str | None = None
    kind: Literal["table", "view"] | None = None
    primary_key: list[str] | None = None
    foreign_keys: list[dict[str, Any]] | None = None
    comment: str | None = None
    row_estimate: int | None = None


class SchemaTables(Struct):
    tables: list[SchemaTable]


class SchemaAnswer(Struct):
    dialect: str
    schema: SchemaTables


class ColumnProfile(Struct, kw_only=True):
    name: str
    null_count: int | None = None
    top_values: list[dict[str, Any]] | None = None
    distinct_examples: list[Any] | None = None
    histogram: list[dict[str, Any]] | None = None


class Profile(Struct, kw_only=True):
    table_name: str
    columns: list[ColumnProfile]
