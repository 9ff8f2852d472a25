"""One step: the request, the cell the kernel runs, and the answer made of what it did.

SQL in a session runs in the kernel as ``%%sql name`` (or ``name = sql(query, params)``),
so that the frame is there for the next step and the notebook shows the step as run. An
execute-on-data step is one readable cell that binds ``input_data`` and runs the code:

    import json
    input_data = {
        'prev': load('<key>'),
        'sample': pd.DataFrame(json.loads('[{"a": 1}]')),
    }
    <code>

After the cell the kernel's result capture answers a ``protocol.ResultPayload``; a failed
cell's exception is mapped to the API error of its type (``protocol.error_type``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson
from dataexec_kernel import protocol

from server import clock, errors
from server.errors import DataExecError, ExecutionError, KernelDied, ValidationError
from server.kernels.client import Execution
from server.kernels.kernel import Kernel
from server.sessions.history import ExecutionRecord

MISSING_RESULT = (
    "if 'result_df' not in globals():\n"
    "    raise NameError('execute-on-data code must set result_df')"
)


@dataclass(frozen=True)
class ExecutionRequest:
    """One request to run code: Python, or SQL (run as ``%%sql name`` in a session).

    ``kind`` is ``execute`` or ``execute_on_data`` (whose ``code`` is the prepared cell).
    """

    code: str
    max_rows: int
    language: str = "python"
    result_name: str | None = None
    kind: str = "execute"
    params: dict[str, Any] | None = None  # SQL ``:name`` parameters

    def kernel_code(self, execution_count: int) -> str:
        """What the kernel runs: the code itself, or the cell of the query (``%%sql name``,
        or ``name = sql(query, params)`` when it has parameters)."""
        if self.language != "sql":
            return self.code
        name = self.sql_name(execution_count)
        if self.params:
            return f"{name} = sql({self.code!r}, {self.params!r})\n{name}"
        return f"%%sql {name}\n{self.code}"

    def sql_name(self, execution_count: int) -> str:
        return self.result_name or f"df_{execution_count}"

    def lineage(self, execution_count: int | None) -> dict[str, Any]:
        """What produced the frames of this step, for their cache keys."""
        source: dict[str, Any] = (
            {"sql": self.code} if self.language == "sql" else {"code": self.code}
        )
        if self.params:
            source["params"] = self.params
        return {**source, "execution_count": execution_count}

    def record(self, execution_count: int) -> ExecutionRecord:
        """The history record of this request run as step ``execution_count``."""
        return ExecutionRecord(
            execution_count=execution_count,
            language=self.language,
            code=self.code,
            cell=self.kernel_code(execution_count),
            started=clock.now(),
            kind=self.kind,
            result_name=self.sql_name(execution_count) if self.language == "sql" else None,
        )


def on_data_request(
    code: str, input_data: dict[str, Any], cache_keys: dict[str, str], max_rows: int
) -> ExecutionRequest:
    """The step of ``POST /execute-on-data``: a cell binding ``input_data``, then ``code``."""
    entries = [f"    {name!r}: load({key!r})," for name, key in cache_keys.items()]
    entries += [f"    {name!r}: {_literal_rows(name, rows)}," for name, rows in input_data.items()]
    cell = "\n".join(["import json", "input_data = {", *entries, "}", code, MISSING_RESULT])
    return ExecutionRequest(cell, max_rows, kind="execute_on_data")


def _literal_rows(name: str, rows: Any) -> str:
    """Rows as a list of records or a dict of columns, checked, as a DataFrame expression."""
    records = isinstance(rows, list) and all(isinstance(r, dict) for r in rows)
    columns = isinstance(rows, dict) and all(isinstance(v, list) for v in rows.values())
    if not (records or columns):
        raise ValidationError(
            f"input_data[{name!r}] must be a list of records or a dict of columns"
        )
    if columns and len({len(v) for v in rows.values()}) > 1:
        raise ValidationError(f"input_data[{name!r}]: columns of different lengths")
    return f"pd.DataFrame(json.loads({json.dumps(rows, default=str)!r}))"


async def ask(kernel: Kernel, expression: str, output_limit: int) -> Any:
    """Evaluate one helper call silently (no history, no count) and decode its payload."""
    execution = await kernel.run("", {protocol.EXPRESSION: expression}, output_limit, silent=True)
    return _captured(execution, "a helper call's result")


def failure(execution: Execution, context: dict[str, Any]) -> DataExecError:
    """The API error of a cell that raised: the type of a helper's exception, else
    ``EXECUTION_ERROR`` with the exception's name, value and traceback."""
    error = execution.error or {"ename": "Aborted", "evalue": "aborted", "traceback": []}
    error_type = protocol.error_type(error["ename"])
    if error_type is None:
        kind: type[DataExecError] = ExecutionError
        message = f"{error['ename']}: {error['evalue']}"
    else:
        kind, message = errors.error_class(error_type), error["evalue"]
    return kind(message, **error, outputs=execution.outputs, **context)


def result_payload(execution: Execution) -> protocol.ResultPayload:
    """What the kernel's result capture reported for the cell."""
    payload: protocol.ResultPayload = _captured(execution, "the cell's result")
    return payload


def _captured(execution: Execution, what: str) -> Any:
    """The decoded payload of our user expression. The kernel runs the tenant's code, which
    can replace the capture: anything but a well-formed payload is KERNEL_DIED, never a
    crash of the server's request."""
    captured = execution.user_expressions.get(protocol.EXPRESSION)
    if not isinstance(captured, dict) or captured.get("status") != "ok":
        evalue = captured.get("evalue", "") if isinstance(captured, dict) else ""
        raise KernelDied(f"the kernel did not report {what}" + (f": {evalue}" if evalue else ""))
    data = captured.get("data")
    encoded = data.get(protocol.RESULT_MIMETYPE) if isinstance(data, dict) else None
    try:
        payload = orjson.loads(encoded) if isinstance(encoded, str) else None
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        raise KernelDied(f"the kernel reported {what} in a form DataExec does not know")
    return payload
