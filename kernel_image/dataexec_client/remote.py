"""A DataExec server over HTTP, for ``sql()`` and ``load()`` outside DataExec kernels.

Only the standard library speaks HTTP here (urllib), so the package needs nothing but pandas
and pyarrow. ``sql(query)`` asks ``POST /execute`` for the query with no preview rows
(``max_rows: 0``): the server checks it with its guard, runs it read-only and answers a cache
key; the whole result then comes from ``GET /cache/{key}?format=arrow`` as an Arrow IPC
stream, read batch by batch. ``load(key)`` is that download alone; ``save(frame)`` uploads
the frame as Arrow (``POST /cache``). Errors come back as
``{"detail": {"type", "message"}}`` and are raised as the package's exception of that type.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from dataexec_kernel import errors
from dataexec_kernel.errors import AuthenticationFailed, DataExecError, ServerUnavailable
from dataexec_kernel.protocol import ARROW_STREAM, arrow_table

# The server's HTTP error types: the broker's, plus what only HTTP answers.
HTTP_ERRORS: dict[str, type[DataExecError]] = {
    **errors.BY_TYPE,
    **{
        cls.type: cls
        for cls in (
            errors.AuthenticationFailed,
            errors.PermissionDenied,
            errors.InvalidRequest,
            errors.ServerUnavailable,
        )
    },
    "CAPACITY": errors.ServerUnavailable,
}


class RemoteClient:
    """``sql()`` and ``load()`` through a DataExec server's REST API."""

    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"a DataExec URL looks like http://host:8001, not {url!r}")
        self.url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        self.url = self.url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def describe(self) -> str:
        return f"DataExec at {self.url}"

    def __repr__(self) -> str:
        return f"<dataexec_kernel client: {self.describe()}>"

    def close(self) -> None:
        pass  # one connection per request: nothing kept open

    # --- what dataexec_kernel.helpers calls -----------------------------------------------

    def fetch_arrow(self, query: str, params: Any = None) -> Any:
        """The whole result of ``query`` as a pyarrow Table."""
        body = {"language": "sql", "code": query, "max_rows": 0, "params": params or None}
        with self._request("POST", "/execute", body, accept="application/json") as response:
            answer = json.load(response)
        key = answer.get("cache_key") if isinstance(answer, dict) else None
        if not isinstance(key, str) or not key:
            raise DataExecError(
                f"{self.describe()} answered no cache key for this query, so its result cannot "
                "be downloaded whole"
            )
        return self.load(key)

    def load(self, key: str) -> Any:
        """The cached frame of ``key`` as a pyarrow Table, streamed as Arrow."""
        import pyarrow as pa

        path = f"/cache/{urllib.parse.quote(key, safe='')}?format=arrow"
        with self._request("GET", path, accept=ARROW_STREAM) as response:
            kind = response.headers.get("Content-Type", "")
            if kind.split(";")[0].strip() != ARROW_STREAM:
                raise DataExecError(
                    f"{self.describe()} answered {kind or 'no content type'} for {path}, "
                    "not an Arrow stream: is this URL a DataExec server?"
                )
            try:
                return pa.ipc.open_stream(response).read_all()
            except (OSError, pa.ArrowInvalid) as exc:
                raise ServerUnavailable(
                    f"the download of {key} from {self.describe()} broke off: {exc}"
                ) from None

    def save(self, frame: Any, name: str | None = None) -> str:
        """Upload ``frame`` as Arrow (``POST /cache``); its new cache key."""
        import pyarrow as pa

        table = arrow_table(frame)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        path = "/cache" + (f"?{urllib.parse.urlencode({'name': name})}" if name else "")
        body = sink.getvalue().to_pybytes()
        with self._request("POST", path, body, content_type=ARROW_STREAM) as response:
            answer = json.load(response)
        return str(answer["cache_key"])

    # --- HTTP --------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        accept: str = "application/json",
        content_type: str = "application/json",
    ) -> Any:
        """``body`` is sent as JSON, or as it is (bytes) with ``content_type``."""
        from dataexec_kernel import __version__

        headers = {"Accept": accept, "User-Agent": f"dataexec-kernel/{__version__}"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            with exc:
                error = self._error(exc)
            raise error from None
        except urllib.error.URLError as exc:
            raise ServerUnavailable(f"cannot reach {self.describe()}: {exc.reason}") from None
        except TimeoutError:
            raise ServerUnavailable(
                f"{self.describe()} did not answer within {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise ServerUnavailable(f"cannot reach {self.describe()}: {exc}") from None

    def _error(self, exc: urllib.error.HTTPError) -> DataExecError:
        """The package's exception for an HTTP error answer (by its ``detail.type``)."""
        status = exc.code
        raw = exc.read(1 << 20) or b""
        detail: dict[str, Any] = {}
        try:
            document = json.loads(raw)
            if isinstance(document, dict) and isinstance(document.get("detail"), dict):
                detail = document["detail"]
        except ValueError:
            pass
        kind = detail.get("type") if isinstance(detail.get("type"), str) else None
        message = detail.get("message") if isinstance(detail.get("message"), str) else None
        if message is None:
            text = raw[:300].decode("utf-8", "replace").strip()
            message = f"HTTP {status} from {self.describe()}" + (f": {text}" if text else "")
        if kind is None and status == 401:
            kind = "UNAUTHORIZED"
        cls = HTTP_ERRORS.get(kind or "", DataExecError)
        if cls is AuthenticationFailed:
            how = (
                "no token was given: set DATAEXEC_TOKEN or call dataexec_kernel.connect(url, token)"
                if not self.token
                else "check DATAEXEC_TOKEN, or the token given to dataexec_kernel.connect()"
            )
            message = f"{self.describe()} refused the request ({message}); {how}"
        elif kind == "CAPACITY" and exc.headers.get("Retry-After"):
            message += f" (retry after {exc.headers['Retry-After']} s)"
        error = cls(message)
        error.type = kind or cls.type
        error.status = status
        error.detail = detail
        return error
