"""The result contract computed two ways, compared: SQL without a session runs in the server
(the server's Arrow table), the same SQL in a session runs in a kernel (the kernel's
DataFrame, turned back into Arrow). Both answer through the kernel protocol's one
implementation of preview, types and statistics, so the answers must agree column by column:
dates get min and max on both paths, integers with nulls are float64 on both, and so on."""

from __future__ import annotations

import httpx
import pytest
from dataexec_testing.api import ONE_SERVER, RunningServer

QUERIES = {
    "typed values with nulls": """
        SELECT * FROM (VALUES
            (1, 2.5::float8, 'a', true, date '2024-02-29', timestamp '2024-03-01 12:00:00',
             1.25::numeric(10, 2)),
            (NULL, NULL, NULL, NULL, NULL, NULL, NULL),
            (3, -1.0::float8, 'a', false, date '2023-01-01', timestamp '2020-01-01 00:00:00',
             7.5::numeric(10, 2))
        ) AS t(i, f, s, b, d, ts, dec)""",
    "demo data": "SELECT origin, dest, dep_delay, time_hour, month FROM flights "
    "WHERE day = 1 AND month <= 2 ORDER BY time_hour, carrier, flight LIMIT 500",
    "groups": "SELECT carrier, count(*) AS n, avg(arr_delay) AS mean_delay FROM flights "
    "GROUP BY carrier ORDER BY carrier",
}


@ONE_SERVER
@pytest.mark.parametrize("query", QUERIES.values(), ids=QUERIES.keys())
async def test_the_server_and_a_kernel_answer_the_same_frame_alike(
    api: RunningServer, client: httpx.AsyncClient, session_id: str, query: str
) -> None:
    in_server = await client.post("/execute", json={"language": "sql", "code": query})
    in_kernel = await client.post(
        f"/sessions/{session_id}/execute", json={"language": "sql", "code": query}
    )
    assert in_server.status_code == in_kernel.status_code == 200, (in_server.text, in_kernel.text)
    server, kernel = in_server.json(), in_kernel.json()
    assert server["data"] == kernel["data"]
    assert server["metadata"]["row_count"] == kernel["metadata"]["row_count"]
    for ours, theirs in zip(
        server["metadata"]["result_schema"], kernel["metadata"]["result_schema"], strict=True
    ):
        assert ours == theirs, (ours, theirs)


@ONE_SERVER
async def test_a_date_column_gets_min_and_max_on_both_paths(
    client: httpx.AsyncClient, session_id: str
) -> None:
    query = "SELECT date '2024-01-02' AS d UNION ALL SELECT date '2023-05-06'"
    answers = [
        await client.post("/execute", json={"language": "sql", "code": query}),
        await client.post(f"/sessions/{session_id}/execute", json={"code": f"sql({query!r})"}),
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        stats = answer.json()["metadata"]["result_schema"][0]["stats"]
        assert stats == {"min": "2023-05-06", "max": "2024-01-02", "null_count": 0}
