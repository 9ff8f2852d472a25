"""Importing a notebook: the code cells a client posts, read into steps to replay.

``cells_from_notebook`` accepts an nbformat v4 notebook as decoded JSON, or a list of cells
(nbformat cells, ``{"code", "language"?, "result_name"?}`` objects or plain strings), and
gives the cells to run, in order: ``%%sql [name]`` cells become SQL steps, the setup cell
of an export is skipped, and a cell tagged ``raises-exception`` may fail without stopping
the replay. Anything else is a ``ValidationError`` naming the cell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from server.errors import ValidationError
from server.notebook.export import RAISES_TAG, SETUP_LINES, SETUP_ROLE

MAX_IMPORTED_CELLS = 500


@dataclass(frozen=True)
class ImportedCell:
    """One step to replay from an imported notebook.

    ``language`` is ``python`` or ``sql`` (then ``code`` is the query alone, and
    ``result_name`` the frame's name, None for a ``%%sql`` without one). ``allow_error``
    says the cell is tagged ``raises-exception``: its failure need not stop the replay.
    ``cell_index`` is the cell's position in the document, for messages.
    """

    language: str
    code: str
    result_name: str | None = None
    allow_error: bool = False
    cell_index: int = 0


_SQL_MAGIC = re.compile(r"%%sql(?:[ \t]+(?P<args>.*?))?[ \t]*")


def cells_from_notebook(document: Any) -> list[ImportedCell]:
    """The code cells of a posted notebook (or list of cells) to replay, in order.

    Accepts an nbformat v4 notebook as decoded JSON, or a list whose items are nbformat
    cells, ``{"code", "language"?, "result_name"?}`` objects or plain strings of code.
    Markdown and raw cells, empty cells and the setup cell are skipped. Raises
    ``ValidationError`` for anything else, or past ``MAX_IMPORTED_CELLS`` cells to run.
    """
    imported: list[ImportedCell] = []
    for index, item in enumerate(_document_cells(document)):
        cell = _imported_cell(item, index)
        if cell is None:
            continue
        if len(imported) == MAX_IMPORTED_CELLS:
            raise ValidationError(
                f"the notebook has more than {MAX_IMPORTED_CELLS} code cells to run; "
                "split it into smaller notebooks"
            )
        imported.append(cell)
    if not imported:
        raise ValidationError("the notebook has no code cells to run")
    return imported


def _document_cells(document: Any) -> list[Any]:
    if isinstance(document, list):
        return document
    if not isinstance(document, dict):
        raise ValidationError(
            "expected a Jupyter notebook (an object with a 'cells' list) or a list of cells"
        )
    if "nbformat" in document:
        version = document["nbformat"]
        if not isinstance(version, int) or isinstance(version, bool) or version != 4:
            raise ValidationError(
                f"only nbformat 4 notebooks can be imported, this one is nbformat {version!r}; "
                "convert it with `jupyter nbconvert --to notebook`"
            )
    cells = document.get("cells")
    if not isinstance(cells, list):
        raise ValidationError("a notebook must have a 'cells' list")
    return cells


def _imported_cell(item: Any, index: int) -> ImportedCell | None:
    """One document cell as a step to replay, or None when there is nothing to run."""
    where = f"cells[{index}]"
    if isinstance(item, str):
        return _from_source(item, index, allow_error=False)
    if not isinstance(item, dict):
        raise ValidationError(
            f"{where} must be a notebook cell, an object with 'code', or a string"
        )
    if "cell_type" in item:
        return _from_notebook_cell(item, index)
    if "code" in item:
        return _from_code_object(item, index)
    raise ValidationError(f"{where} has neither 'cell_type' nor 'code'")


def _from_notebook_cell(cell: dict[str, Any], index: int) -> ImportedCell | None:
    where = f"cells[{index}]"
    kind = cell["cell_type"]
    if kind in ("markdown", "raw"):
        return None
    if kind != "code":
        raise ValidationError(f"{where} has an unknown cell_type {kind!r}")
    source = cell.get("source", "")
    if isinstance(source, list) and all(isinstance(line, str) for line in source):
        source = "".join(source)
    if not isinstance(source, str):
        raise ValidationError(f"{where}: 'source' must be a string or a list of strings")
    metadata = cell.get("metadata")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise ValidationError(f"{where}: 'metadata' must be an object")
    marker = metadata.get("dataexec")
    if isinstance(marker, dict) and marker.get("role") == SETUP_ROLE:
        return None
    tags = metadata.get("tags")
    allow_error = isinstance(tags, list) and RAISES_TAG in tags
    return _from_source(source, index, allow_error=allow_error)


def _from_code_object(item: dict[str, Any], index: int) -> ImportedCell | None:
    where = f"cells[{index}]"
    code, language = item["code"], item.get("language", "python")
    result_name = item.get("result_name")
    if not isinstance(code, str):
        raise ValidationError(f"{where}: 'code' must be a string")
    if language not in ("python", "sql"):
        raise ValidationError(f"{where}: 'language' must be 'python' or 'sql'")
    if language == "python":
        if result_name is not None:
            raise ValidationError(f"{where}: 'result_name' applies to SQL cells only")
        return _from_source(code, index, allow_error=False)
    if result_name is not None:
        _check_result_name(result_name, where)
    if not code.strip():
        raise ValidationError(f"{where}: an SQL cell needs a query")
    return ImportedCell("sql", code, result_name, cell_index=index)


def _from_source(source: str, index: int, *, allow_error: bool) -> ImportedCell | None:
    """A code cell's source as a step: ``%%sql [name]`` cells become SQL, others Python."""
    if not source.strip() or _is_setup(source):
        return None
    first, _, query = source.partition("\n")
    magic = _SQL_MAGIC.fullmatch(first.rstrip())
    if magic is None:
        return ImportedCell("python", source, None, allow_error, index)
    where = f"cells[{index}]"
    result_name = magic.group("args") or None
    if result_name is not None:
        _check_result_name(result_name, where)
    if not query.strip():
        raise ValidationError(f"{where}: the %%sql cell has no query")
    return ImportedCell("sql", query, result_name, allow_error, index)


def _check_result_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValidationError(f"{where}: the result name {name!r} is not a Python identifier")


def _is_setup(source: str) -> bool:
    lines = tuple(line.strip() for line in source.splitlines() if line.strip())
    return lines == SETUP_LINES
