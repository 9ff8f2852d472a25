"""Sessions as notebooks over HTTP: export (every output kind, failures, timeouts, a replaced
kernel), the clean and script variants, charts in answers, and import by replay."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator

import httpx
import nbformat
import pytest
from dataexec_testing.api import (
    TOKEN_A,
    TOKEN_B,
    RunningServer,
    assert_error,
    ok,
    run,
    server_on,
    wait_for,
)

from server.embedded.postgres import EmbeddedPostgres

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHART = """\
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(3, 2))
ax.bar(['a', 'b'], [3, 5])
ax.set_title('two bars')
"""


async def notebook_of(client: httpx.AsyncClient, session: str, **params: str) -> dict:
    response = await client.get(f"/sessions/{session}/notebook", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def code_cells(notebook: dict) -> list[dict]:
    return [c for c in notebook["cells"] if c["cell_type"] == "code"][1:]  # after setup


def joined(value: str | list[str]) -> str:
    """A notebook string field (nbformat may store it as a list of lines)."""
    return value if isinstance(value, str) else "".join(value)


def png_of(outputs: list[dict]) -> bytes:
    [image] = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    return base64.b64decode(joined(image))


async def test_a_chart_comes_back_as_a_png_output(
    client: httpx.AsyncClient, session_id: str
) -> None:
    answer = await ok(client, session_id, CHART)
    assert png_of(answer["outputs"]).startswith(PNG_SIGNATURE)
    assert [o["output_type"] for o in answer["outputs"]] == ["execute_result", "display_data"]
    assert answer["outputs"][0]["data"]["text/plain"] == "Text(0.5, 1.0, 'two bars')"


async def test_export_has_every_step_with_its_outputs_and_facts(
    api: RunningServer, client: httpx.AsyncClient, session_id: str
) -> None:
    sql = await client.post(
        f"/sessions/{session_id}/execute",
        json={"language": "sql", "code": "SELECT * FROM airlines", "result_name": "al"},
    )
    assert sql.status_code == 200
    await ok(
        client, session_id, "import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)"
    )
    await ok(client, session_id, CHART)
    await ok(client, session_id, "al.head(3)")
    failed = await run(client, session_id, "1 / 0")
    assert_error(failed, 400, "EXECUTION_ERROR")
    await client.post(f"/sessions/{session_id}/restart")
    await ok(client, session_id, "len(al)")

    notebook = await notebook_of(client, session_id)
    nbformat.validate(nbformat.from_dict(notebook))
    intro = joined(notebook["cells"][0]["source"])
    assert session_id in intro and "postgresql" in intro
    cells = code_cells(notebook)
    assert [c["execution_count"] for c in cells] == [1, 2, 3, 4, 5, 6]
    assert joined(cells[0]["source"]) == "%%sql al\nSELECT * FROM airlines"
    facts = cells[0]["metadata"]["dataexec"]
    assert facts["status"] == "ok" and facts["row_count"] == 16
    assert facts["cache_key"] == sql.json()["cache_key"] and facts["result_name"] == "al"
    streams = {
        o["name"]: joined(o["text"]) for o in cells[1]["outputs"] if o["output_type"] == "stream"
    }
    assert streams == {"stdout": "to stdout\n", "stderr": "to stderr\n"}
    assert png_of(cells[2]["outputs"]).startswith(PNG_SIGNATURE)
    [table] = cells[3]["outputs"]
    assert table["output_type"] == "execute_result"
    assert "<table" in joined(table["data"]["text/html"])
    [error] = cells[4]["outputs"]
    assert error["output_type"] == "error" and error["ename"] == "ZeroDivisionError"
    assert cells[4]["metadata"]["dataexec"]["status"] == "failed"
    assert "raises-exception" in cells[4]["metadata"]["tags"]
    replaced = cells[5]["metadata"]["dataexec"]
    assert replaced["kernel_replaced"] == "restart" and replaced["restored_frames"] == ["al"]
    markdown = [c for c in notebook["cells"] if c["cell_type"] == "markdown"]
    assert any("restart" in joined(c["source"]).lower() for c in markdown[1:])

    # Nothing secret or internal reaches the file.
    text = json.dumps(notebook)
    internal_id = (await api.runtime.sessions.get(api.settings.tenants["acme"], session_id)).id
    for secret in (TOKEN_A, internal_id, "/run/", str(api.settings.state_dir), "password"):
        assert secret not in text
    assert api.settings.database_url.split("@")[0] not in text


async def test_a_timed_out_step_is_included_and_marked(client: httpx.AsyncClient) -> None:
    session = "timeout-" + secrets.token_hex(4)
    created = await client.post("/sessions", json={"session_id": session, "pool": "small"})
    assert created.status_code == 201
    try:
        await ok(client, session, "x = 1")
        slow = await run(client, session, "import time\nwhile True: time.sleep(0.1)")
        assert_error(slow, 400, "TIMEOUT")
        cells = code_cells(await notebook_of(client, session))
        facts = cells[1]["metadata"]["dataexec"]
        assert facts["status"] == "failed" and facts["error_type"] == "TIMEOUT"
        assert "dataexec-failed" in cells[1]["metadata"]["tags"]
    finally:
        await client.delete(f"/sessions/{session}")


async def test_clean_and_script_variants(client: httpx.AsyncClient, session_id: str) -> None:
    await client.post(
        f"/sessions/{session_id}/execute",
        json={"language": "sql", "code": "SELECT 1 AS one", "result_name": "tiny"},
    )
    await ok(client, session_id, "print(tiny.one.sum())")
    clean = await notebook_of(client, session_id, outputs="false")
    nbformat.validate(nbformat.from_dict(clean))
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code_cells(clean))
    script = await client.get(f"/sessions/{session_id}/notebook", params={"format": "py"})
    assert script.status_code == 200
    assert script.headers["Content-Type"].startswith("text/x-python")
    assert f'filename="{session_id}.py"' in script.headers["Content-Disposition"]
    # jupytext's form of a cell magic: it reads back as the same %%sql cell.
    assert '# %% magic_args="tiny" language="sql"\n# SELECT 1 AS one' in script.text
    assert "print(tiny.one.sum())" in script.text
    download = await client.get(f"/sessions/{session_id}/notebook")
    assert download.headers["Content-Type"] == "application/x-ipynb+json"
    assert f'filename="{session_id}.ipynb"' in download.headers["Content-Disposition"]
    bad = await client.get(f"/sessions/{session_id}/notebook", params={"format": "pdf"})
    assert_error(bad, 400, "VALIDATION_ERROR")
    assert_error(
        await client.get(f"/sessions/{session_id}/notebook", params={"outputs": "maybe"}),
        400,
        "VALIDATION_ERROR",
    )
    async with httpx.AsyncClient(
        base_url=str(client.base_url), headers={"Authorization": f"Bearer {TOKEN_B}"}
    ) as other:
        assert_error(await other.get(f"/sessions/{session_id}/notebook"), 404, "NOT_FOUND")


async def test_an_exported_notebook_imports_into_a_new_session(
    client: httpx.AsyncClient, session_id: str
) -> None:
    await client.post(
        f"/sessions/{session_id}/execute",
        json={"language": "sql", "code": "SELECT * FROM airlines", "result_name": "al"},
    )
    await ok(client, session_id, "named = al[al.name.str.contains('Air')]")
    await run(client, session_id, "raise ValueError('tolerated')")
    await ok(client, session_id, "result_df = named.sort_values('carrier')")
    exported = await notebook_of(client, session_id)
    copy = "copy-" + secrets.token_hex(4)
    response = await client.post("/sessions", json={"session_id": copy, "notebook": exported})
    try:
        assert response.status_code == 201, response.text
        assert response.headers["Location"] == f"/sessions/{copy}"
        outcomes = response.json()["import"]
        assert outcomes["state"] == "done" and outcomes["total"] == 4
        assert [c["status"] for c in outcomes["cells"]] == ["ok", "ok", "failed", "ok"]
        assert outcomes["cells"][2]["error"]["ename"] == "ValueError"
        assert outcomes["cells"][0]["result_name"] == "al"
        last = outcomes["cells"][3]
        theirs = await client.get(f"/cache/{last['cache_key']}", params={"format": "json"})
        original = code_cells(exported)[3]["metadata"]["dataexec"]["cache_key"]
        ours = await client.get(f"/cache/{original}", params={"format": "json"})
        assert theirs.json() == ours.json()
        again = await notebook_of(client, copy)
        assert [c["source"] for c in code_cells(again)] == [
            c["source"] for c in code_cells(exported)
        ]
    finally:
        await client.delete(f"/sessions/{copy}")


async def test_import_stops_at_an_untolerated_failure_and_takes_plain_cells(
    client: httpx.AsyncClient,
) -> None:
    session = "cells-" + secrets.token_hex(4)
    cells = [
        {"code": "SELECT 2 AS two", "language": "sql", "result_name": "t"},
        "u = t.two * 3",
        "raise KeyError('stop here')",
        "never = True",
    ]
    response = await client.post("/sessions", json={"session_id": session, "cells": cells})
    try:
        assert response.status_code == 201, response.text
        outcome = response.json()["import"]
        assert outcome["state"] == "failed"
        assert [c["status"] for c in outcome["cells"]] == ["ok", "ok", "failed", "skipped"]
        polled = await client.get(f"/sessions/{session}/import")
        assert polled.json()["cells"] == outcome["cells"]
    finally:
        await client.delete(f"/sessions/{session}")


@pytest.mark.parametrize(
    "body",
    [
        {"notebook": {"cells": "no"}},
        {"notebook": {"nbformat": 3, "cells": []}},
        {"cells": [42]},
        {"notebook": {"nbformat": 4, "cells": []}, "cells": []},
        {"cells": ["1"], "stop_on_error": "yes"},
        {"cells": [{"code": "%%sql 1bad\nSELECT 1"}]},
    ],
)
async def test_bad_imports_are_refused_before_any_session_exists(
    client: httpx.AsyncClient, body: dict
) -> None:
    session = "bad-" + secrets.token_hex(4)
    assert_error(
        await client.post("/sessions", json={"session_id": session, **body}),
        400,
        "VALIDATION_ERROR",
    )
    assert_error(await client.get(f"/sessions/{session}"), 404, "NOT_FOUND")


@pytest.fixture(scope="module")
async def impatient(
    tmp_path_factory: pytest.TempPathFactory, embedded_pg: EmbeddedPostgres
) -> AsyncIterator[RunningServer]:
    """A server that answers an import after 0.2 s at most, so long imports are polled."""
    async with server_on(
        embedded_pg, tmp_path_factory.mktemp("impatient"), DATAEXEC_IMPORT_WAIT_S="0.2"
    ) as server:
        yield server


async def test_a_long_import_answers_202_and_is_polled(impatient: RunningServer) -> None:
    async with impatient.client() as client:
        cells = ["import time; time.sleep(1)", "done = 'yes'", "done"]
        response = await client.post("/sessions", json={"session_id": "long", "cells": cells})
        assert response.status_code == 202, response.text
        assert response.headers["Location"] == "/sessions/long/import"
        assert response.json()["import"]["state"] == "running"

        async def finished() -> dict | None:
            state = (await client.get("/sessions/long/import")).json()
            return state if state["state"] != "running" else None

        final = await wait_for(finished, timeout=30)
        assert final["state"] == "done" and final["finished"] == 3
        assert [c["execution_count"] for c in final["cells"]] == [1, 2, 3]
        assert_error(await client.get("/sessions/nothing/import"), 404, "NOT_FOUND")
