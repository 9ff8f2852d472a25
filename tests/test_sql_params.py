"""``pd.read_sql(query, conn, params=...)`` as pandas users write it, in a real kernel.

pandas refuses ``params`` on ADBC connections (``NotImplementedError: 'params' is not
implemented for ADBC drivers``) and ``conn`` is one, for pandas' Arrow path. Parameters in
every style users bring (a dict for ``:name`` or ``%(name)s``, a list for ``%s``, ``?`` or
``$1``) must reach the broker as ``:name`` ones, with no warning, and give the rows that
``sql()`` gives; the same holds outside DataExec, where ``conn`` queries a database directly.
"""

from __future__ import annotations

import asyncio

import dataexec_client as dx_client
import httpx
import pandas as pd
import pytest
from dataexec_kernel import helpers
from dataexec_testing.api import ONE_SERVER, ok, value_of

from server.embedded.postgres import EmbeddedPostgres

# Each style of marker with its parameters: all ask for American Airlines' January flights.
STYLES = [
    ("SELECT count(*) AS n FROM flights WHERE carrier = :c AND month = :m", {"c": "AA", "m": 1}),
    (
        "SELECT count(*) AS n FROM flights WHERE carrier = %(c)s AND month = %(m)s",
        {"c": "AA", "m": 1},
    ),
    ("SELECT count(*) AS n FROM flights WHERE carrier = %s AND month = %s", ["AA", 1]),
    ("SELECT count(*) AS n FROM flights WHERE carrier = ? AND month = ?", ("AA", 1)),
    ("SELECT count(*) AS n FROM flights WHERE carrier = $1 AND month = $2::int", ["AA", 1]),
]
AA_JANUARY = 2794


@ONE_SERVER
async def test_read_sql_takes_params_in_every_style_in_a_kernel(
    client: httpx.AsyncClient, session_id: str
) -> None:
    assert await value_of(
        client, session_id, f"int(sql({STYLES[0][0]!r}, {STYLES[0][1]!r}).n[0])"
    ) == (AA_JANUARY)
    for query, params in STYLES:
        answer = await ok(
            client,
            session_id,
            f"""
import warnings
with warnings.catch_warnings():
    warnings.simplefilter('error')
    counted = pd.read_sql({query!r}, conn, params={params!r})
int(counted.n[0])""",
        )
        assert answer["data"]["rows"] == [[AA_JANUARY]], query
    # read_sql_query and the cursor take them too; a literal '%' or '?' is left alone.
    assert await value_of(
        client,
        session_id,
        'int(pd.read_sql_query("SELECT count(*) AS n FROM airlines '
        "WHERE name LIKE '%%Air%%' AND carrier <> %s\", conn, params=['AA']).n[0])",
    ) == await value_of(
        client,
        session_id,
        "int(sql(\"SELECT count(*) AS n FROM airlines WHERE name LIKE '%Air%' "
        "AND carrier <> 'AA'\").n[0])",
    )
    cursor = await value_of(
        client,
        session_id,
        "c = conn.cursor()\nc.execute('SELECT $1 AS a', [41])\n"
        "int(c.fetch_arrow_table()['a'][0].as_py()) + 1",
    )
    assert cursor == 42


async def test_read_sql_takes_params_straight_from_a_database(
    embedded_pg: EmbeddedPostgres,
) -> None:
    dx_client.connect(database_url=embedded_pg.query_url.render_as_string(hide_password=False))
    try:
        conn = helpers.make_conn()
        for query, params in STYLES:
            frame = await asyncio.to_thread(pd.read_sql, query, conn, params=params)
            assert frame["n"].tolist() == [AA_JANUARY], query
        with pytest.raises(TypeError, match="2 parameters"):
            await asyncio.to_thread(
                pd.read_sql, "SELECT count(*) FROM flights WHERE month = %s", conn, params=[1, 2]
            )
    finally:
        dx_client.disconnect()
