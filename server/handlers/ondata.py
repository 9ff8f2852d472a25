"""``POST /execute-on-data``: the replaced system's step over earlier results.

``{"code", "input_data": {name: rows}, "cache_keys": {name: key}, "session_id"?,
"max_rows"?}``: the code sees ``input_data[name]`` as DataFrames (cached frames loaded
through the broker, literal rows as given) and sets ``result_df``, whose answer carries a new
``cache_key``. The kernel runs it as one readable cell, so the notebook shows it as run:

    import json
    input_data = {
        'prev': load('<key>'),
        'sample': pd.DataFrame(json.loads('[{"a": 1}]')),
    }
    <code>
"""

from __future__ import annotations

import json
from typing import Any

from server.errors import ValidationError
from server.handlers.base import int_field, str_field
from server.handlers.execute import ExecuteBase
from server.sessions.manager import ExecutionRequest

MISSING_RESULT = (
    "if 'result_df' not in globals():\n"
    "    raise NameError('execute-on-data code must set result_df')"
)


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


def on_data_code(code: str, input_data: dict[str, Any], cache_keys: dict[str, str]) -> str:
    """The cell that binds ``input_data`` and runs ``code``."""
    entries = [f"    {name!r}: load({key!r})," for name, key in cache_keys.items()]
    entries += [f"    {name!r}: {_literal_rows(name, rows)}," for name, rows in input_data.items()]
    return "\n".join(["import json", "input_data = {", *entries, "}", code, MISSING_RESULT])


def _mapping(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name) or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise ValidationError(f"{name} must be an object keyed by names")
    return value


class ExecuteOnDataHandler(ExecuteBase):
    async def post(self) -> None:
        tenant = self.current_tenant()
        body = self.json_body()
        code = str_field(body, "code", required=True)
        assert code is not None
        input_data, cache_keys = _mapping(body, "input_data"), _mapping(body, "cache_keys")
        if not all(isinstance(k, str) for k in cache_keys.values()):
            raise ValidationError("cache_keys values must be cache key strings")
        if set(input_data) & set(cache_keys):
            raise ValidationError("a name is in both input_data and cache_keys")
        for key in cache_keys.values():  # unknown keys fail here, before any kernel runs
            await self.runtime.cache.entry(tenant.name, key)
        settings = self.settings_obj
        max_rows = int_field(body, "max_rows", settings.max_rows_default, 0, settings.max_rows_cap)
        request = ExecutionRequest(
            on_data_code(code, input_data, cache_keys), max_rows, kind="execute_on_data"
        )
        sessions = self.runtime.sessions
        session_id = str_field(body, "session_id")
        if session_id is None:
            await self.run(sessions.run_once(tenant, request))
        else:
            session = await sessions.get_or_create(tenant, session_id)
            await self.run(sessions.execute(session, request))


routes = [(r"/execute-on-data", ExecuteOnDataHandler)]
