"""dataexec_kernel outside DataExec: through a DataExec server over HTTP, or a database.

Real parts only: the shared server over HTTP (one sandbox is enough here: the client does
not care which one the server uses), the embedded PostgreSQL with the demo data, the package
built as a wheel and installed with pip, and a plain ipykernel (the kernel environment's
Python, no broker) running an exported-notebook-like sequence of cells.

The client is blocking (urllib) and the server runs on this test's event loop, so client
calls run in a thread. Configuration goes through ``connect()`` or environment variables set
with monkeypatch; both are undone after every test.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import dataexec_client as dx_client
import dataexec_kernel
import pandas as pd
import pytest
import sqlalchemy as sa
from dataexec_kernel import errors, helpers
from dataexec_kernel.protocol import ARROW_STREAM
from dataexec_testing.api import ONE_SERVER, TOKEN_A, TOKEN_B, RunningServer, ok
from dataexec_testing.plain_kernel import (
    CLIENT_ENV,
    clean_env,
    install_client_package,
    run_plain_kernel,
)

from server.embedded.postgres import EmbeddedPostgres

JANUARY = "SELECT * FROM flights WHERE month = 1"  # 27,004 rows: over max_rows_cap (5,000)


@pytest.fixture(autouse=True)
def no_client_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts and ends with nothing configured in this process."""
    for name in CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)
    dx_client.disconnect()
    yield
    dx_client.disconnect()


async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


def sorted_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Row order and time units set aside: the same rows compare equal."""
    frame = frame.copy()
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.DatetimeTZDtype):
            frame[column] = frame[column].dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def read_direct(engine: sa.Engine, query: str, params: dict[str, Any] | None = None) -> Any:
    with engine.connect() as conn:
        return pd.read_sql(sa.text(query), conn, params=params)


def raised(function: Callable[..., Any], *args: Any) -> BaseException:
    """The exception ``function(*args)`` raises (in a thread); fails when it returns."""
    try:
        function(*args)
    except BaseException as exc:  # the caller asserts what it is
        return exc
    raise AssertionError(f"{function.__name__}{args!r} did not raise")


# --- remote mode: a DataExec server over HTTP ---------------------------------------------


@ONE_SERVER
async def test_remote_sql_from_the_environment_returns_the_whole_result(
    api: RunningServer, admin_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAEXEC_URL", api.url + "/")
    monkeypatch.setenv("DATAEXEC_TOKEN", TOKEN_A)
    frame = await in_thread(dataexec_kernel.sql, JANUARY)
    assert len(frame) == 27_004  # the whole result, not the preview (max_rows_cap is 5,000)
    direct = read_direct(admin_engine, JANUARY)
    assert list(frame.columns) == list(direct.columns)
    # Arrow keeps PostgreSQL's int4 as int32 where psycopg2 gives int64: the kinds agree.
    assert [t.kind for t in frame.dtypes] == [t.kind for t in direct.dtypes]
    pd.testing.assert_frame_equal(sorted_frame(frame), sorted_frame(direct), check_dtype=False)
    assert frame["carrier"].notna().all() and frame["dep_delay"].dtype == "float64"
    assert "DataExec at " + api.url in repr(helpers.make_conn())
    empty = await in_thread(dataexec_kernel.sql, "SELECT carrier, name FROM airlines WHERE false")
    assert list(empty.columns) == ["carrier", "name"] and len(empty) == 0


@ONE_SERVER
async def test_remote_load_of_a_key_the_server_made_equals_the_frame(
    api: RunningServer, admin_engine: sa.Engine
) -> None:
    code = (
        "pd.DataFrame({'x': range(6000), 'label': [f'r{i}' for i in range(6000)],"
        " 'ratio': [i / 7 for i in range(6000)]})"
    )
    async with api.client() as http:
        made = await http.post("/execute", json={"code": code})
        assert made.status_code == 200, made.text
        python_key = made.json()["cache_key"]
        queried = await http.post(
            "/execute",
            json={"language": "sql", "code": "SELECT * FROM airlines ORDER BY carrier"},
        )
        sql_key = queried.json()["cache_key"]
    dataexec_kernel.connect(api.url, TOKEN_A)
    loaded = await in_thread(dataexec_kernel.load, python_key)
    want = pd.DataFrame(
        {
            "x": range(6000),
            "label": [f"r{i}" for i in range(6000)],
            "ratio": [i / 7 for i in range(6000)],
        }
    )
    pd.testing.assert_frame_equal(loaded, want, check_dtype=False)
    assert loaded["x"].dtype == "int64"
    airlines = await in_thread(dataexec_kernel.load, sql_key)
    pd.testing.assert_frame_equal(
        airlines, read_direct(admin_engine, "SELECT * FROM airlines ORDER BY carrier")
    )


@ONE_SERVER
async def test_remote_errors_are_the_package_exceptions(
    api: RunningServer, admin_engine: sa.Engine
) -> None:
    dataexec_kernel.connect(api.url, TOKEN_A)
    refused = await in_thread(raised, dataexec_kernel.sql, "DELETE FROM flights")
    assert isinstance(refused, errors.SqlNotAllowed) and refused.type == "SQL_NOT_ALLOWED"
    assert refused.status == 400 and refused.message
    sneaky = "WITH d AS (DELETE FROM flights RETURNING *) SELECT count(*) FROM d"
    assert isinstance(await in_thread(raised, dataexec_kernel.sql, sneaky), errors.SqlNotAllowed)
    failed = await in_thread(raised, dataexec_kernel.sql, "SELECT no_such_column FROM flights")
    assert isinstance(failed, errors.DatabaseError) and "no_such_column" in str(failed)

    missing = await in_thread(raised, dataexec_kernel.load, str(uuid.uuid4()))
    assert isinstance(missing, errors.CacheKeyNotFound) and missing.status == 404
    odd = await in_thread(raised, dataexec_kernel.load, "../../etc/passwd")
    assert isinstance(odd, errors.CacheKeyNotFound)

    # Another tenant's key is simply unknown.
    async with api.client(token=TOKEN_B) as other:
        answer = await other.post("/execute", json={"language": "sql", "code": "SELECT 1 AS a"})
        foreign_key = answer.json()["cache_key"]
    foreign = await in_thread(raised, dataexec_kernel.load, foreign_key)
    assert isinstance(foreign, errors.CacheKeyNotFound)

    # :name parameters travel with the query.
    query = "SELECT count(*) AS n FROM flights WHERE month = :m AND carrier = :c"
    counted = await in_thread(dataexec_kernel.sql, query, {"m": 1, "c": "UA"})
    direct = read_direct(admin_engine, query, {"m": 1, "c": "UA"})
    assert int(counted.n[0]) == int(direct.n[0]) > 0
    # save() uploads the frame; its key loads back, for this tenant only.
    frame = pd.DataFrame({"a": [1, 2], "s": ["x", None]})
    key = await in_thread(dataexec_kernel.save, frame, "uploaded")
    pd.testing.assert_frame_equal(await in_thread(dataexec_kernel.load, key), frame)
    async with api.client() as mine, api.client(token=TOKEN_B) as other:
        meta = (await mine.get(f"/cache/{key}/meta")).json()
        assert meta["lineage"]["kind"] == "upload" and meta["lineage"]["name"] == "uploaded"
        assert (await other.get(f"/cache/{key}/meta")).status_code == 404
        refused = await mine.post(
            "/cache", content=b"not arrow", headers={"Content-Type": ARROW_STREAM}
        )
        assert refused.status_code == 400 and refused.json()["detail"]["type"] == (
            "VALIDATION_ERROR"
        )
        as_json = await mine.post("/cache", json={"a": [1]})
        assert as_json.status_code == 400


@ONE_SERVER
async def test_a_bad_or_missing_token_is_a_clear_auth_error(api: RunningServer) -> None:
    dataexec_kernel.connect(api.url, "not-a-token")
    bad = await in_thread(raised, dataexec_kernel.sql, "SELECT 1")
    assert isinstance(bad, errors.AuthenticationFailed) and bad.type == "UNAUTHORIZED"
    assert "refused" in str(bad) and "DATAEXEC_TOKEN" in str(bad)
    dataexec_kernel.connect(api.url)  # no token given and none in the environment
    none = await in_thread(raised, dataexec_kernel.load, str(uuid.uuid4()))
    assert isinstance(none, errors.AuthenticationFailed) and "no token was given" in str(none)
    dataexec_kernel.connect("http://127.0.0.1:9", TOKEN_A)  # nothing listens there
    unreachable = await in_thread(raised, dataexec_kernel.sql, "SELECT 1")
    assert isinstance(unreachable, errors.ServerUnavailable) and "cannot reach" in str(unreachable)


# --- database mode ---------------------------------------------------------------------------


def url_of(embedded_pg: EmbeddedPostgres, admin: bool = False) -> str:
    url = embedded_pg.admin_url if admin else embedded_pg.query_url
    return url.render_as_string(hide_password=False)


async def test_database_mode_with_and_without_params(
    embedded_pg: EmbeddedPostgres, admin_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAEXEC_DATABASE_URL", url_of(embedded_pg))
    query = "SELECT * FROM flights WHERE month = :m AND carrier = :c"
    params = {"m": 2, "c": "UA"}
    # Parameters: through SQLAlchemy.
    frame = await in_thread(dataexec_kernel.sql, query, params)
    direct = read_direct(admin_engine, query, params)
    assert len(frame) == len(direct) > 1000
    assert set(frame["month"]) == {2} and set(frame["carrier"]) == {"UA"}
    pd.testing.assert_frame_equal(sorted_frame(frame), sorted_frame(direct), check_dtype=False)
    # No parameters: Arrow from the database (ADBC), the same rows.
    plain = await in_thread(dataexec_kernel.sql, "SELECT * FROM flights WHERE month = 2")
    direct = read_direct(admin_engine, "SELECT * FROM flights WHERE month = 2")
    pd.testing.assert_frame_equal(sorted_frame(plain), sorted_frame(direct), check_dtype=False)
    # pandas' own API on conn, and the magic's function.
    conn = helpers.make_conn()
    counted = await in_thread(pd.read_sql, "SELECT count(*) AS n FROM airlines", conn)
    assert counted["n"].tolist() == [16]
    assert "the database at postgresql://" in repr(conn) and "@" in repr(conn)
    assert embedded_pg.query_url.password not in repr(conn)
    # The cache is DataExec's: say so.
    missing = await in_thread(raised, dataexec_kernel.load, str(uuid.uuid4()))
    assert isinstance(missing, errors.Unsupported) and "DATAEXEC_URL" in str(missing)
    failed = await in_thread(raised, dataexec_kernel.sql, "SELECT nope FROM flights")
    assert isinstance(failed, errors.DatabaseError) and "nope" in str(failed)


async def test_database_mode_is_read_only_even_with_a_writing_role(
    embedded_pg: EmbeddedPostgres,
) -> None:
    dataexec_kernel.connect(database_url=url_of(embedded_pg, admin=True))
    name = "client_mode_" + uuid.uuid4().hex[:8]
    for statement, params in (
        (f"CREATE TEMP TABLE {name} AS SELECT 1 AS a", None),  # ADBC path
        (f"CREATE TEMP TABLE {name} AS SELECT :v AS a", {"v": 1}),  # SQLAlchemy path
    ):
        refused = await in_thread(raised, dataexec_kernel.sql, statement, params)
        assert isinstance(refused, errors.DatabaseError), refused
        assert "read-only" in str(refused)
    # The same client still answers queries after the refusals.
    frame = await in_thread(dataexec_kernel.sql, "SELECT count(*) AS n FROM airlines")
    assert frame["n"].tolist() == [16]


# (Without configuration, and a cheap import: tests/unit/test_client_package.py.)


# --- the package installed with pip, in a plain ipykernel --------------------------------------


@pytest.fixture(scope="module")
async def installed_package(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Path]:
    """The client package as a wheel, installed with pip into a directory of its own."""
    yield await install_client_package(tmp_path_factory.mktemp("client-package"))


def test_the_wheel_holds_the_package_only_with_light_dependencies(
    installed_package: Path,
) -> None:
    [info] = installed_package.glob("dataexec_kernel-*.dist-info")
    assert info.name == f"dataexec_kernel-{dataexec_kernel.__version__}.dist-info"
    tops = {p.name for p in installed_package.iterdir() if not p.name.endswith(".dist-info")}
    assert tops - {"bin"} == {"dataexec_kernel", "dataexec_client"}
    metadata = (info / "METADATA").read_text()
    required = [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert sorted(r.split(">")[0].split("=")[0].lower() for r in required) == ["pandas", "pyarrow"]
    assert "Name: dataexec-kernel" in metadata
    assert 'Requires-Dist: SQLAlchemy>=2.0; extra == "database"' in metadata
    for module in ("protocol.py", "helpers.py", "capture.py"):
        assert (installed_package / "dataexec_kernel" / module).is_file()
    for module in ("__init__.py", "remote.py", "database.py"):
        assert (installed_package / "dataexec_client" / module).is_file()


NOTEBOOK_SETUP = "import numpy as np\nimport pandas as pd\n%load_ext dataexec_kernel"


@ONE_SERVER
async def test_load_ext_in_a_plain_ipykernel_runs_an_exported_notebook(
    api: RunningServer, admin_engine: sa.Engine, installed_package: Path, tmp_path: Path
) -> None:
    python = str(api.settings.kernel_env / "bin" / "python")
    async with api.client() as http:
        made = await http.post(
            "/execute",
            json={"language": "sql", "code": "SELECT carrier, name FROM airlines"},
        )
        key = made.json()["cache_key"]
    env = clean_env(
        PYTHONPATH=str(installed_package),
        IPYTHONDIR=str(tmp_path / "ipython"),
        DATAEXEC_URL=api.url,
        DATAEXEC_TOKEN=TOKEN_A,
    )
    cells = [
        NOTEBOOK_SETUP,
        "%%sql df_1\nSELECT carrier, count(*) AS n FROM flights GROUP BY carrier",
        f"input_data = {{'prev': load('{key}')}}\n"
        "result_df = df_1.merge(input_data['prev'], on='carrier')",
        "import json, dataexec_kernel\n"
        "print(json.dumps({'rows': len(df_1), 'total': int(df_1['n'].sum()),"
        " 'merged': sorted(result_df.columns), 'merged_rows': len(result_df),"
        " 'read_sql': int(pd.read_sql('SELECT count(*) AS n FROM planes', conn)['n'][0]),"
        " 'package': dataexec_kernel.__file__,"
        " 'helpers': [n in globals() for n in ('sql', 'load', 'save', 'conn')],"
        " 'capture': '__dataexec__' in globals(),"
        " 'pip': get_ipython().find_line_magic('pip').__module__}))",
        "sql('DELETE FROM flights')",
        "save(df_1)",
    ]
    results = await in_thread(run_plain_kernel, python, env, cells, tmp_path)
    for result in results[:4]:
        assert result["status"] == "ok", result
    facts = json.loads(results[3]["stdout"])
    direct = read_direct(
        admin_engine,
        "SELECT count(*) AS rows, sum(n) AS total FROM ("
        "SELECT carrier, count(*) AS n FROM flights GROUP BY carrier) t",
    )
    assert facts["rows"] == direct["rows"][0] == 16
    assert facts["total"] == direct["total"][0] == 336_776
    assert facts["merged"] == ["carrier", "n", "name"] and facts["merged_rows"] == 16
    assert (
        facts["read_sql"] == read_direct(admin_engine, "SELECT count(*) AS n FROM planes")["n"][0]
    )
    assert facts["package"].startswith(str(installed_package))  # the pip-installed copy
    assert facts["helpers"] == [True, True, True, True]
    # Result capture and the pip refusal belong to DataExec's own kernels only.
    assert facts["capture"] is False
    assert not facts["pip"].startswith("dataexec_kernel")
    assert results[4]["status"] == "error"
    assert results[4]["error"].startswith("SqlNotAllowed:")
    assert results[5]["status"] == "ok"  # save() uploads through the server


# --- inside DataExec nothing changed -----------------------------------------------------------


@ONE_SERVER
async def test_inside_a_dataexec_kernel_the_broker_still_answers(
    api: RunningServer, session_id: str
) -> None:
    async with api.client() as http:
        await ok(http, session_id, "x = 1")
        answer = await ok(
            http,
            session_id,
            "month_1 = sql('SELECT count(*) AS n FROM flights WHERE month = :m', {'m': 1})\n"
            "import importlib.util\n"
            "pd.DataFrame({'n': [int(month_1['n'][0])], 'conn': [repr(conn)],"
            " 'capture': ['__dataexec__' in dir()],"
            " 'client': [importlib.util.find_spec('dataexec_client') is None],"
            " 'key': [save(month_1)]})",
        )
        [[n, conn_repr, capture, current, key]] = answer["data"]["rows"]
        # The analysts' client (and its database drivers) never ships into a kernel.
        assert n == 27_004 and capture is True and current is True
        assert conn_repr == "<dataexec conn: read-only SQL through the DataExec broker>"
        saved = await http.get(f"/cache/{key}/meta")
        assert saved.status_code == 200 and saved.json()["row_count"] == 1
