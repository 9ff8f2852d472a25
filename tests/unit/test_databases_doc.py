"""docs/databases.md against the code: the guarantees table is the dialects' own."""

from __future__ import annotations

import re
from pathlib import Path

from server.sql.dialects import DIALECTS

DOC = Path(__file__).resolve().parents[2] / "docs" / "databases.md"


def test_the_guarantees_table_is_what_each_dialect_declares() -> None:
    text = DOC.read_text()
    table = text[text.index("<!-- guarantees -->") :].split("\n\n")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    documented = {cells[0]: cells[1:] for cells in (re.split(r" \| ", r[2:-2]) for r in rows)}
    declared = {
        d.title: [
            d.guarantees.read_only,
            d.guarantees.timeout,
            d.guarantees.cancel,
            d.guarantees.arrow_path,
            d.guarantees.profile_source,
        ]
        for d in DIALECTS
    }
    assert documented == declared
