"""The one error shape, for every error of server/errors.py, through the real HTTP layer.

Owns ``BaseHandler.write_error``: each ``DataExecError`` subclass (found by walking
``__subclasses__``, so a new one is covered without editing this file) is raised by a
handler of a tiny Tornado app on 127.0.0.1 and requested with httpx over a real socket. The
answer must carry the class's HTTP status and ``{"detail": {"type", "message",
"request_id"}}``, ``Retry-After`` exactly when the class has one, ``WWW-Authenticate:
Bearer`` on 401; the statuses must be those DESIGN.md decides; and anything that is not
ours answers 500 ``INTERNAL`` without its text.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from server import errors
from server.auth import Authenticator
from server.config import load_settings
from server.handlers.base import BaseHandler

SECRET = "internal-detail-7f3a: /srv/dataexec/state/secret.db"

# DESIGN.md, "Errors": the HTTP status of each error type.
DESIGN_STATUS = {
    "VALIDATION_ERROR": 400,
    "EXECUTION_ERROR": 400,
    "SQL_NOT_ALLOWED": 400,
    "TIMEOUT": 400,
    "OUT_OF_MEMORY": 400,
    "OUTPUT_TOO_LARGE": 400,
    "QUOTA_EXCEEDED": 400,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "SESSION_BUSY": 409,
    "CAPACITY": 503,
    "PAYLOAD_TOO_LARGE": 413,
    "RATE_LIMITED": 429,
    "KERNEL_DIED": 500,
    "INTERNAL": 500,
}
# DESIGN.md: the types that answer with Retry-After.
DESIGN_RETRY_AFTER = {"SESSION_BUSY", "CAPACITY"}


def all_error_classes() -> list[type[errors.DataExecError]]:
    found: list[type[errors.DataExecError]] = []
    pending = [errors.DataExecError]
    while pending:
        cls = pending.pop()
        if cls not in found:
            found.append(cls)
            pending.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.__name__)


def make_error(cls: type[errors.DataExecError]) -> errors.DataExecError:
    if issubclass(cls, errors.ConfigError):
        return cls(["pools.default.min_idle: larger than max_kernels"])
    return cls(f"{cls.__name__} happened")


class Raiser(BaseHandler):
    """Raises the error class named in the path, or something that is not ours."""

    public = True

    def get(self, name: str) -> None:
        if name == "KeyError":
            raise KeyError(SECRET)
        if name == "HTTPError404":
            raise tornado.web.HTTPError(404)
        if name == "HTTPError400":
            raise tornado.web.HTTPError(400, "the thing is bad")
        if name == "HTTPError502":
            raise tornado.web.HTTPError(502, SECRET)
        if name == "extra":
            raise errors.ExecutionError(
                "ValueError: no", ename="ValueError", evalue="no", traceback=["line 1"]
            )
        raise make_error(getattr(errors, name))


@pytest.fixture(scope="module")
async def base_url() -> AsyncIterator[str]:
    settings = load_settings(env={})
    handler_args = {"settings": settings, "runtime": None, "auth": Authenticator(settings)}
    app = tornado.web.Application([(r"/raise/(\w+)", Raiser, handler_args)])
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    server.stop()
    await server.close_all_connections()


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        yield client


def shape_problems(answer: httpx.Response, status: int, error_type: str) -> list[str]:
    """What is wrong with an error answer (empty when it has the one shape)."""
    problems = []
    if answer.status_code != status:
        problems.append(f"status {answer.status_code}, expected {status}")
    if not answer.headers.get("content-type", "").startswith("application/json"):
        problems.append(f"content-type {answer.headers.get('content-type')!r}")
    try:
        body: Any = answer.json()
    except ValueError:
        return [*problems, f"not JSON: {answer.text[:200]!r}"]
    detail = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(detail, dict) or set(body) != {"detail"}:
        return [*problems, f"not {{'detail': {{...}}}}: {body!r}"]
    if detail.get("type") != error_type:
        problems.append(f"type {detail.get('type')!r}, expected {error_type!r}")
    if not isinstance(detail.get("message"), str) or not detail["message"].strip():
        problems.append(f"message {detail.get('message')!r}")
    request_id = answer.headers.get("X-Request-Id")
    if not request_id or detail.get("request_id") != request_id:
        problems.append(f"request_id {detail.get('request_id')!r} vs header {request_id!r}")
    return problems


async def test_every_error_class_answers_its_status_and_the_one_shape(
    client: httpx.AsyncClient,
) -> None:
    classes = all_error_classes()
    problems: dict[str, list[str]] = {}
    for cls in classes:
        answer = await client.get(f"/raise/{cls.__name__}")
        found = shape_problems(answer, cls.status, cls.type)
        retry_after = answer.headers.get("Retry-After")
        if cls.retry_after is None and retry_after is not None:
            found.append(f"Retry-After {retry_after!r} on an error without one")
        if cls.retry_after is not None and retry_after != str(int(cls.retry_after)):
            found.append(f"Retry-After {retry_after!r}, expected {int(cls.retry_after)}")
        authenticate = answer.headers.get("WWW-Authenticate", "")
        if (cls.status == 401) != authenticate.startswith("Bearer"):
            found.append(f"WWW-Authenticate {authenticate!r} with status {cls.status}")
        if found:
            problems[cls.__name__] = found
    assert problems == {}
    covered = {cls.type for cls in classes}
    assert set(DESIGN_STATUS) <= covered, "a type DESIGN.md decides has no class"


def test_the_status_of_each_error_type_is_the_one_design_decides() -> None:
    wrong: dict[str, tuple[Any, ...]] = {}
    for cls in all_error_classes():
        if cls.type == "INTERNAL":
            continue  # bases and start-up errors share INTERNAL; only DataExecError answers it
        if cls.type in DESIGN_STATUS and cls.status != DESIGN_STATUS[cls.type]:
            wrong[cls.__name__] = (cls.type, cls.status, DESIGN_STATUS[cls.type])
        if cls.type in DESIGN_RETRY_AFTER and not cls.retry_after:
            wrong[cls.__name__] = (cls.type, "no Retry-After")
    assert wrong == {}
    assert errors.DataExecError.status == 500


def test_every_error_type_names_one_class() -> None:
    for cls in all_error_classes():
        if cls.type != "INTERNAL":
            assert errors.error_class(cls.type) is cls


async def test_an_unexpected_exception_answers_internal_without_its_text(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        answer = await client.get("/raise/KeyError")
    assert shape_problems(answer, 500, "INTERNAL") == []
    assert "internal-detail" not in answer.text and "secret" not in answer.text
    assert "KeyError" not in answer.text and "Traceback" not in answer.text
    request_id = answer.headers["X-Request-Id"]
    logged = [r for r in caplog.records if r.name == "server.http"]
    assert any(request_id in r.getMessage() and r.exc_info for r in logged), (
        "the failure is logged with its request_id and traceback, for the operator"
    )


@pytest.mark.parametrize(
    ("name", "status", "error_type"),
    [
        ("HTTPError404", 404, "NOT_FOUND"),
        ("HTTPError400", 400, "VALIDATION_ERROR"),
        ("HTTPError502", 500, "INTERNAL"),
    ],
)
async def test_tornados_own_errors_answer_in_the_same_shape(
    client: httpx.AsyncClient, name: str, status: int, error_type: str
) -> None:
    answer = await client.get(f"/raise/{name}")
    assert shape_problems(answer, status, error_type) == []
    assert "internal-detail" not in answer.text


async def test_a_method_the_handler_lacks_answers_method_not_allowed_in_the_shape(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.patch("/raise/NotFound", content=b"{}")
    assert shape_problems(answer, 405, "METHOD_NOT_ALLOWED") == []


async def test_an_errors_extra_fields_join_its_detail(client: httpx.AsyncClient) -> None:
    answer = await client.get("/raise/extra")
    detail = answer.json()["detail"]
    assert answer.status_code == 400 and detail["type"] == "EXECUTION_ERROR"
    assert (detail["ename"], detail["evalue"], detail["traceback"]) == (
        "ValueError",
        "no",
        ["line 1"],
    )


async def test_each_request_gets_its_own_request_id(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/raise/NotFound")).headers["X-Request-Id"] for _ in range(3)}
    assert len(ids) == 3
