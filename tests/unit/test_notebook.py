"""The notebook export and import (server/notebook/), from hand-made history records.

No server and no kernel: the records stand for what a session stored, with every kind of
output a kernel sends. nbclient runs one built notebook when it is installed.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import re
import struct
import zlib
from typing import Any

import jupytext
import nbformat
import pytest

from server.errors import ValidationError
from server.notebook.export import RAISES_TAG, SETUP_LINES, NotebookSession, build_notebook
from server.notebook.importer import MAX_IMPORTED_CELLS, cells_from_notebook
from server.notebook.percent import to_percent_script
from server.sessions.history import ExecutionRecord

SESSION = NotebookSession(
    session_id="sales-q3",
    created=dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC),
    dialect="postgresql",
    server_version="0.1.0",
    pool="default",
)
T0 = dt.datetime(2024, 5, 1, 12, 1, 0)  # naive: the store keeps UTC
KEY_CARRIERS = "3f2c9a0e-8b1d-4c55-9a7e-1f0e2d3c4b5a"
KEY_DELAYS = "9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
REQUEST_ID = "req-5d41402abc4b2a76b9719d911017c592"
CARRIERS_SQL = "SELECT carrier, count(*) AS n\nFROM flights\nGROUP BY carrier"
ON_DATA_CODE = "result_df = input_data['prev'].nlargest(3, 'n')"
# The cell that POST /execute-on-data prepares (server/sessions/execution.py, on_data_request).
ON_DATA_CELL = "\n".join(
    [
        "import json",
        "input_data = {",
        f"    'prev': load({KEY_CARRIERS!r}),",
        '    \'extra\': pd.DataFrame(json.loads(\'[{"carrier": "ZZ", "n": 1}]\')),',
        "}",
        ON_DATA_CODE,
        "if 'result_df' not in globals():",
        "    raise NameError('execute-on-data code must set result_df')",
    ]
)
TRACEBACK = [
    "---------------------------------------------------------------------------",
    "ZeroDivisionError                         Traceback (most recent call last)",
    "Cell In[3], line 1\n----> 1 ratio = 1 / 0",
    "ZeroDivisionError: division by zero",
]


def _tiny_png() -> str:
    """A real PNG, base64: drawn by matplotlib when it is here, else a 1x1 pixel by hand."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:

        def chunk(kind: bytes, data: bytes) -> bytes:
            crc = struct.pack(">I", zlib.crc32(kind + data))
            return struct.pack(">I", len(data)) + kind + data + crc

        header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
        png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
        png += chunk(b"IDAT", zlib.compress(b"\x00\x1f\x77\xb4")) + chunk(b"IEND", b"")
        return base64.b64encode(png).decode()
    figure, axes = plt.subplots(figsize=(1, 1))
    axes.plot([1, 2, 3])
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


PNG = _tiny_png()


def _records() -> list[ExecutionRecord]:
    """A session with every kind of step and output."""
    return [
        ExecutionRecord(
            execution_count=1,
            language="sql",
            code=CARRIERS_SQL,
            cell=f"%%sql carriers\n{CARRIERS_SQL}",
            started=T0,
            result_name="carriers",
            status="ok",
            elapsed_ms=41.5,
            row_count=16,
            cache_key=KEY_CARRIERS,
            outputs=[
                {  # as the kernel sent it: no execution_count, our result mimetype inside
                    "output_type": "execute_result",
                    "data": {
                        "text/plain": "  carrier      n\n0      UA  58665",
                        "text/html": ["<table>", "<tr><td>UA</td></tr></table>"],
                        "application/vnd.dataexec.result+json": '{"kind": "frame"}',
                    },
                    "metadata": {},
                }
            ],
        ),
        ExecutionRecord(
            execution_count=2,
            language="python",
            code="print(len(carriers))\nimport sys; print('warn', file=sys.stderr)\nplot()",
            cell="print(len(carriers))\nimport sys; print('warn', file=sys.stderr)\nplot()",
            started=T0 + dt.timedelta(seconds=10),
            status="ok",
            elapsed_ms=120.0,
            row_count=0,
            outputs=[
                {"output_type": "stream", "name": "stdout", "text": "16\n"},
                {"output_type": "stream", "name": "stderr", "text": ["warn", "\n"]},
                {
                    "output_type": "display_data",
                    "data": {"image/png": PNG, "text/plain": "<Figure size 100x100>"},
                    "metadata": {
                        "image/png": {"width": 100},
                        "needs_background": "light",
                        "application/vnd.dataexec.result+json": {"internal": True},
                    },
                    "transient": {"display_id": "abc"},
                },
            ],
        ),
        ExecutionRecord(
            execution_count=3,
            language="python",
            code="ratio = 1 / 0",
            cell="ratio = 1 / 0",
            started=T0 + dt.timedelta(seconds=20),
            status="failed",
            error_type="EXECUTION_ERROR",
            error={
                "message": "ZeroDivisionError: division by zero",
                "ename": "ZeroDivisionError",
                "evalue": "division by zero",
                "traceback": TRACEBACK,
                "request_id": REQUEST_ID,
            },
            elapsed_ms=3.0,
            outputs=[
                {
                    "output_type": "error",
                    "ename": "ZeroDivisionError",
                    "evalue": "division by zero",
                    "traceback": TRACEBACK,
                }
            ],
        ),
        ExecutionRecord(
            execution_count=4,
            language="python",
            code=ON_DATA_CODE,
            cell=ON_DATA_CELL,
            started=T0 + dt.timedelta(seconds=30),
            kind="execute_on_data",
            status="ok",
            elapsed_ms=15.25,
            row_count=3,
            cache_key=KEY_DELAYS,
        ),
        ExecutionRecord(
            execution_count=5,
            language="python",
            code="while True:\n    pass",
            cell="while True:\n    pass",
            started=T0 + dt.timedelta(seconds=40),
            status="failed",
            error_type="TIMEOUT",
            error={"message": "execution exceeded the 100 s time limit"},
            elapsed_ms=100000.0,
            outputs=[{"output_type": "stream", "name": "stdout", "text": "working...\n"}],
        ),
        ExecutionRecord(
            execution_count=6,
            language="python",
            code="big = carriers.sample(10**6, replace=True)",
            cell="big = carriers.sample(10**6, replace=True)",
            started=T0 + dt.timedelta(seconds=200),
            status="cancelled",
        ),
        ExecutionRecord(
            execution_count=7,
            language="python",
            code="carriers.head(2)",
            cell="carriers.head(2)",
            started=T0 + dt.timedelta(seconds=300),
            status="ok",
            elapsed_ms=5.0,
            row_count=2,
            kernel_replaced="timeout",
            restored_frames=["carriers", "result_df"],
            outputs=[  # the new kernel counts from 1 again
                {
                    "output_type": "execute_result",
                    "execution_count": 1,
                    "data": {"text/plain": "  carrier      n"},
                    "metadata": {},
                }
            ],
        ),
        ExecutionRecord(
            execution_count=8,
            language="sql",
            code="DELETE FROM flights",
            cell="%%sql df_8\nDELETE FROM flights",
            started=T0 + dt.timedelta(seconds=310),
            result_name="df_8",
            status="failed",
            error_type="SQL_NOT_ALLOWED",
            error={"message": "only SELECT queries are allowed", "ename": "SqlNotAllowed"},
            outputs=[
                {
                    "output_type": "error",
                    "ename": "SqlNotAllowed",
                    "evalue": "only SELECT queries are allowed",
                    "traceback": ["SqlNotAllowed: only SELECT queries are allowed"],
                }
            ],
        ),
    ]


def _step_cells(nb: nbformat.NotebookNode) -> list[Any]:
    return [c for c in nb.cells if "execution_count" in c.metadata.get("dataexec", {})]


def _step(nb: nbformat.NotebookNode, n: int) -> Any:
    return next(c for c in _step_cells(nb) if c.metadata["dataexec"]["execution_count"] == n)


def _cell_after(nb: nbformat.NotebookNode, cell: Any, offset: int) -> Any:
    return nb.cells[nb.cells.index(cell) + offset]


# --- build_notebook ----------------------------------------------------------------------


@pytest.mark.parametrize("outputs", [True, False])
def test_built_notebook_is_valid_nbformat_4_5(outputs: bool) -> None:
    nb = build_notebook(SESSION, _records(), outputs=outputs)
    assert (nb.nbformat, nb.nbformat_minor) == (4, 5)
    nbformat.validate(nb)
    nbformat.validate(nbformat.reads(nbformat.writes(nb), as_version=4))


def test_first_cell_says_what_the_notebook_is_and_how_to_rerun_it() -> None:
    intro = build_notebook(SESSION, _records()).cells[0]
    assert intro.cell_type == "markdown"
    text = intro.source
    for fact in ("`sales-q3`", "2024-05-01T12:00:00Z", "postgresql", "`default`", "0.1.0"):
        assert fact in text
    assert "**Steps:** 8 (3 failed, 1 cancelled); the kernel was replaced once" in text
    for helper in ("`sql(query, params)`", "`load(key)`", "`save(df, name)`", "`conn`"):
        assert helper in text
    assert "`%%sql name`" in text
    for rerun in ("pip install", "dataexec-kernel", "DATAEXEC_URL", "DATAEXEC_TOKEN"):
        assert rerun in text
    assert "DATAEXEC_DATABASE_URL" in text


def test_second_cell_sets_up_what_warm_kernels_did() -> None:
    setup = build_notebook(SESSION, _records()).cells[1]
    assert setup.cell_type == "code"
    assert setup.source.splitlines() == list(SETUP_LINES)
    assert setup.source.splitlines() == [
        "import numpy as np",
        "import pandas as pd",
        "%load_ext dataexec_kernel",
    ]
    assert setup.metadata == {"dataexec": {"role": "setup"}}
    assert setup.execution_count is None and setup.outputs == []


def test_each_step_is_one_code_cell_in_order_with_its_count_and_kernel_source() -> None:
    records = _records()
    steps = _step_cells(build_notebook(SESSION, records))
    assert [c.execution_count for c in steps] == [r.execution_count for r in records]
    assert [c.source for c in steps] == [r.cell for r in records]
    assert steps[0].source.startswith("%%sql carriers\nSELECT carrier")
    assert steps[3].source.startswith("import json\ninput_data = {\n    'prev': load(")


def test_outputs_are_kept_in_nbformat_shape_without_internal_mimetypes() -> None:
    nb = build_notebook(SESSION, _records())
    (sql_result,) = _step(nb, 1).outputs
    assert sql_result.output_type == "execute_result"
    assert sql_result.execution_count == 1  # the kernel's output lacked it
    assert set(sql_result.data) == {"text/plain", "text/html"}
    assert sql_result.data["text/html"] == "<table><tr><td>UA</td></tr></table>"

    stdout, stderr, figure = _step(nb, 2).outputs
    assert (stdout.name, stdout.text) == ("stdout", "16\n")
    assert (stderr.name, stderr.text) == ("stderr", "warn\n")
    assert figure.output_type == "display_data"
    assert base64.b64decode(figure.data["image/png"]).startswith(b"\x89PNG\r\n\x1a\n")
    assert figure.metadata == {"image/png": {"width": 100}, "needs_background": "light"}
    assert "transient" not in figure

    (error,) = _step(nb, 3).outputs
    assert (error.ename, error.evalue, error.traceback) == (
        "ZeroDivisionError",
        "division by zero",
        TRACEBACK,
    )
    # A replacement kernel counts from 1 again; the notebook shows the session's count.
    assert _step(nb, 7).outputs[0].execution_count == 7


def test_step_metadata_keeps_the_facts_of_each_step() -> None:
    nb = build_notebook(SESSION, _records())
    assert _step(nb, 1).metadata["dataexec"] == {
        "execution_count": 1,
        "status": "ok",
        "kind": "execute",
        "language": "sql",
        "started": "2024-05-01T12:01:00.000Z",
        "elapsed_ms": 41.5,
        "row_count": 16,
        "result_name": "carriers",
        "cache_key": KEY_CARRIERS,
    }
    on_data = _step(nb, 4).metadata["dataexec"]
    assert (on_data["kind"], on_data["cache_key"], on_data["row_count"]) == (
        "execute_on_data",
        KEY_DELAYS,
        3,
    )
    failed = _step(nb, 3).metadata["dataexec"]
    assert failed["status"] == "failed"
    assert failed["error_type"] == "EXECUTION_ERROR"
    assert failed["error_message"] == "ZeroDivisionError: division by zero"
    assert (failed["ename"], failed["evalue"]) == ("ZeroDivisionError", "division by zero")
    assert "traceback" not in failed and "request_id" not in failed
    replaced = _step(nb, 7).metadata["dataexec"]
    assert replaced["kernel_replaced"] == "timeout"
    assert replaced["restored_frames"] == ["carriers", "result_df"]


def test_user_code_failures_are_tagged_and_their_error_output_speaks_for_them() -> None:
    nb = build_notebook(SESSION, _records())
    for n in (3, 8):  # EXECUTION_ERROR, SQL_NOT_ALLOWED
        step = _step(nb, n)
        assert step.metadata["tags"] == ["dataexec-failed", RAISES_TAG]
        assert f"step-{n}-note" not in [c.id for c in nb.cells]


def test_a_timed_out_step_keeps_its_code_and_gets_a_note_saying_what_happened() -> None:
    nb = build_notebook(SESSION, _records())
    step = _step(nb, 5)
    assert step.source == "while True:\n    pass"
    assert step.metadata["tags"] == ["dataexec-failed", RAISES_TAG]
    note = _cell_after(nb, step, 1)
    assert note.cell_type == "markdown" and note.id == "step-5-note"
    assert "**Step 5 failed** (`TIMEOUT`)" in note.source
    assert "execution exceeded the 100 s time limit" in note.source
    assert "time limit of its pool" in note.source


def test_a_cancelled_step_is_kept_and_marked() -> None:
    nb = build_notebook(SESSION, _records())
    step = _step(nb, 6)
    assert step.metadata["tags"] == ["dataexec-cancelled"]
    assert step.metadata["dataexec"]["status"] == "cancelled"
    assert "error_type" not in step.metadata["dataexec"]
    note = _cell_after(nb, step, 1)
    assert note.cell_type == "markdown" and "**Step 6 was cancelled**" in note.source


def test_a_kernel_replacement_shows_before_its_step_with_reason_and_restored_frames() -> None:
    nb = build_notebook(SESSION, _records())
    note = _cell_after(nb, _step(nb, 7), -1)
    assert note.cell_type == "markdown" and note.id == "kernel-replaced-7"
    assert "**New kernel before step 7.**" in note.source
    assert "ran past the time limit" in note.source
    assert "`carriers`, `result_df`" in note.source
    replaced_notes = [c for c in nb.cells if c.id.startswith("kernel-replaced-")]
    assert len(replaced_notes) == 1


@pytest.mark.parametrize(
    ("reason", "frames", "expected"),
    [
        ("culled", [], "idle for longer than its pool allows"),
        ("out_of_memory", ["df_1"], "ran out of memory"),
        ("restart", [], "restarted on request"),
        ("server_restart", ["a"], "DataExec server restarted"),
        ("kernel_died", [], "crashed"),
        ("something_new", [], "was replaced (`something_new`)"),
    ],
)
def test_replacement_notes_say_why_for_every_reason(
    reason: str, frames: list[str], expected: str
) -> None:
    record = ExecutionRecord(
        execution_count=2, language="python", code="x", cell="x", started=T0, status="ok"
    )
    record.kernel_replaced, record.restored_frames = reason, frames
    note = build_notebook(SESSION, [record]).cells[2]
    assert expected in note.source
    assert ("No frames were restored" in note.source) == (not frames)


def test_notebook_metadata_names_the_kernel_and_the_session() -> None:
    metadata = build_notebook(SESSION, _records()).metadata
    assert metadata.kernelspec == {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    assert metadata.language_info.name == "python"
    assert metadata.dataexec == {
        "session_id": "sales-q3",
        "created": "2024-05-01T12:00:00Z",
        "dialect": "postgresql",
        "pool": "default",
        "server_version": "0.1.0",
        "steps": 8,
        "outputs": True,
    }


def test_a_clean_notebook_has_no_outputs_and_no_counts_but_keeps_the_story() -> None:
    nb = build_notebook(SESSION, _records(), outputs=False)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code_cells)
    assert "This copy has no outputs" in nb.cells[0].source
    # Without its error output, a failed step's note says what happened.
    note = _cell_after(nb, _step(nb, 3), 1)
    assert note.cell_type == "markdown"
    assert "`EXECUTION_ERROR`" in note.source and "division by zero" in note.source
    assert _step(nb, 3).metadata["tags"] == ["dataexec-failed", RAISES_TAG]


def test_a_session_without_steps_still_gives_a_valid_notebook() -> None:
    nb = build_notebook(SESSION, [])
    nbformat.validate(nb)
    assert [c.id for c in nb.cells] == ["dataexec-intro", "dataexec-setup"]
    assert "**Steps:** 0 (0 failed, 0 cancelled)" in nb.cells[0].source
    with pytest.raises(ValidationError, match="no code cells"):
        cells_from_notebook(json.loads(nbformat.writes(nb)))


def test_the_same_history_always_gives_the_same_notebook() -> None:
    first = nbformat.writes(build_notebook(SESSION, _records()))
    second = nbformat.writes(build_notebook(SESSION, _records()))
    assert first == second
    ids = [c.id for c in build_notebook(SESSION, _records()).cells]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", i) for i in ids)


def test_cell_ids_stay_unique_when_step_numbers_repeat() -> None:
    record = ExecutionRecord(
        execution_count=1, language="python", code="x", cell="x", started=T0, status="ok"
    )
    nb = build_notebook(SESSION, [record, record])
    ids = [c.id for c in nb.cells]
    assert ids == ["dataexec-intro", "dataexec-setup", "step-1", "step-1-2"]
    nbformat.validate(nb)


def test_outputs_that_nbformat_would_reject_are_repaired_or_left_out() -> None:
    record = ExecutionRecord(
        execution_count=4,
        language="python",
        code="x",
        cell="x",
        started=T0,
        status="ok",
        outputs=[
            {"output_type": "display_data", "data": {"application/vnd.dataexec.result+json": "{}"}},
            {"output_type": "update_display_data", "data": {"text/plain": "x"}, "metadata": {}},
            {"output_type": "stream", "name": "stdin", "text": "?"},
            {"output_type": "error", "ename": "E", "evalue": 3, "traceback": "not a list"},
            {"output_type": "display_data", "data": {"application/json": {"a": [1]}}},
            {"output_type": "execute_result", "data": {"text/plain": 5}},
        ],
    )
    record.outputs.append("not an output")  # type: ignore[arg-type]
    nb = build_notebook(SESSION, [record])
    nbformat.validate(nb)
    outputs = _step(nb, 4).outputs
    assert [o.output_type for o in outputs] == ["error", "display_data"]
    assert outputs[0].evalue == "3" and outputs[0].traceback == []
    assert outputs[1].data == {"application/json": {"a": [1]}}


def test_the_builder_adds_no_secret_host_path_or_internal_id() -> None:
    records = _records()
    given_ids = {KEY_CARRIERS, KEY_DELAYS}
    for outputs in (True, False):
        text = nbformat.writes(build_notebook(SESSION, records, outputs=outputs))
        for secret in ("/run/", "/opt/dataexec", "Bearer", "password", "://", REQUEST_ID):
            assert secret not in text
        assert "req-" not in text
        uuid_like = r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}"
        assert set(re.findall(uuid_like, text)) <= given_ids
        intro = json.loads(text)["cells"][0]["source"]
        assert not re.search(uuid_like, "".join(intro))


# --- to_percent_script -------------------------------------------------------------------


def test_percent_script_has_a_jupytext_header_and_one_marker_per_cell() -> None:
    nb = build_notebook(SESSION, _records())
    script = to_percent_script(nb)
    assert script.startswith(
        "# ---\n# jupyter:\n#   jupytext:\n#     text_representation:\n"
        "#       extension: .py\n#       format_name: percent\n"
        "#       format_version: '1.3'\n"
        f"#       jupytext_version: {jupytext.__version__}\n"
        "#   kernelspec:\n#     display_name: Python 3\n"
        "#     language: python\n#     name: python3\n# ---\n\n# %% [markdown]\n"
        "# # DataExec session `sales-q3`\n#\n"
    )
    markers = re.findall(r"^# %%(?: .*)?$", script, flags=re.M)
    assert len(markers) == len(nb.cells)
    assert script.endswith("\n") and not script.endswith("\n\n")


def test_percent_script_comments_magics_and_writes_sql_cells_as_jupytext_does() -> None:
    script = to_percent_script(build_notebook(SESSION, _records()))
    assert "# %%\nimport numpy as np\nimport pandas as pd\n# %load_ext dataexec_kernel\n" in (
        script
    )
    assert (
        '# %% magic_args="carriers" language="sql"\n'
        "# SELECT carrier, count(*) AS n\n# FROM flights\n# GROUP BY carrier\n"
    ) in script
    assert (
        '# %% tags=["dataexec-failed", "raises-exception"] magic_args="df_8" language="sql"\n'
        "# DELETE FROM flights\n"
    ) in script
    assert '# %% tags=["dataexec-failed", "raises-exception"]\nratio = 1 / 0\n' in script


def test_percent_script_has_no_outputs() -> None:
    script = to_percent_script(build_notebook(SESSION, _records()))
    for output in (PNG[:40], "Traceback", "<table>", "working..."):
        assert output not in script


def test_percent_script_round_trips_through_jupytext() -> None:
    nb = build_notebook(SESSION, _records())
    back = jupytext.reads(to_percent_script(nb), fmt="py:percent")
    assert [(c.cell_type, c.source) for c in back.cells] == [
        (c.cell_type, c.source) for c in nb.cells
    ]
    assert [c.metadata.get("tags") for c in back.cells] == [
        c.metadata.get("tags") for c in nb.cells
    ]


# --- cells_from_notebook ----------------------------------------------------------------


def _replayed(records: list[ExecutionRecord]) -> list[tuple[str, str, str | None]]:
    """What a replay of these records runs: SQL as its query, Python as the kernel's cell."""
    return [
        (r.language, r.code, r.result_name) if r.language == "sql" else ("python", r.cell, None)
        for r in records
    ]


@pytest.mark.parametrize("outputs", [True, False])
def test_import_of_an_exported_notebook_gives_back_its_steps(outputs: bool) -> None:
    records = _records()
    nb = build_notebook(SESSION, records, outputs=outputs)
    cells = cells_from_notebook(json.loads(nbformat.writes(nb)))
    assert [(c.language, c.code, c.result_name) for c in cells] == _replayed(records)
    assert [c.allow_error for c in cells] == [r.status == "failed" for r in records]
    assert cells_from_notebook(nb) == cells  # a NotebookNode is a dict too
    assert [c.cell_index for c in cells] == [
        nb.cells.index(_step(nb, r.execution_count)) for r in records
    ]


def test_import_accepts_a_list_of_cells_code_objects_and_strings() -> None:
    cells = cells_from_notebook(
        [
            "x = 1",
            {"code": "SELECT 1 AS one", "language": "sql", "result_name": "one"},
            {"code": "SELECT 2", "language": "sql"},
            {"code": "print(x)"},
            {"code": "%%sql two\nSELECT 2"},
            {"cell_type": "code", "source": ["y = 2\n", "print(y)"], "metadata": {}},
            "%%sql\nSELECT 3",
        ]
    )
    assert [(c.language, c.code, c.result_name, c.cell_index) for c in cells] == [
        ("python", "x = 1", None, 0),
        ("sql", "SELECT 1 AS one", "one", 1),
        ("sql", "SELECT 2", None, 2),
        ("python", "print(x)", None, 3),
        ("sql", "SELECT 2", "two", 4),
        ("python", "y = 2\nprint(y)", None, 5),
        ("sql", "SELECT 3", None, 6),
    ]


def test_import_skips_markdown_raw_empty_and_setup_cells() -> None:
    setup_by_marker = nbformat.v4.new_code_cell(
        "%load_ext dataexec_kernel", metadata={"dataexec": {"role": "setup"}}
    )
    setup_by_source = nbformat.v4.new_code_cell(
        "import numpy as np\nimport pandas as pd\n\n%load_ext dataexec_kernel\n"
    )
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# title"),
            nbformat.v4.new_raw_cell("raw"),
            setup_by_source,
            setup_by_marker,
            nbformat.v4.new_code_cell("   \n"),
            nbformat.v4.new_code_cell("x = 1"),
        ]
    )
    document = json.loads(json.dumps(notebook))
    document["cells"].append("import numpy as np\nimport pandas as pd\n%load_ext dataexec_kernel")
    cells = cells_from_notebook(document)
    assert [(c.language, c.code, c.cell_index) for c in cells] == [("python", "x = 1", 5)]


def test_import_keeps_a_magic_that_only_looks_like_sql() -> None:
    (cell,) = cells_from_notebook(["%%sqlite x\nSELECT 1"])
    assert (cell.language, cell.code) == ("python", "%%sqlite x\nSELECT 1")


def test_import_accepts_exactly_the_cell_cap() -> None:
    cells = cells_from_notebook([f"x = {i}" for i in range(MAX_IMPORTED_CELLS)])
    assert len(cells) == MAX_IMPORTED_CELLS
    # Cells that run nothing do not count.
    padded = [""] * 10 + [f"x = {i}" for i in range(MAX_IMPORTED_CELLS)]
    assert len(cells_from_notebook(padded)) == MAX_IMPORTED_CELLS


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("x = 1", "expected a Jupyter notebook"),
        (42, "expected a Jupyter notebook"),
        (None, "expected a Jupyter notebook"),
        ({"nbformat": 3, "worksheets": []}, "only nbformat 4"),
        ({"nbformat": "4", "cells": ["x"]}, "only nbformat 4"),
        ({"nbformat": 5, "cells": ["x"]}, "only nbformat 4"),
        ({"nbformat": 4}, "'cells' list"),
        ({"nbformat": 4, "cells": {"0": "x"}}, "'cells' list"),
        ({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}, "no code cells"),
        ([], "no code cells"),
        ([{"cell_type": "markdown", "source": "hi", "metadata": {}}], "no code cells"),
        ([1], "cells[0] must be a notebook cell"),
        (["x", ["y"]], "cells[1] must be a notebook cell"),
        ([{"foo": 1}], "cells[0] has neither"),
        ([{"cell_type": "heading", "source": "x"}], "unknown cell_type"),
        ([{"cell_type": "code", "source": 5}], "'source' must be"),
        ([{"cell_type": "code", "source": ["a", 1]}], "'source' must be"),
        ([{"cell_type": "code", "source": "x", "metadata": []}], "'metadata' must be"),
        ([{"code": 1}], "'code' must be a string"),
        ([{"code": "x", "language": "r"}], "'language' must be"),
        ([{"code": "x", "result_name": "y"}], "SQL cells only"),
        ([{"code": "SELECT 1", "language": "sql", "result_name": "a b"}], "not a Python"),
        ([{"code": " ", "language": "sql"}], "needs a query"),
        (["%%sql bad-name\nSELECT 1"], "'bad-name' is not a Python identifier"),
        (["%%sql x\n  \n"], "has no query"),
        ([f"x = {i}" for i in range(MAX_IMPORTED_CELLS + 1)], f"more than {MAX_IMPORTED_CELLS}"),
    ],
)
def test_import_rejects_what_is_not_a_notebook_to_replay(document: Any, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        cells_from_notebook(document)
    assert message in caught.value.message
    assert caught.value.detail()["type"] == "VALIDATION_ERROR"
