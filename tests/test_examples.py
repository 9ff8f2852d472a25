"""The example notebooks in ``notebooks/`` run in DataExec, export, and re-run elsewhere.

For each example, against the shared server over HTTP (bubblewrap only: the notebooks do not
care which sandbox runs them):

1. its code cells, read with ``server.notebook.cells_from_notebook``, are sent one by one as
   the steps of a new session (``%%sql name`` cells as SQL with ``result_name``), and each
   must succeed, charts with an image;
2. the session's export must be valid nbformat with the same steps, each step's cache key in
   its cell metadata, and an image/png output on every chart cell;
3. the export, as downloaded, is re-run top to bottom by nbclient in a plain ipykernel (the
   kernel environment's Python, the client package installed with pip, ``DATAEXEC_URL`` and
   ``DATAEXEC_TOKEN`` pointing at the test server), and every step that had a cache key in
   the session must produce the same frame again.

How the re-run's frames are read: an IPython startup file in the plain kernel's own
``IPYTHONDIR`` (not a cell: the notebook runs exactly as exported) records each cell's result
as DataExec's kernels define it (``result_df`` if the cell set it, else the value of its last
expression, shaped into a frame by the client package's own rule) as a Parquet file named by
the cell's execution count, which nbclient writes back into the executed notebook.

Frames compare with the same columns and rows in the same order (every example orders its
queries by a unique key, so the order is defined), values equal (floats to a relative 1e-9:
PostgreSQL's parallel aggregates may add in another order) and dtypes of the same kind:
integer widths may differ between the two paths (see ``same_kind``).
"""

from __future__ import annotations

import copy
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pandas as pd
import pytest
from dataexec_testing.api import ONE_SERVER, TOKEN_A, RunningServer
from dataexec_testing.plain_kernel import (
    KERNEL_NAME,
    clean_env,
    install_client_package,
    plain_kernel_specs,
)
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from server.notebook.export import RAISES_TAG
from server.notebook.importer import ImportedCell, cells_from_notebook

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
EXAMPLES = sorted(NOTEBOOKS.glob("*.ipynb"))
CHART_TAG = "chart"  # the examples tag the cells that draw a figure
# A generous bound per step: the examples are meant to take well under a second a step on two
# cores; this catches a query that went from aggregating in the database to something slow.
STEP_TIME_LIMIT_MS = 10_000
RESULTS_ENV = "RECORDED_RESULTS_DIR"

# An IPython startup file for the plain kernel: a test instrument, not part of any notebook.
RESULT_RECORDER = f'''
def _record_results():
    """After each cell, write its result, as DataExec's kernels define it, to Parquet."""
    import os
    from pathlib import Path

    ipython = get_ipython()
    results = Path(os.environ["{RESULTS_ENV}"])
    unset = object()
    before = {{"result_df": unset}}

    def pre_run_cell(info):
        before["result_df"] = ipython.user_ns.get("result_df", unset)

    def post_run_cell(result):
        import pyarrow.parquet as pq
        from dataexec_kernel.capture import as_frame
        from dataexec_kernel.protocol import arrow_table

        # DataExec clears result_df before each cell; a plain kernel keeps it, so a cell set
        # it only when it is a different object than before the cell.
        now = ipython.user_ns.get("result_df", unset)
        frame = as_frame(now if now is not before["result_df"] else result.result)
        if frame is not None and result.execution_count is not None:
            pq.write_table(arrow_table(frame), results / f"{{result.execution_count}}.parquet")

    ipython.events.register("pre_run_cell", pre_run_cell)
    ipython.events.register("post_run_cell", post_run_cell)


_record_results()
del _record_results
'''


@pytest.fixture(scope="module")
async def client_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client package as a wheel, installed with pip into a directory of its own."""
    return await install_client_package(tmp_path_factory.mktemp("client-package"))


def read_example(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


@dataclass
class Step:
    """One code cell of an example, sent as a session step, and the server's answer."""

    cell: ImportedCell
    tags: list[str]
    status_code: int
    answer: dict[str, Any]

    @property
    def is_chart(self) -> bool:
        return CHART_TAG in self.tags


async def run_steps(http: httpx.AsyncClient, session: str, document: dict[str, Any]) -> list[Step]:
    """Send the notebook's code cells as the session's steps, in order; every answer kept."""
    steps = []
    for cell in cells_from_notebook(document):
        body: dict[str, Any] = {"code": cell.code}
        if cell.language == "sql":
            body.update(language="sql", result_name=cell.result_name)
        response = await http.post(f"/sessions/{session}/execute", json=body)
        tags = document["cells"][cell.cell_index].get("metadata", {}).get("tags", [])
        steps.append(Step(cell, tags, response.status_code, response.json()))
    return steps


async def export_of(http: httpx.AsyncClient, session: str) -> nbformat.NotebookNode:
    response = await http.get(f"/sessions/{session}/notebook")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/x-ipynb+json")
    notebook = nbformat.reads(response.text, as_version=nbformat.NO_CONVERT)
    nbformat.validate(notebook)  # raises on an invalid notebook
    assert notebook.nbformat == 4
    return notebook


def step_cells(notebook: nbformat.NotebookNode) -> dict[int, tuple[int, Any]]:
    """The export's step cells by session execution count: (position, cell)."""
    return {
        cell.metadata["dataexec"]["execution_count"]: (index, cell)
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and "execution_count" in cell.metadata.get("dataexec", {})
    }


def output_types(cell: Any) -> set[str]:
    return {mimetype for output in cell.get("outputs", []) for mimetype in output.get("data", {})}


def prepare_recorder(ipython_dir: Path, results: Path) -> None:
    """The result recorder as a startup file of ``ipython_dir``, writing into ``results``."""
    results.mkdir(parents=True)
    startup = ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-record-results.py").write_text(RESULT_RECORDER)


async def rerun_elsewhere(
    notebook: nbformat.NotebookNode,
    api: RunningServer,
    package: Path,
    workdir: Path,
) -> tuple[nbformat.NotebookNode, Path]:
    """Run a copy of ``notebook`` top to bottom with nbclient in a plain ipykernel that reaches
    the test server through the client package; the executed copy and its results' dir.

    Raises nbclient's ``CellExecutionError`` when a cell not tagged raises-exception fails.
    """
    results = workdir / "results"
    env = clean_env(
        PYTHONPATH=str(package),
        IPYTHONDIR=str(workdir / "ipython"),
        DATAEXEC_URL=api.url,
        DATAEXEC_TOKEN=TOKEN_A,
        **{RESULTS_ENV: str(results)},
    )
    prepare_recorder(workdir / "ipython", results)
    python = str(api.settings.kernel_env / "bin" / "python")
    manager = AsyncKernelManager(
        kernel_name=KERNEL_NAME, kernel_spec_manager=plain_kernel_specs(python, workdir)
    )
    manager.connection_file = str(workdir / "connection.json")
    executed = copy.deepcopy(notebook)
    for cell in executed.cells:  # nothing the export held can pass for the re-run's own
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    runner = NotebookClient(
        executed,
        km=manager,
        timeout=120,
        startup_timeout=120,
        resources={"metadata": {"path": str(workdir)}},
    )
    # cleanup_kc: nbclient stops the kernel it started even though the manager is ours.
    await runner.async_execute(cleanup_kc=True, env=env)
    return executed, results


async def session_frame(http: httpx.AsyncClient, key: str) -> pd.DataFrame:
    response = await http.get(f"/cache/{key}", params={"format": "parquet"})
    assert response.status_code == 200, response.text
    return pd.read_parquet(io.BytesIO(response.content))


def same_kind(left: Any, right: Any) -> bool:
    """Dtypes a re-run may differ in without the data differing.

    Integers may come back wider or narrower from the other path (PostgreSQL's int4 is int32
    in Arrow, and an operation on it in pandas may widen it to int64): the kinds must agree,
    the widths need not. Every other dtype must be the same.
    """
    if pd.api.types.is_integer_dtype(left) and pd.api.types.is_integer_dtype(right):
        return True
    return str(left) == str(right)


def assert_same_frame(rerun: pd.DataFrame, session: pd.DataFrame, what: str) -> None:
    assert list(rerun.columns) == list(session.columns), what
    assert len(rerun) == len(session), what
    differing = {
        column: (str(rerun[column].dtype), str(session[column].dtype))
        for column in session.columns
        if not same_kind(rerun[column].dtype, session[column].dtype)
    }
    assert not differing, f"{what}: dtypes differ {differing}"
    pd.testing.assert_frame_equal(
        rerun, session, check_dtype=False, check_exact=False, rtol=1e-9, obj=what
    )


@ONE_SERVER
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.stem)
async def test_an_example_runs_in_dataexec_exports_and_reruns_to_the_same_frames(
    api: RunningServer, session_id: str, client_package: Path, example: Path, tmp_path: Path
) -> None:
    document = read_example(example)
    nbformat.validate(nbformat.from_dict(document))
    assert all(not c.get("outputs") for c in document["cells"]), "examples are kept clean"

    async with api.client(timeout=120) as http:
        # 1. Step by step through DataExec.
        steps = await run_steps(http, session_id, document)
        for step in steps:
            where = f"{example.name} cells[{step.cell.cell_index}]"
            assert step.status_code == 200, f"{where}: {step.answer}"
            assert step.answer["status"] == "success", where
            assert step.answer["metadata"]["execution_time_ms"] < STEP_TIME_LIMIT_MS, where
            if step.cell.language == "sql":
                assert step.answer["result_name"] == step.cell.result_name, where
                assert step.answer["cache_key"], where
                assert step.answer["metadata"]["row_count"] > 0, where
            if step.is_chart:
                assert "image/png" in output_types(step.answer), where
        assert any(step.is_chart for step in steps), "each example draws a chart"
        assert sum(step.cell.language == "sql" for step in steps) >= 1
        final = steps[-1].answer
        assert final["cache_key"] and final["metadata"]["row_count"] > 0, "ends with a frame"
        assert final["data"]["columns"], "the last step's result is a DataFrame"

        # 2. The session's export.
        exported = await export_of(http, session_id)
        assert [(c.language, c.code, c.result_name) for c in cells_from_notebook(exported)] == [
            (s.cell.language, s.cell.code, s.cell.result_name) for s in steps
        ], "the export holds the steps as sent"
        by_count = step_cells(exported)
        assert sorted(by_count) == [s.answer["execution_count"] for s in steps]
        for step in steps:
            _, cell = by_count[step.answer["execution_count"]]
            facts = cell.metadata["dataexec"]
            assert facts["status"] == "ok" and facts["cache_key"] == step.answer["cache_key"]
            if step.is_chart:
                assert "image/png" in output_types(cell), cell.source

        # 3. The export re-run outside DataExec, and its frames against the session's.
        executed, results = await rerun_elsewhere(exported, api, client_package, tmp_path)
        compared = 0
        for step in steps:
            key = step.answer["cache_key"]
            if key is None:
                continue
            position, _ = by_count[step.answer["execution_count"]]
            rerun_count = executed.cells[position].execution_count
            recorded = results / f"{rerun_count}.parquet"
            what = f"{example.name} step {step.answer['execution_count']} ({step.cell.code[:40]!r})"
            assert recorded.is_file(), f"{what}: the re-run produced no frame"
            assert_same_frame(pd.read_parquet(recorded), await session_frame(http, key), what)
            compared += 1
        assert compared >= 3
        for step in steps:
            if step.is_chart:  # ipykernel's inline backend: a chart elsewhere is an image too
                position, cell = by_count[step.answer["execution_count"]]
                assert "image/png" in output_types(executed.cells[position]), cell.source


@ONE_SERVER
async def test_an_export_with_failed_steps_reruns_to_the_end(
    api: RunningServer, session_id: str, client_package: Path, tmp_path: Path
) -> None:
    document = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(source)
            for source in (
                "%%sql carriers\nSELECT carrier, name FROM airlines ORDER BY carrier",
                "carriers['no_such_column']",  # KeyError
                "%%sql removed\nDELETE FROM airlines",  # refused by the read-only guard
                "carriers.assign(name_length=carriers['name'].str.len())",
            )
        ]
    )
    async with api.client(timeout=120) as http:
        steps = await run_steps(http, session_id, document)
        assert [s.status_code for s in steps] == [200, 400, 400, 200]
        assert steps[1].answer["detail"]["ename"] == "KeyError"
        exported = await export_of(http, session_id)
        cells = [cell for _, cell in sorted(step_cells(exported).values(), key=lambda p: p[0])]
        assert [c.metadata["dataexec"]["status"] for c in cells] == ["ok", "failed", "failed", "ok"]
        for failed in cells[1:3]:
            assert RAISES_TAG in failed.metadata["tags"]

        executed, results = await rerun_elsewhere(exported, api, client_package, tmp_path)
        by_count = step_cells(executed)
        ran = [cell for _, cell in sorted(by_count.values(), key=lambda p: p[0])]
        errors = [[o["ename"] for o in cell.outputs if o["output_type"] == "error"] for cell in ran]
        assert errors == [[], ["KeyError"], ["SqlNotAllowed"], []]
        assert all(cell.execution_count is not None for cell in ran), "it ran to the end"
        last = results / f"{ran[-1].execution_count}.parquet"
        assert_same_frame(
            pd.read_parquet(last),
            await session_frame(http, steps[-1].answer["cache_key"]),
            "the step after the failures",
        )
