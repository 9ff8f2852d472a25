"""A notebook as a jupytext "percent" script (``# %%`` cells), for ``?format=py``.

jupytext writes it, so ``jupytext --to ipynb`` reads back the same cells: magics are
commented (``# %load_ext ...``), a ``%%sql name`` cell becomes
``# %% magic_args="name" language="sql"`` over its commented query. Of the cells' metadata
only the tags are kept (the step facts under ``dataexec`` would crowd every marker).
jupytext is imported on first use (~0.3 s), not when the server starts.
"""

from __future__ import annotations

import copy

import nbformat


def to_percent_script(notebook: nbformat.NotebookNode) -> str:
    """The notebook as a percent script, without outputs."""
    import jupytext

    script = copy.deepcopy(notebook)
    for cell in script.cells:
        tags = cell.metadata.get("tags")
        cell.metadata = nbformat.NotebookNode({"tags": tags} if tags else {})
    text: str = jupytext.writes(script, fmt="py:percent")
    return text
